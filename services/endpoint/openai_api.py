"""OpenAI-compatible HTTP API over any lema engine: /v1/models, /v1/completions, /v1/chat/completions.

The BentoML endpoint mounts this app; it also runs standalone under uvicorn
(`python -m lema.services.endpoint.openai_api --model lema-tiny --port 8000`), which is how tests get a real
OpenAI-compatible server on 127.0.0.1 for the corrector and the reasoner's `openai` engine.

Requests name the base model or a loaded adapter in `model`; bad requests get HTTP 400 with an OpenAI-style
error body, never a crash.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from lema.core.engines import Engine, EngineError, SamplingParams

MAX_TOKENS_LIMIT = 4096
MAX_N = 16


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Common(BaseModel):
    model: str
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    stream: bool = False

    def sampling(self, default_max_tokens: int = 256) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens or default_max_tokens, stop=stop, seed=self.seed)


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]


class ChatRequest(_Common):
    messages: list[ChatMessageIn] = Field(min_length=1)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


def served_name(engine: Engine) -> str:
    """The base model's public name: the folder name for local models ("lema-tiny"), else the id."""
    return Path(engine.model_id).name if Path(engine.model_id).exists() else engine.model_id


def build_app(
    get_engine: Callable[[], Engine],
    resolve_adapter: Callable[[str], Optional[str]] | None = None,
    on_served: Callable[[str, int], None] | None = None,
) -> FastAPI:
    """`resolve_adapter(model_name)` maps a requested model to an adapter name (None = base model) or raises
    KeyError for an unknown model; the default accepts the base model's name and any loaded adapter name."""
    app = FastAPI(title="lema OpenAI-compatible API")

    def default_resolve(model: str) -> Optional[str]:
        engine = get_engine()
        if model in (engine.model_id, served_name(engine), "default"):
            return None
        if model in {a.name for a in engine.adapters()}:
            return model
        raise KeyError(model)

    resolve = resolve_adapter or default_resolve

    async def parse(request: Request, model_cls):
        try:
            return model_cls.model_validate(await request.json()), None
        except json.JSONDecodeError:
            return None, _error(400, "the request body is not valid JSON")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return None, _error(400, f"{where}: {first['msg']}")

    @app.get("/models")
    async def models() -> dict:
        engine = get_engine()
        now = int(time.time())
        base = served_name(engine)
        data = [{"id": base, "object": "model", "created": now, "owned_by": "lema"}]
        data += [{"id": a.name, "object": "model", "created": now, "owned_by": "lema", "parent": base}
                 for a in engine.adapters()]
        return {"object": "list", "data": data}

    async def run(body: _Common, prompts: list) -> tuple[Optional[str], list, Optional[JSONResponse]]:
        try:
            adapter = resolve(body.model)
        except KeyError:
            return None, [], _error(404, f"model {body.model!r} is not served here; see /v1/models", "not_found_error")
        try:
            results = await get_engine().generate(prompts, body.sampling(), adapter)
        except (EngineError, ValueError) as exc:
            return adapter, [], _error(400, str(exc))
        if on_served is not None:
            on_served(adapter or "base", sum(c.completion_tokens for r in results for c in r))
        return adapter, results, None

    @app.post("/completions")
    async def completions(request: Request):
        body, error = await parse(request, CompletionRequest)
        if error:
            return error
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or any(not p for p in prompts):
            return _error(400, "prompt: must be a non-empty string or list of non-empty strings")
        adapter, results, error = await run(body, prompts)
        if error:
            return error
        choices = [
            {"index": i * body.n + j, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            for i, samples in enumerate(results) for j, c in enumerate(samples)
        ]
        response = _envelope("text_completion", body.model, choices, results)
        if body.stream:
            return StreamingResponse(_stream_completion(response), media_type="text/event-stream")
        return response

    @app.post("/chat/completions")
    async def chat(request: Request):
        body, error = await parse(request, ChatRequest)
        if error:
            return error
        messages = [m.model_dump() for m in body.messages]
        adapter, results, error = await run(body, [messages])
        if error:
            return error
        choices = [
            {"index": j, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
            for j, c in enumerate(results[0])
        ]
        response = _envelope("chat.completion", body.model, choices, results)
        if body.stream:
            return StreamingResponse(_stream_chat(response), media_type="text/event-stream")
        return response

    return app


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


async def _stream_completion(response: dict) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format (one content chunk per choice, then the finish)."""
    for choice in response["choices"]:
        chunk = {**response, "choices": [{**choice}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


async def _stream_chat(response: dict) -> AsyncIterator[str]:
    base = {k: response[k] for k in ("id", "created", "model")}
    for choice in response["choices"]:
        i = choice["index"]
        first = {"index": i, "delta": {"role": "assistant", "content": choice["message"]["content"]}, "finish_reason": None}
        last = {"index": i, "delta": {}, "finish_reason": choice["finish_reason"]}
        for part in (first, last):
            yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [part]})}\n\n"
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
