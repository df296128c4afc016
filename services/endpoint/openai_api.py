"""OpenAI-compatible HTTP API over any lema engine: /v1/models, /v1/completions, /v1/chat/completions.

The BentoML endpoint mounts this app; it also runs standalone under uvicorn
(`python -m services.endpoint.openai_api --model lema-tiny --port 8000`), which is how tests get a real
OpenAI-compatible server on 127.0.0.1 for the corrector and the reasoner's `openai` engine.

Requests name the base model or a loaded adapter in `model`; bad requests get HTTP 400 with an OpenAI-style
error body, never a crash. Every response says which model served it: the `model` field holds the served model
(the adapter's name, or the base model's), and so does the `x-lema-adapter` header.

The BentoML endpoint passes `pin` (resolve the requested model and lease that adapter for the whole request, so
a promotion or an unload cannot change the adapter mid-request), `list_models` and `on_request` (metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from lema.core.config import EndpointConfig
from lema.core.engines import Completion, Engine, EngineError, SamplingParams, StreamDelta
from services.endpoint.errors import documented, engine_error_response
from services.endpoint.errors import error_response as _error
from services.endpoint.swap import UnknownModel

# The one bound on max_tokens is the configured `endpoint.max_tokens_limit` (checked in `admit`); this is its default.
MAX_TOKENS_LIMIT = EndpointConfig.model_fields["max_tokens_limit"].default
MAX_N = 16
ADAPTER_HEADER = "x-lema-adapter"


def _unicode(value: str) -> str:
    """JSON can carry a lone surrogate ("\\ud800"), which no tokenizer can encode: refuse it here, by field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate, which is not valid Unicode") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Text


class _Common(BaseModel):
    model: Text
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False  # vLLM's extension (load generators such as guidellm send it)

    def sampling(self, default_max_tokens: int = 256) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens or default_max_tokens, stop=stop, seed=self.seed,
                              ignore_eos=self.ignore_eos)


class CompletionRequest(_Common):
    prompt: Text | list[Text]


class ChatRequest(_Common):
    messages: list[ChatMessageIn] = Field(min_length=1)


def served_name(engine: Engine) -> str:
    """The base model's public name: the folder name for local models ("lema-tiny"), else the id."""
    return Path(engine.model_id).name if Path(engine.model_id).exists() else engine.model_id


