"""Generation engines behind one interface (see base.py). Imports are lazy: each engine needs its own extra."""

from __future__ import annotations

from lema.core.engines.base import (
    AdapterInfo,
    Completion,
    ContextLengthError,
    Engine,
    EngineError,
    Prompt,
    SamplingParams,
    StreamDelta,
    TokenLogprob,
)

ENGINES = ("vllm", "transformers", "openai")

__all__ = ["AdapterInfo", "Completion", "ContextLengthError", "Engine", "EngineError", "Prompt", "SamplingParams", "StreamDelta", "TokenLogprob", "ENGINES", "create_engine"]


def create_engine(kind: str, model: str, **options) -> Engine:
    """Build an engine by name. `model` is a local folder or a Hugging Face id (or the upstream model name)."""
    if kind == "transformers":
        from lema.core.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model, **options)
    if kind == "vllm":
        from lema.core.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, **options)
    if kind == "openai":
        from lema.core.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model, **options)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
