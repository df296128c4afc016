"""OpenAI-compatible HTTP API over any lema engine: /v1/models, /v1/completions, /v1/chat/completions.

The BentoML endpoint mounts this app; it also runs standalone under uvicorn
(`python -m lema.services.endpoint.openai_api --model lema-tiny --port 8000`), which is how tests get a real
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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lema.core.engines import Completion, Engine, EngineError, StreamDelta
from lema.core.errors import Unavailable
from lema.services.endpoint.errors import documented, engine_error_response
from lema.services.endpoint.errors import error_response as _error
from lema.services.endpoint.protocol import (
    MAX_TOKENS_LIMIT,
    ChatRequest,
    CompletionRequest,
    UnsupportedField,
    _Common,
)
from lema.services.endpoint.swap import UnknownModel

ADAPTER_HEADER = "x-lema-adapter"


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
    max_sequences_per_request: int | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """`resolve_adapter(model_name)` maps a requested model to an adapter name (None = base model) or raises
    UnknownModel for an unknown model; the default accepts the base model's name and any loaded adapter name.

    `pin(model_name)` is a context manager doing the same and holding the adapter for the request's duration
    (default: `resolve_adapter` with nothing held). `list_models()` returns /models' data entries.
    `on_request(route, served_model, status, seconds, prompt_tokens, completion_tokens)` sees every request.
    `routers`: more /v1 routes (the correction API), matched before the JSON 404 for unknown routes.
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
            return None, _error(400, _validation_message(exc))
        except ClientDisconnect:  # the client left while its body was being read: nobody to answer
            return None, _error(499, "the client closed the connection", "client_closed")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
            return None, _error(400, "the request body is not valid JSON (UTF-8, nested at most a few hundred deep)")

    @app.get("/models/{model_id:path}")
    async def model(model_id: str):
        for entry in (await models())["data"]:
            if entry["id"] == model_id:
                return entry
        return _error(404, f"model {model_id[:200]!r} is not served here; see /v1/models", "not_found_error")

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
        if (body.max_new_tokens() or 0) > max_tokens_limit:
            return _error(400, f"max_tokens: must be at most {max_tokens_limit}")
        prompts = len(body.prompts()) if isinstance(body, CompletionRequest) else 1
        if max_sequences_per_request and prompts * body.n > max_sequences_per_request:
            # Checked here for every engine (the transformers engine checks it too): a 20,000-prompt request is
            # refused before anything is tokenised.
            return _error(400, f"prompt: {prompts} prompts x n={body.n} is more than max_sequences_per_request "
                               f"({max_sequences_per_request}) sequences in one request")
        pinned = contextlib.ExitStack()
        try:
            return pinned, pinned.enter_context(pin_adapter(body.model))
        except UnknownModel:
            return unknown_model(body)
        except Unavailable as exc:  # not ready (starting, or shutting down): retry elsewhere, never a 500
            return _error(503, str(exc)[:1000], "unavailable", headers={"Retry-After": "5"})

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
        chunks = (_CompletionChunks if route == "completions" else _ChatChunks)(served, params.n, body.continuous_usage)

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
                if body.include_usage:
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

    def refuse_unstreamable(body) -> JSONResponse | None:
        if body.stream and getattr(body, "echo", False):
            return _error(400, "echo: is not supported with stream: true")
        if body.stream and getattr(body, "logprobs", None) not in (None, False):
            return _error(400, "logprobs: is not supported with stream: true")
        if getattr(body, "logprobs", None) not in (None, False) or getattr(body, "echo", False):
            if getattr(get_engine(), "tokenizer", None) is None:
                return _error(400, "logprobs: is not supported by this endpoint's engine")
        return None

    @app.post("/completions", openapi_extra=_request_body(CompletionRequest))
    async def completions(request: Request):
        started = time.perf_counter()
        body, error = await parse(request, CompletionRequest)
        if error:
            return failed("completions", "-", error, started)
        prompts = body.prompts()
        if not prompts or any(not p for p in prompts):
            error = _error(400, "prompt: must be a non-empty string or token list, or a list of them")
            return failed("completions", "-", error, started)
        if error := refuse_unstreamable(body):
            return failed("completions", "-", error, started)
        if body.stream and hasattr(get_engine(), "generate_stream"):
            return await stream_reply("completions", body, prompts, started)
        served, results, error = await run(request, body, prompts)
        if error:
            return failed("completions", served, error, started)
        tokenizer = getattr(get_engine(), "tokenizer", None)
        choices = []
        for i, samples in enumerate(results):
            for j, c in enumerate(samples):
                text, logprobs = c.text, None
                if body.echo:
                    text = _prompt_text(prompts[i], c, tokenizer) + text
                if body.logprobs is not None:
                    logprobs = _completion_logprobs(c, tokenizer, body.echo)
                choices.append({"index": i * body.n + j, "text": text, "finish_reason": c.finish_reason,
                                "logprobs": logprobs})
        response = _envelope("text_completion", served, choices, results)
        observe("completions", served, 200, started, results)
        stream = _stream_completion(response, body.include_usage) if body.stream else None
        return reply(response, served, stream)

    @app.post("/chat/completions", openapi_extra=_request_body(ChatRequest))
    async def chat(request: Request):
        started = time.perf_counter()
        body, error = await parse(request, ChatRequest)
        if error:
            return failed("chat", "-", error, started)
        if error := refuse_unstreamable(body):
            return failed("chat", "-", error, started)
        messages = [m.as_message() for m in body.messages]
        if body.stream and hasattr(get_engine(), "generate_stream"):
            return await stream_reply("chat", body, [messages], started)
        served, results, error = await run(request, body, [messages])
        if error:
            return failed("chat", served, error, started)
        tokenizer = getattr(get_engine(), "tokenizer", None)
        choices = [
            {"index": j, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
             "logprobs": _chat_logprobs(c, tokenizer) if body.logprobs else None}
            for j, c in enumerate(results[0])
        ]
        response = _envelope("chat.completion", served, choices, results)
        observe("chat", served, 200, started, results)
        stream = _stream_chat(response, body.include_usage) if body.stream else None
        return reply(response, served, stream)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail)[:200], "not_found_error" if exc.status_code == 404
                      else "invalid_request_error")

    for router in routers:
        app.include_router(router)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown_route(path: str):
        """Any other path under /v1 answers an OpenAI error body (BentoML mounts this app passively: without a
        route of its own here, its plain-text 404 would answer)."""
        return _error(404, f"no route /v1/{path[:200]} here; see /v1/models, /v1/completions, /v1/chat/completions",
                      "not_found_error")

    return app