def build_app(
    get_engine: Callable[[], Engine],
    resolve_adapter: Callable[[str], str | None] | None = None,
    on_served: Callable[[str, int], None] | None = None,
    *,
    pin: Callable[[str], AbstractContextManager[str | None]] | None = None,
    list_models: Callable[[], list[dict]] | None = None,
    on_request: Callable[[str, str, int, float, int, int], None] | None = None,
    default_max_tokens: int = 256,
    max_tokens_limit: int = MAX_TOKENS_LIMIT,
) -> FastAPI:
    """`resolve_adapter(model_name)` maps a requested model to an adapter name (None = base model) or raises
    UnknownModel for an unknown model; the default accepts the base model's name and any loaded adapter name.

    `pin(model_name)` is a context manager doing the same and holding the adapter for the request's duration
    (default: `resolve_adapter` with nothing held). `list_models()` returns /models' data entries.
    `on_request(route, served_model, status, seconds, prompt_tokens, completion_tokens)` sees every request.
    """
    app = FastAPI(title="lema OpenAI-compatible API", responses=documented(400, 404, 499, 503))

    def default_resolve(model: str) -> str | None:
        engine = get_engine()
        if model in (engine.model_id, served_name(engine), "default"):
            return None
        if model in {a.name for a in engine.adapters()}:
            return model
        raise UnknownModel(model)

    resolve = resolve_adapter or default_resolve

    def default_pin(model: str) -> AbstractContextManager[str | None]:
        return contextlib.nullcontext(resolve(model))

    pin_adapter = pin or default_pin

    def served_as(adapter: str | None) -> str:
        return adapter or served_name(get_engine())

    async def parse(request: Request, model_cls):
        try:
            return model_cls.model_validate(await request.json()), None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return None, _error(400, f"{where}: {first['msg']}")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
            return None, _error(400, "the request body is not valid JSON (UTF-8, nested at most a few hundred deep)")

    @app.get("/models")
    async def models() -> dict:
        if list_models is not None:
            return {"object": "list", "data": list_models()}
        engine = get_engine()
        now = int(time.time())
        base = served_name(engine)
        data = [{"id": base, "object": "model", "created": now, "owned_by": "lema"}]
        data += [{"id": a.name, "object": "model", "created": now, "owned_by": "lema", "parent": base}
                 for a in engine.adapters()]
        return {"object": "list", "data": data}

    def observe(route: str, model: str, status: int, started: float, results: list | None = None) -> None:
        if on_request is None:
            return
        prompt_tokens = sum(r[0].prompt_tokens for r in results if r) if results else 0
        completion_tokens = sum(c.completion_tokens for r in results for c in r) if results else 0
        on_request(route, model, status, time.perf_counter() - started, prompt_tokens, completion_tokens)

    def unknown_model(body: _Common) -> JSONResponse:
        return _error(404, f"model {body.model[:200]!r} is not served here; see /v1/models", "not_found_error")

    def admit(body: _Common) -> tuple[contextlib.ExitStack, str | None] | JSONResponse:
        """The request's bounds, then its model resolved and its adapter pinned (held until the stack closes);
        or the error response. Only resolving the model may say "unknown model": an error inside an engine is
        a bug, not a 404."""
        if body.max_tokens is not None and body.max_tokens > max_tokens_limit:
            return _error(400, f"max_tokens: must be at most {max_tokens_limit}")
        pinned = contextlib.ExitStack()
        try:
            return pinned, pinned.enter_context(pin_adapter(body.model))
        except UnknownModel:
            return unknown_model(body)

    async def run(request: Request, body: _Common, prompts: list) -> tuple[str, list, JSONResponse | None]:
        """Generate on the adapter pinned at the start of the request; returns (served model, results, error).
        A client that disconnects cancels its generation (the engine stops its rows at the next step)."""
        admitted = admit(body)
        if isinstance(admitted, JSONResponse):
            return "-", [], admitted
        pinned, adapter = admitted
        with pinned:
            served = served_as(adapter)
            try:
                params = body.sampling(default_max_tokens)
                results = await _unless_disconnected(request, get_engine().generate(prompts, params, adapter))
            except (EngineError, ValueError) as exc:
                return served, [], engine_error_response(exc)
            except ClientGone:
                return served, [], _error(499, "the client closed the connection", "client_closed")
        if on_served is not None:
            on_served(adapter or "base", sum(c.completion_tokens for r in results for c in r))
        return served, results, None

    async def stream_reply(route: str, body: _Common, prompts: list, started: float):
        """True streaming: server-sent events as the engine produces text (engines with `generate_stream`), the
        adapter pinned until the last event; errors before the first event are plain 4xx responses."""
        admitted = admit(body)
        if isinstance(admitted, JSONResponse):
            return failed(route, "-", admitted, started)
        pinned, adapter = admitted
        served = served_as(adapter)
        try:
            params = body.sampling(default_max_tokens)
            deltas = get_engine().generate_stream(prompts, params, adapter)
            first = await deltas.__anext__()
        except (EngineError, ValueError) as exc:
            pinned.close()
            return failed(route, served, engine_error_response(exc), started)
        except BaseException:
            pinned.close()
            raise
        chunks = _CompletionChunks(served) if route == "completions" else _ChatChunks(served)

        async def events() -> AsyncIterator[str]:
            finished: list = []
            try:
                delta = first
                while True:
                    if delta.completion is not None:
                        finished.append(delta.completion)
                    yield chunks.delta(delta)
                    try:
                        delta = await deltas.__anext__()
                    except StopAsyncIteration:
                        break
                    except EngineError as exc:  # shut down mid-stream: an error event, as vLLM sends, then the end
                        yield f"data: {engine_error_response(exc).body.decode()}\n\n"
                        return
                if _include_usage(body):
                    yield chunks.usage(finished, params.n)
                yield "data: [DONE]\n\n"
            finally:
                await deltas.aclose()  # a client gone: the engine stops the rows
                pinned.close()
                # the last deltas come in choice order: n completions per prompt
                per_prompt = [finished[i : i + params.n] for i in range(0, len(finished), params.n)]
                observe(route, served, 200, started, per_prompt)
                if on_served is not None:
                    on_served(adapter or "base", sum(c.completion_tokens for c in finished))

        return StreamingResponse(events(), media_type="text/event-stream", headers={ADAPTER_HEADER: served})

    def reply(response: dict, served: str, stream: AsyncIterator[str] | None):
        headers = {ADAPTER_HEADER: served}
        if stream is not None:
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        return JSONResponse(response, headers=headers)

    def failed(route: str, served: str, error: JSONResponse, started: float) -> JSONResponse:
        observe(route, served, error.status_code, started)
        return error

    @app.post("/completions")
    async def completions(request: Request):
        started = time.perf_counter()
        body, error = await parse(request, CompletionRequest)
        if error:
            return failed("completions", "-", error, started)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or any(not p for p in prompts):
            error = _error(400, "prompt: must be a non-empty string or list of non-empty strings")
            return failed("completions", "-", error, started)
        if body.stream and hasattr(get_engine(), "generate_stream"):
            return await stream_reply("completions", body, prompts, started)
        served, results, error = await run(request, body, prompts)
        if error:
            return failed("completions", served, error, started)
        choices = [
            {"index": i * body.n + j, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            for i, samples in enumerate(results) for j, c in enumerate(samples)
        ]
        response = _envelope("text_completion", served, choices, results)
        observe("completions", served, 200, started, results)
        stream = _stream_completion(response, _include_usage(body)) if body.stream else None
        return reply(response, served, stream)

    @app.post("/chat/completions")
    async def chat(request: Request):
        started = time.perf_counter()
        body, error = await parse(request, ChatRequest)
        if error:
            return failed("chat", "-", error, started)
        messages = [m.model_dump() for m in body.messages]
        if body.stream and hasattr(get_engine(), "generate_stream"):
            return await stream_reply("chat", body, [messages], started)
        served, results, error = await run(request, body, [messages])
        if error:
            return failed("chat", served, error, started)
        choices = [
            {"index": j, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
            for j, c in enumerate(results[0])
        ]
        response = _envelope("chat.completion", served, choices, results)
        observe("chat", served, 200, started, results)
        stream = _stream_chat(response, _include_usage(body)) if body.stream else None
        return reply(response, served, stream)

    return app


def _include_usage(body: _Common) -> bool:
    return bool((body.stream_options or {}).get("include_usage"))


def _envelope(kind: str, model: str, choices: list, results: list) -> dict:
    prompt_tokens = sum(samples[0].prompt_tokens for samples in results if samples)
    completion_tokens = sum(c.completion_tokens for samples in results for c in samples)
    return {
        "id": f"lema-{uuid.uuid4().hex[:16]}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class ClientGone(Exception):
    """The HTTP client disconnected while its request was generating."""


async def _unless_disconnected(request: Request, work: Awaitable):
    """Await `work`, cancelling it when the client disconnects (checked every quarter second)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientGone()
    except BaseException:
        task.cancel()
        raise


class _CompletionChunks:
    """OpenAI's `text_completion` stream chunks, one per delta."""

    def __init__(self, model: str):
        self.base = {"id": f"lema-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()),
                     "model": model}

    def delta(self, delta: StreamDelta) -> str:
        choice = {"index": delta.index, "text": delta.text, "finish_reason": delta.finish_reason, "logprobs": None}
        return f"data: {json.dumps({**self.base, 'choices': [choice]})}\n\n"

    def usage(self, completions: list[Completion], n: int) -> str:
        prompt = sum(c.prompt_tokens for c in completions[::n])
        generated = sum(c.completion_tokens for c in completions)
        usage = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
        return f"data: {json.dumps({**self.base, 'choices': [], 'usage': usage})}\n\n"


class _ChatChunks(_CompletionChunks):
    """OpenAI's `chat.completion.chunk` stream: the role with a choice's first delta, then content, then the
    finish reason with an empty delta."""

    def __init__(self, model: str):
        super().__init__(model)
        self.base["object"] = "chat.completion.chunk"
        self.started: set[int] = set()

    def delta(self, delta: StreamDelta) -> str:
        content = {"content": delta.text}
        if delta.index not in self.started:
            self.started.add(delta.index)
            content = {"role": "assistant", **content}
        parts = []
        if delta.text or delta.finish_reason is None or content.get("role"):
            parts.append({"index": delta.index, "delta": content, "finish_reason": None})
        if delta.finish_reason is not None:
            parts.append({"index": delta.index, "delta": {}, "finish_reason": delta.finish_reason})
        return "".join(f"data: {json.dumps({**self.base, 'choices': [part]})}\n\n" for part in parts)


async def _stream_completion(response: dict, include_usage: bool = False) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format from a finished response (engines without `generate_stream`:
    one content chunk per choice, then the finish)."""
    body = {k: v for k, v in response.items() if k != "usage"}
    for choice in response["choices"]:
        chunk = {**body, "choices": [{**choice}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    if include_usage:
        yield f"data: {json.dumps({**body, 'choices': [], 'usage': response['usage']})}\n\n"
    yield "data: [DONE]\n\n"


async def _stream_chat(response: dict, include_usage: bool = False) -> AsyncIterator[str]:
    base = {k: response[k] for k in ("id", "created", "model")}
    for choice in response["choices"]:
        i = choice["index"]
        first = {"index": i, "delta": {"role": "assistant", "content": choice["message"]["content"]}, "finish_reason": None}
        last = {"index": i, "delta": {}, "finish_reason": choice["finish_reason"]}
        for part in (first, last):
            yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [part]})}\n\n"
    if include_usage:
        chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": response["usage"]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def main() -> None:
    """Standalone server: uvicorn + the transformers engine (dev and tests; production uses BentoML)."""
    import uvicorn

    from lema.core.engines import create_engine
    from lema.core.model_resolve import resolve_model

    parser = argparse.ArgumentParser(description="lema OpenAI-compatible API (standalone)")
    parser.add_argument("--model", default="lema-tiny")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=PATH (repeatable)")
    args = parser.parse_args()
    engine = create_engine("transformers", resolve_model(args.model))
    import asyncio

    for spec in args.adapter:
        name, _, path = spec.partition("=")
        asyncio.run(engine.load_adapter(name, path))
    root = FastAPI()
    root.mount("/v1", build_app(lambda: engine))

    @root.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(root, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
