"""The endpoint's engine: vLLM (runtime LoRA) when asked for or available and working, else transformers+peft.

`engine: auto` picks vLLM when `vllm` is importable and the engine starts and generates; any failure falls back
to the transformers engine with a logged warning, so the same API is always served.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from dataclasses import dataclass

from lema.core.engines import Engine, SamplingParams, create_engine
from lema.core.engines.transformers_engine import TransformersEngine

logger = logging.getLogger("lema.endpoint")


@dataclass
class EngineChoice:
    engine: Engine
    kind: str  # "vllm" | "transformers"
    fallback_reason: str | None = None


async def _start_vllm(model_id: str, max_lora_rank: int, max_loras: int, kv_cache_gib: int | None,
                      tensor_parallel_size: int = 1) -> Engine:
    options = {"max_lora_rank": max_lora_rank, "max_loras": max_loras, "tensor_parallel_size": tensor_parallel_size}
    if kv_cache_gib is not None:
        options["kv_cache_space_gib"] = kv_cache_gib
    engine = await asyncio.to_thread(create_engine, "vllm", model_id, **options)
    try:
        start = getattr(engine, "start", None)
        if start is not None:
            await start()
        await engine.generate(["1 + 1 ="], SamplingParams(max_tokens=1))  # it really generates
    except BaseException:
        try:
            await engine.close()
        except Exception as exc:  # noqa: BLE001 - already failing; the first error is the one to report
            logger.debug("closing the failed vLLM engine: %s", exc)
        raise
    return engine


async def choose_engine(
    kind: str,
    model_id: str,
    *,
    threads: int | None = None,
    max_lora_rank: int = 64,
    max_loras: int = 8,
    kv_cache_gib: int | None = None,
    tensor_parallel_size: int = 1,
    max_batch_rows: int = 32,
    max_waiting: int | None = None,
    max_sequences_per_request: int | None = None,
) -> EngineChoice:
    reason = None
    if kind in ("auto", "vllm"):
        if importlib.util.find_spec("vllm") is None:
            reason = "vllm is not installed"
            if kind == "vllm":
                logger.warning("engine=vllm but %s; falling back to the transformers engine", reason)
        else:
            try:
                engine = await _start_vllm(model_id, max_lora_rank, max_loras, kv_cache_gib, tensor_parallel_size)
                return EngineChoice(engine, "vllm")
            except Exception as exc:  # noqa: BLE001 - any failure: serve with transformers instead
                reason = f"vLLM failed to start: {type(exc).__name__}: {exc}"
                logger.warning("%s; falling back to the transformers engine", reason)
    elif kind != "transformers":
        raise ValueError(f"unknown engine {kind!r}; choose auto, vllm or transformers")
    engine = await asyncio.to_thread(TransformersEngine, model_id, threads=threads, batch_size=max_batch_rows,
                                     max_waiting=max_waiting, max_sequences_per_request=max_sequences_per_request)
    return EngineChoice(engine, "transformers", reason)