def _request_body(model) -> dict:
    """The route's request body in its OpenAPI operation (the handler parses the body itself, so that a field it
    refuses gets OpenAI's error body): the model's JSON schema with its definitions inlined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def _validation_message(exc: ValidationError) -> str:
    """The first error as `field.path: what is wrong` (an unsupported field names itself)."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, UnsupportedField):
        return str(cause)
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "is not a parameter this endpoint knows (OpenAI's spec, plus vLLM's ignore_eos)"
    return f"{where}: {message}" if where else message


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def _prompt_text(prompt, completion: Completion, tokenizer) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.decode(list(prompt), skip_special_tokens=False)


def _completion_logprobs(c: Completion, tokenizer, echo: bool) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs ({token: logprob}), text_offset; with
    echo, the prompt's tokens first (the first one has no log-probability)."""
    entries: list = []
    ids: list[int] = []
    if echo and c.prompt_logprobs is not None:
        entries += list(c.prompt_logprobs)
        ids += list(c.prompt_token_ids)
    entries += list(c.logprobs or ())
    ids += list(c.token_ids)
    tokens = [_token_text(tokenizer, t) for t in ids]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [None if e is None else e.logprob for e in entries],
        "top_logprobs": [None if e is None else {_token_text(tokenizer, t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def _chat_logprobs(c: Completion, tokenizer) -> dict:
    def item(token_id: int, logprob: float) -> dict:
        text = _token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                        for e in (c.logprobs or ())], "refusal": None}


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

    def __init__(self, model: str, n: int = 1, continuous_usage: bool = False):
        self.base = {"id": f"lema-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()),
                     "model": model}
        self.n, self.continuous_usage = n, continuous_usage
        self.prompt_tokens: dict[int, int] = {}  # per prompt
        self.completion_tokens: dict[int, int] = {}  # per choice, so far

    def _chunk(self, choices: list[dict], delta: StreamDelta) -> str:
        chunk = {**self.base, "choices": choices}
        if self.continuous_usage:  # vLLM's continuous_usage_stats: the usage so far in every chunk
            self.prompt_tokens[delta.index // self.n] = delta.prompt_tokens
            self.completion_tokens[delta.index] = delta.completion_tokens
            prompt, generated = sum(self.prompt_tokens.values()), sum(self.completion_tokens.values())
            chunk["usage"] = {"prompt_tokens": prompt, "completion_tokens": generated,
                              "total_tokens": prompt + generated}
        return f"data: {json.dumps(chunk)}\n\n"

    def delta(self, delta: StreamDelta) -> str:
        choice = {"index": delta.index, "text": delta.text, "finish_reason": delta.finish_reason, "logprobs": None}
        return self._chunk([choice], delta)

    def usage(self, completions: list[Completion], n: int) -> str:
        prompt = sum(c.prompt_tokens for c in completions[::n])
        generated = sum(c.completion_tokens for c in completions)
        usage = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
        return f"data: {json.dumps({**self.base, 'choices': [], 'usage': usage})}\n\n"


class _ChatChunks(_CompletionChunks):
    """OpenAI's `chat.completion.chunk` stream: the role with a choice's first delta, then content, then the
    finish reason with an empty delta."""

    def __init__(self, model: str, n: int = 1, continuous_usage: bool = False):
        super().__init__(model, n, continuous_usage)
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
        return "".join(self._chunk([part], delta) for part in parts)


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
