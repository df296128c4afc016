"""One engine interface for every generator: the reasoner, the endpoint and the trainer's evaluation use it.

A prompt is either raw text (sent as is) or a list of chat messages (rendered with the model's chat template
by local engines, sent to /v1/chat/completions by the OpenAI engine). Every call asks for `n` samples per
prompt and may name a LoRA adapter loaded earlier with `load_adapter`.

Adapter names are never reused for different weights: vLLM keeps prefix-cache entries keyed by adapter name
and serves stale ones after a same-name reload (vLLM issue #42125), so every adapter *version* gets its own name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

from lema.core.errors import InvalidInput, LemaError

ChatMessage = dict[str, str]  # {"role": ..., "content": ...}
# Raw text (sent as is), chat messages (rendered with the chat template), or token ids (the OpenAI API allows them;
# evaluation harnesses such as lm-eval send them).
Prompt = Union[str, list[ChatMessage], list[int]]
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's top_logprobs bound)


class EngineError(LemaError, RuntimeError):
    """A generation request the engine cannot serve (unknown adapter, bad parameters, ...)."""


class InvalidPrompt(EngineError, InvalidInput):
    """A prompt the engine cannot run as given (token ids outside the vocabulary, ...); the message names it."""


class ContextLengthError(EngineError, InvalidInput):
    """A prompt plus max_tokens that does not fit the model's context; the message has the numbers."""


# Bounds on stop strings (OpenAI allows 4): each one is searched in every decoded text, and transformers builds a
# matcher per string, so an unbounded list or a 100 KB string made one request cost seconds.
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 128
# Below this a temperature is greedy: dividing logits by a subnormal number overflows to inf and sampling fails.
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (load benchmarks)
    logprobs: int | None = None  # per generated token: its log-probability and this many top alternatives
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (OpenAI's echo)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError("temperature must be >= 0 and finite")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: at most {MAX_STOP_STRINGS} strings (got {len(self.stop)})")
        if any(not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"stop: every string must have 1 to {MAX_STOP_CHARS} characters")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name}: must be between 0 and {MAX_LOGPROBS}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_SAMPLING_TEMPERATURE


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model (natural log, before temperature) and the `top` alternatives at its
    position, most likely first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str = "stop"  # "stop" (eos or a stop string) | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token id, when SamplingParams.logprobs asked
    # When SamplingParams.prompt_logprobs asked: one per prompt token, None for the first (nothing predicts it).
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    prompt_token_ids: tuple[int, ...] = ()  # filled with prompt_logprobs (echo needs the prompt's tokens)


@dataclass(frozen=True)
class StreamDelta:
    """A piece of one choice's text as it is generated (`generate_stream`). The last delta of a choice carries its
    `finish_reason` and the whole `completion` (token counts included)."""

    index: int  # the choice: prompt index x n + sample index
    text: str
    finish_reason: str | None = None
    completion: Completion | None = None
    prompt_tokens: int = 0  # the choice's prompt, and its tokens generated so far (continuous usage stats)
    completion_tokens: int = 0


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    rank: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    name: str  # "vllm" | "transformers" | "openai"
    model_id: str

    async def generate(
        self, prompts: list[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[list[Completion]]:
        """n completions for every prompt, in prompt order."""
        ...

    async def load_adapter(self, name: str, path: str) -> AdapterInfo: ...

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> list[AdapterInfo]: ...

    async def close(self) -> None: ...
