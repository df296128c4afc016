"""The BentoML service: `bentoml serve` from the repository root (bentofile.yaml names it) or `lema serve endpoint`.

    /v1/models, /v1/completions, /v1/chat/completions   OpenAI-compatible (streaming too)   (core.v1_app)
    /solve                                              question -> solution, answer, adapter used
    /admin/...                                          adapter load/unload/promote/rollback (admin.py)
    /livez /healthz /readyz /metrics                    BentoML's probes and Prometheus metrics
    /health                                             vLLM's probe: 200 once the model is loaded

One worker holds the one engine and the hot-swap state (several workers would each hold their own adapters and
promotions). The engine starts in the background after the server is up: /livez answers at once, /readyz turns
200 when the model (and any preloaded adapter) is loaded, and the APIs answer 503 until then.

Configuration (lema.core.config, one precedence rule): the defaults, $LEMA_CONFIG (a lema YAML file, its `endpoint`
section), then `LEMA_ENDPOINT__<FIELD>` variables (`LEMA_ENDPOINT__MODEL=smollm2`; what `lema serve endpoint` sets).
"""

from __future__ import annotations

import bentoml

from lema.core.errors import Unavailable
from lema.services.endpoint.admin import build_admin_app
from lema.services.endpoint.core import (
    EndpointCore,
    current_core,
    load_endpoint_config,
    root_app,
    set_current_core,
    v1_app,
)
from lema.services.endpoint.openai_api import ADAPTER_HEADER
from lema.services.endpoint.swap import UnknownModel

_CONFIG = load_endpoint_config()
V1_APP = v1_app(_CONFIG)
ADMIN_APP = build_admin_app(current_core, _CONFIG.admin_token_env)
ROOT_APP = root_app()  # GET /health; BentoML mounts it passively: only its own routes match


@bentoml.asgi_app(ROOT_APP, path="/")
@bentoml.asgi_app(V1_APP, path="/v1")
@bentoml.asgi_app(ADMIN_APP, path="/admin")
@bentoml.service(
    name="lema-endpoint",
    workers=1,
    traffic={"timeout": 600},
    # A plain `bentoml serve` (no --host) binds the configured host, loopback by default, not BentoML's 0.0.0.0.
    http={"host": _CONFIG.host, "port": _CONFIG.port},
    labels={"project": "lema", "component": "endpoint"},
)
class Endpoint:
    def __init__(self) -> None:
        import logging

        import torch

        logging.getLogger("lema.endpoint").setLevel(logging.INFO)  # loads, swaps, readiness in the server log
        torch.set_num_threads(self_threads(_CONFIG.threads))
        self.core = EndpointCore(load_endpoint_config())
        set_current_core(self.core)

    @bentoml.on_startup
    async def start_engine(self) -> None:
        self.core.start_in_background()
        _chain_sigterm(self.core)

    @bentoml.on_shutdown
    async def stop_engine(self) -> None:
        from lema.services.endpoint import core

        if core.CORRECTION_BACKENDS is not None:
            await core.CORRECTION_BACKENDS.close()
        await self.core.close()
        set_current_core(None)

    def __is_ready__(self) -> bool:
        return self.core.ready and not self.core.draining and not self.core.wedged and not self.core.behind

    def __is_alive__(self) -> bool:
        return self.core.failed is None

    def __metrics__(self, content: str) -> str:
        return self.core.metrics.exposition(content)

    @bentoml.api(route="/solve")
    async def solve(
        self,
        question: str,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        kind: str = "gsm8k",
        ctx: bentoml.Context = None,
    ) -> dict:
        """Solve a math word problem step by step: the solution text, the extracted answer, the adapter used.
        `model` names the base model or a loaded adapter; left out, the promoted adapter serves."""
        # Errors as the object BentoML's OpenAPI document declares ({"error": message}); raising BentoML's own
        # exceptions here answered a list instead.
        try:
            result = await self.core.solve(question, model, max_tokens, temperature, kind)
        except Unavailable as exc:  # starting, or the engine's queue is full
            if ctx is not None:
                ctx.response.headers["Retry-After"] = "1"
            return _solve_error(ctx, 503, str(exc)[:1000])
        except UnknownModel:  # raised by resolving the model only; a KeyError from inside generation is a bug
            return _solve_error(ctx, 404, f"model {str(model)[:200]!r} is not served here; see /v1/models")
        except ValueError as exc:
            return _solve_error(ctx, 400, str(exc)[:1000])
        if ctx is not None:
            ctx.response.headers[ADAPTER_HEADER] = result["model"]
        return result


def _solve_error(ctx, status: int, message: str) -> dict:
    if ctx is not None:
        ctx.response.status_code = status
    return {"error": message}


def _chain_sigterm(core: EndpointCore) -> None:
    """Start the core's shutdown grace period when SIGTERM arrives, then let the server's own handler run (uvicorn
    installs it before startup hooks run). Without this the server waits for every open stream before shutdown hooks
    run, however long they take (Kubernetes kills the pod at 30 s)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum, frame) -> None:
        loop.call_soon_threadsafe(core.on_sigterm)
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread (an embedding host): its own shutdown calls core.close()
        pass


def self_threads(threads: int | None) -> int:
    """Torch threads in the worker: 1 unless configured (lema shares the CPU with other processes)."""
    return threads or 1


class SolveContentType:
    """ASGI middleware: `POST /solve` takes JSON. BentoML parses other content types itself and answered a multipart
    body without a boundary with a 500 (found by schemathesis); anything but JSON is a 415 with /solve's error body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/solve" and scope["method"] == "POST":
            content_type = dict(scope["headers"]).get(b"content-type", b"application/json").decode("latin-1")
            if content_type.split(";")[0].strip().lower() != "application/json":
                from fastapi.responses import JSONResponse

                response = JSONResponse({"error": "Content-Type: /solve takes application/json"}, status_code=415)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


Endpoint.add_asgi_middleware(SolveContentType)
