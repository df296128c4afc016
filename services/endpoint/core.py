"""The endpoint's core, independent of BentoML: engine, adapter registry, hot-swap state, metrics, /solve.

`service.py` wraps one `EndpointCore` in a BentoML service; the FastAPI apps it mounts (`v1_app()` for the
OpenAI-compatible API, `admin.build_admin_app()`) reach the running core through `current_core()`, so they can
be built when the module is imported (BentoML needs them then) while the engine starts later.

Loading an adapter: confine the path to the registry, validate the folder (registry.inspect_adapter), reserve a
never-used name, load it into the engine, run a smoke generation on it; any failure leaves the serving state
exactly as it was (the engine forgets the half-loaded adapter) and answers 4xx with the reason.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lema.core.adapter_registry import (
    AdapterManifest,
    AdapterRegistry,
    AdapterRejected,
    BaseModelSpec,
    Limits,
    auto_name,
    check_name,
)
from lema.core.config import EndpointConfig, load_config
from lema.core.engines import Engine, EngineError, SamplingParams
from lema.core.errors import Unavailable
from lema.services.endpoint.swap import Promotion, ServedAdapter, ServingState, StateConflict, UnknownModel

logger = logging.getLogger("lema.endpoint")

def load_endpoint_config() -> EndpointConfig:
    """The `endpoint` section: defaults, $LEMA_CONFIG's file, then `LEMA_ENDPOINT__<FIELD>` variables (what
    `lema serve endpoint` sets for its flags; lema.core.config has the one precedence rule)."""
    return load_config().endpoint


_CURRENT: EndpointCore | None = None


def current_core() -> EndpointCore:
    if _CURRENT is None:
        raise RuntimeError("the endpoint core is not initialised")
    return _CURRENT


def set_current_core(core: EndpointCore | None) -> None:
    global _CURRENT
    _CURRENT = core


class NotReady(Unavailable, RuntimeError):
    """The model is loading (or failed to): 503."""


class EndpointCore:
    def __init__(self, config: EndpointConfig):
        from lema.services.endpoint.metrics import EndpointMetrics

        self.config = config
        self.registry = AdapterRegistry(config.registry_dir)
        self.limits = Limits(
            max_rank=config.max_lora_rank,
            allowed_target_modules=tuple(config.allowed_target_modules) or None,
            max_adapter_bytes=config.max_adapter_mb << 20,
        )
        self.metrics = EndpointMetrics()
        self.engine: Engine | None = None
        self.engine_kind: str | None = None
        self.engine_fallback: str | None = None
        self.spec: BaseModelSpec | None = None
        self.state: ServingState | None = None
        self.ready = False
        self.failed: str | None = None
        self.created = time.time()
        self.cold_start_s: float | None = None
        self._admin_lock: asyncio.Lock | None = None
        self._start_task: asyncio.Task | None = None
        self._shutdown_task: asyncio.Task | None = None
        self.draining = False  # SIGTERM received: not ready, still serving until the grace period ends
        self.follower = None  # fleet.PromotionFollower when endpoint.promotion_record is set

    # -- life cycle --------------------------------------------------------------------------------
    def start_in_background(self) -> None:
        self._start_task = asyncio.get_running_loop().create_task(self._start_logged())

    async def _start_logged(self) -> None:
        try:
            await self.start()
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            logger.exception("the endpoint failed to start")

    async def start(self) -> None:
        from lema.core.model_resolve import resolve_model
        from lema.services.endpoint.engines import choose_engine
        from lema.services.endpoint.openai_api import served_name

        started = time.perf_counter()
        self._admin_lock = asyncio.Lock()
        model_id = resolve_model(self.config.model)
        if (Path(model_id).is_absolute() or model_id.startswith(".")) and not Path(model_id).exists():
            raise FileNotFoundError(f"the model folder {model_id} (for {self.config.model!r}) does not exist")
        choice = await choose_engine(
            self.config.engine, model_id, threads=self.config.threads, max_lora_rank=self.config.max_lora_rank,
            max_loras=self.config.max_loaded_adapters, kv_cache_gib=self.config.vllm_kv_cache_gib,
            tensor_parallel_size=self.config.tensor_parallel_size, max_batch_rows=self.config.max_batch_rows,
            max_waiting=self.config.max_waiting_sequences,
            max_sequences_per_request=self.config.max_sequences_per_request,
        )
        self.engine, self.engine_kind, self.engine_fallback = choice.engine, choice.kind, choice.fallback_reason
        self.metrics.watch_engine(self.engine)
        served = served_name(self.engine)
        self.spec = await asyncio.to_thread(BaseModelSpec.from_model, model_id, served)
        self.state = ServingState(served)
        self.metrics.engine.labels(self.engine_kind, served).set(1)
        self.metrics.set_promoted(served)
        self.metrics.adapters_loaded.set(0)
        await self._smoke(None)
        for item in self.config.preload:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = "", item
            await self.load(path, name or None)
        if self.config.promote:
            self.promote(self.config.promote)
        if self.config.promotion_record:
            from lema.core.promotion_record import record_path
            from lema.services.endpoint.fleet import PromotionFollower

            self.follower = PromotionFollower(self, record_path(self.registry.root, self.config.promotion_record),
                                              self.config.promotion_poll_s)
            await self.follower.catch_up()  # a new replica comes up serving the promoted adapter
            self.follower.start()
        self.cold_start_s = time.perf_counter() - started
        self.ready = True
        logger.info(
            "endpoint ready in %.1f s: engine=%s model=%s adapters=%s promoted=%s", self.cold_start_s,
            self.engine_kind, served, [a.name for a in self.state.live()], self.state.default,
        )

    def on_sigterm(self) -> None:
        """Called from the SIGTERM handler (service.py chains it before the server's own): the grace period starts
        now, not when the server has waited for every open stream. Not ready at once; requests in flight get
        `shutdown_grace_s`, then the engine cancels the rest (they answer 503 / an error event), so the server's own
        wait for open connections ends within the grace period."""
        self.draining = True  # /readyz fails at once; requests that still reach the app are served
        if self.engine is not None and self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._close_after_grace())

    async def _close_after_grace(self) -> None:
        await asyncio.sleep(self.config.shutdown_grace_s)
        if "grace_s" in inspect.signature(self.engine.close).parameters:
            await self.engine.close(grace_s=0.0)  # what has not finished within the grace period is cancelled
        else:
            await self.engine.close()

    async def _close_engine(self) -> None:
        if "grace_s" in inspect.signature(self.engine.close).parameters:
            await self.engine.close(grace_s=self.config.shutdown_grace_s)
        else:
            await self.engine.close()

    async def close(self) -> None:
        """SIGTERM: not ready at once (no new traffic), requests in flight get `shutdown_grace_s` to finish, then
        the rest are cancelled."""
        self.ready = False
        if self.follower is not None:
            await self.follower.close()
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        if self._shutdown_task is not None:
            self._shutdown_task.cancel()  # the server's own wait for open requests is over: close now
            await self._close_engine()
        elif self.engine is not None:
            await self._close_engine()

    @property
    def wedged(self) -> bool:
        """The engine has made no progress for `stall_after_s` while it had work: readiness fails, so traffic goes
        elsewhere."""
        busy = getattr(self.engine, "busy_for_s", 0.0) if self.engine is not None else 0.0
        return busy > self.config.stall_after_s

    @property
    def behind(self) -> bool:
        """The fleet's promotion record names an adapter this replica does not serve yet: not ready."""
        return self.follower is not None and self.follower.behind

    def fleet_report(self) -> dict[str, Any]:
        """What this replica serves against the promotion record (GET /admin/serving)."""
        serving = self.state.served_name(self.state.default) if self.ready and self.state else None
        report = self.follower.report() if self.follower else {"state": "disabled", "record": None}
        return {**report, "ready": self.ready and not self.wedged and not self.behind, "serving": serving}

    def require_ready(self) -> None:
        if not self.ready or self.engine is None or self.state is None:
            raise NotReady(self.failed or "the endpoint is starting (the model is loading)")

    # -- serving -----------------------------------------------------------------------------------
    @contextmanager
    def pin(self, model: str | None) -> Iterator[str | None]:
        """Resolve `model` to an adapter and hold it for the request (raises KeyError for unknown models)."""
        self.require_ready()
        with self.state.pin(model) as adapter:
            gauge = self.metrics.in_flight.labels(self.state.served_name(adapter))
            gauge.inc()
            try:
                yield adapter
            finally:
                gauge.dec()

    def list_models(self) -> list[dict]:
        self.require_ready()
        base = self.state.base_name
        data = [{
            "id": base, "object": "model", "created": int(self.created), "owned_by": "lema",
            "promoted": self.state.default is None,
        }]
        for adapter in self.state.live():
            data.append({
                "id": adapter.name, "object": "model", "created": int(adapter.loaded_at), "owned_by": "lema",
                "parent": base, "root": adapter.manifest.relative_path, "rank": adapter.manifest.rank,
                "promoted": self.state.default == adapter.name,
            })
        return data

    def on_request(self, route: str, served: str, status: int, seconds: float,
                   prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.observe_request(route, served, status, seconds, prompt_tokens, completion_tokens)

    def _prompt_for(self, text: str) -> Any:
        # The engine frames it: the chat template, or `bos + text` for a model without one (lema.core.rendering).
        return [{"role": "user", "content": text}]

    async def solve(self, question: str, model: str | None = None, max_tokens: int = 256,
                    temperature: float = 0.0, kind: str = "gsm8k") -> dict[str, Any]:
        from lema.core.answers import DatasetKind, extract_answer
        from lema.core.formats import cot_prompt

        started = time.perf_counter()
        dataset = DatasetKind(kind)
        if not question.strip():
            raise ValueError("question: must not be empty")
        if not 1 <= max_tokens <= self.config.max_tokens_limit:
            raise ValueError(f"max_tokens: must be between 1 and {self.config.max_tokens_limit}")
        with self.pin(model) as adapter:
            served = self.state.served_name(adapter)
            params = SamplingParams(temperature=temperature, max_tokens=max_tokens)
            (completion,), = await self.engine.generate([self._prompt_for(cot_prompt(question))], params, adapter)
        extraction = extract_answer(completion.text, dataset)
        self.on_request("solve", served, 200, time.perf_counter() - started,
                        completion.prompt_tokens, completion.completion_tokens)
        return {
            "question": question,
            "solution": completion.text,
            "answer": extraction.answer,
            "answer_method": extraction.method.value,
            "adapter": adapter,
            "model": served,
            "finish_reason": completion.finish_reason,
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
        }

    # -- adapters ----------------------------------------------------------------------------------
    async def _smoke(self, adapter: str | None) -> str:
        params = SamplingParams(max_tokens=self.config.smoke_max_tokens)
        results = await self.engine.generate([self.config.smoke_prompt], params, adapter)
        if len(results) != 1 or len(results[0]) != 1:
            raise EngineError("the smoke generation returned no completion")
        completion = results[0][0]
        if completion.completion_tokens < 1 and completion.finish_reason != "stop":
            raise EngineError("the smoke generation produced no tokens")
        return completion.text

    async def load(self, path: str, name: str | None = None, metadata: dict | None = None,
                   promote: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        outcome = "error"
        try:
            async with self._admin_lock:
                if len(self.state.live()) >= self.config.max_loaded_adapters:
                    raise StateConflict(
                        f"{self.config.max_loaded_adapters} adapters are loaded (the limit); unload one first"
                    )
                manifest: AdapterManifest = await asyncio.to_thread(
                    self.registry.inspect, path, self.spec, self.limits
                )
                if name:
                    name = check_name(name, self.state.base_name)
                else:
                    name = auto_name(manifest, self.state.used_names, self.state.base_name)
                self.state.reserve(name)
                load_started = time.perf_counter()
                try:
                    await self.engine.load_adapter(name, str(manifest.path))
                except Exception as exc:  # noqa: BLE001 - the engine refused it: a rejected adapter
                    await self._discard(name)
                    raise AdapterRejected(f"the engine could not load the adapter: {exc}") from None
                try:
                    smoke = await self._smoke(name)
                except Exception as exc:  # noqa: BLE001
                    await self._discard(name)
                    raise AdapterRejected(f"the smoke generation failed: {type(exc).__name__}: {exc}") from None
                adapter = ServedAdapter(
                    name=name, manifest=manifest, loaded_at=time.time(),
                    load_seconds=time.perf_counter() - load_started,
                    metadata={**manifest.metadata, **(metadata or {})},
                )
                self.state.add(adapter)
                self.metrics.adapters_loaded.set(len(self.state.live()))
            outcome = "ok"
        except (AdapterRejected, StateConflict):
            outcome = "rejected"
            raise
        finally:
            self.metrics.swaps.labels("load", outcome).inc()
            self.metrics.swap_latency.labels("load").observe(time.perf_counter() - started)
        logger.info("loaded adapter %s from %s (smoke: %r)", name, manifest.relative_path, smoke)
        info = self.describe(adapter)
        if promote:
            info["promotion"] = self.promote(name)
            info["promoted"] = True
        return info

    async def _discard(self, name: str) -> None:
        """Unload an adapter that loaded but failed its smoke test (a failed load leaves nothing: the engines
        clean up after themselves)."""
        try:
            if any(a.name == name for a in self.engine.adapters()):
                await self.engine.unload_adapter(name)
        except Exception:
            logger.exception("could not discard the half-loaded adapter %s", name)

    async def unload(self, name: str) -> dict[str, Any]:
        self.require_ready()
        started = time.perf_counter()
        outcome = "error"
        try:
            async with self._admin_lock:
                adapter = await self.state.drain(name, self.config.drain_timeout_s)
                try:
                    await self.engine.unload_adapter(name)
                except EngineError as exc:
                    logger.warning("the engine could not unload %s: %s", name, exc)
                self.state.remove(name)
                self.metrics.adapters_loaded.set(len(self.state.live()))
            outcome = "ok"
        except (UnknownModel, StateConflict):
            outcome = "rejected"
            raise
        finally:
            self.metrics.swaps.labels("unload", outcome).inc()
            self.metrics.swap_latency.labels("unload").observe(time.perf_counter() - started)
        logger.info("unloaded adapter %s", name)
        return {"unloaded": name, "served_requests": adapter.served}

    def promote(self, name: str | None) -> dict[str, Any]:
        """Make `name` (None or the base model's name = the base model) the default; atomic."""
        started = time.perf_counter()
        target = None if name in (None, "", self.state.base_name) else name
        try:
            record = self.state.promote(target)
        except UnknownModel:
            self.metrics.swaps.labels("promote", "rejected").inc()
            raise
        return self._after_swap("promote", record, started)

    def rollback(self) -> dict[str, Any]:
        self.require_ready()
        started = time.perf_counter()
        try:
            record = self.state.rollback()
        except StateConflict:
            self.metrics.swaps.labels("rollback", "rejected").inc()
            raise
        return self._after_swap("rollback", record, started)

    def _after_swap(self, action: str, record: Promotion, started: float) -> dict[str, Any]:
        served = self.state.served_name(record.name)
        self.metrics.set_promoted(served)
        self.metrics.swaps.labels(action, "ok").inc()
        self.metrics.swap_latency.labels(action).observe(time.perf_counter() - started)
        logger.info("%s: requests that name no model now go to %s", action, served)
        return {"action": action, "promoted": served, "adapter": record.name, "at": record.at}

    # -- views -------------------------------------------------------------------------------------
    def describe(self, adapter: ServedAdapter) -> dict[str, Any]:
        return {
            "name": adapter.name,
            **adapter.manifest.describe(),
            "served_base_model": self.state.base_name,
            "loaded_at": adapter.loaded_at,
            "load_seconds": round(adapter.load_seconds, 4),
            "promoted": self.state.default == adapter.name,
            "in_flight": adapter.in_flight,
            "served_requests": adapter.served,
            "metadata": adapter.metadata,
            "eval": {**_dict(adapter.metadata.get("eval")), **_dict(adapter.metadata.get("metrics"))},
        }

    def status(self) -> dict[str, Any]:
        ready = self.ready and self.state is not None
        return {
            "ready": ready,
            "failed": self.failed,
            "engine": self.engine_kind,
            "engine_fallback": self.engine_fallback,
            "model": self.state.base_name if self.state else None,
            "model_path": self.engine.model_id if self.engine else None,
            "registry": str(self.registry.root),
            "cold_start_s": self.cold_start_s,
            "promoted": self.state.served_name(self.state.default) if ready else None,
            "promotion_record": self.follower.report() if self.follower else None,
            "history": [
                {"model": self.state.served_name(p.name), "action": p.action, "at": p.at} for p in self.state.history
            ] if ready else [],
            "adapters": [self.describe(a) for a in self.state.live()] if ready else [],
            "base_in_flight": self.state.base_in_flight if ready else 0,
            "engine_parameters": self._engine_parameters(),
            "limits": {
                "max_rank": self.limits.max_rank,
                "allowed_target_modules": list(self.limits.allowed_target_modules or ()),
                "max_loaded_adapters": self.config.max_loaded_adapters,
            },
        }

    def _engine_parameters(self) -> int | None:
        """Parameters held by an in-process model (base + LoRA; shows an unload freeing its weights)."""
        model = getattr(self.engine, "model", None)
        if model is None or not hasattr(model, "parameters"):
            return None
        return int(sum(p.numel() for p in model.parameters()))


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


class ReadyGate:
    """ASGI middleware: 503 with an OpenAI-style error body until the core is ready."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        core = _CURRENT
        if scope["type"] == "http" and (core is None or not core.ready):
            from lema.services.endpoint.errors import error_response

            reason = (core.failed if core else None) or "the endpoint is starting (the model is loading)"
            response = error_response(503, reason, "unavailable", headers={"Retry-After": "5"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# The correction API's verifier and corrector (opened on first use; closed with the endpoint: service.py).
CORRECTION_BACKENDS = None


def v1_app(config: EndpointConfig | None = None):
    """The OpenAI-compatible app, bound to whatever core is current (built at import time)."""
    from lema.services.endpoint.openai_api import build_app

    config = config or load_endpoint_config()
    from lema.services.endpoint.corrections import corrections_router

    global CORRECTION_BACKENDS
    router, CORRECTION_BACKENDS = corrections_router(
        config, metrics=lambda: current_core().metrics if _CURRENT is not None else None)
    app = build_app(
        lambda: current_core().engine,
        pin=lambda model: current_core().pin(model),
        list_models=lambda: current_core().list_models(),
        on_request=lambda *args: current_core().on_request(*args),
        default_max_tokens=config.default_max_tokens,
        max_tokens_limit=config.max_tokens_limit,
        max_sequences_per_request=config.max_sequences_per_request,
        routers=[router],
    )
    app.add_middleware(ReadyGate)
    return app


def root_app():
    """Routes at the server's root beside BentoML's own: `GET /health`, which vLLM-oriented tools (guidellm, load
    balancers written for vLLM) probe: 200 once the model is loaded, 503 with an OpenAI error body before."""
    from fastapi import FastAPI

    from lema.services.endpoint.errors import error_response

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health():
        core = _CURRENT
        if core is None or not core.ready:
            reason = (core.failed if core else None) or "the endpoint is starting (the model is loading)"
            return error_response(503, reason, "unavailable", headers={"Retry-After": "5"})
        return {"status": "ok"}

    return app
