"""The OpenAI request bodies as this endpoint takes them: every field of OpenAI's spec is honoured or refused.

The spec is the `openai` package's own typing (`openai.types.completion_create_params`,
`openai.types.chat.completion_create_params`); `tests/unit/services/test_protocol.py` walks its field lists, so a
field added to the spec shows up as a failing test instead of being dropped silently. A field is in one of three
groups:
- honoured: it changes what is generated or returned (model, prompt/messages, n, temperature, top_p, max_tokens,
  max_completion_tokens, stop, seed, stream, stream_options, logprobs, top_logprobs, echo);
- identification only: it names the caller or a cache key and never changes an output (`user`, `safety_identifier`,
  `prompt_cache_key`, `prompt_cache_retention`, `prompt_cache_options`, `metadata`, `service_tier` "auto"/"default");
  accepted, as OpenAI's own API treats them;
- refused: anything else set to a value that would change the output (`tools`, `response_format` other than text,
  penalties other than 0, `logit_bias`, `suffix`, `best_of` above 1, audio, ...): 400 naming the field and why.
Fields outside the spec are refused too (400 naming them), except vLLM's `ignore_eos`, which load generators send.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from lema.core.config import EndpointConfig
from lema.core.engines import SamplingParams
from lema.core.engines.base import MAX_LOGPROBS

MAX_N = 16
MAX_TOKENS_LIMIT = EndpointConfig.model_fields["max_tokens_limit"].default


class UnsupportedField(ValueError):
    """A field of the spec this endpoint does not implement, set to a value that would matter."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field = field


def _unicode(value: str) -> str:
    """JSON can carry a lone surrogate ("\\ud800"), which no tokenizer can encode: refuse it here, by field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate, which is not valid Unicode") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value
TokenId = Annotated[int, Field(ge=0)]


def _absent(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ""


def _zero(value: Any) -> bool:
    return value is None or value == 0


# field -> (is this value harmless?, why it is refused otherwise). Both routes; route-specific ones below.
_REFUSED_COMMON: dict[str, tuple] = {
    "frequency_penalty": (_zero, "only 0 is supported (no repetition penalties in this endpoint)"),
    "presence_penalty": (_zero, "only 0 is supported (no repetition penalties in this endpoint)"),
    "logit_bias": (_absent, "is not supported by this endpoint"),
}
_REFUSED_COMPLETIONS: dict[str, tuple] = {
    **_REFUSED_COMMON,
    "suffix": (_absent, "is not supported by this endpoint (no fill-in-the-middle)"),
    "best_of": (lambda v: v is None or v == 1, "only 1 is supported"),
}
_REFUSED_CHAT: dict[str, tuple] = {
    **_REFUSED_COMMON,
    "tools": (_absent, "is not supported by this endpoint (no tool calling)"),
    "tool_choice": (lambda v: v is None or v == "none", "is not supported by this endpoint (no tool calling)"),
    "parallel_tool_calls": (lambda v: v is None, "is not supported by this endpoint (no tool calling)"),
    "functions": (_absent, "is not supported by this endpoint (no function calling)"),
    "function_call": (lambda v: v is None or v == "none", "is not supported by this endpoint (no function calling)"),
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "only {\"type\": \"text\"} is supported (no JSON mode or schemas)"),
    "audio": (_absent, "is not supported by this endpoint (text only)"),
    "modalities": (lambda v: v is None or v == ["text"], "only [\"text\"] is supported"),
    "prediction": (_absent, "is not supported by this endpoint (no predicted outputs)"),
    "reasoning_effort": (_absent, "is not supported by this endpoint"),
    "verbosity": (_absent, "is not supported by this endpoint"),
    "web_search_options": (lambda v: v is None, "is not supported by this endpoint (no web search)"),
    "store": (lambda v: v is None or v is False, "is not supported: this endpoint stores no completions"),
    "moderation": (_absent, "is not supported by this endpoint"),
}
# Accepted; they identify the caller or name a cache and never change an output.
IDENTIFICATION = ("user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
                  "metadata", "service_tier")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extension: usage so far in every chunk
    include_obfuscation: bool | None = None  # OpenAI pads chunks against side channels; no effect on content


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float = Field(default=1.0, ge=0, le=2)
    # In (0, 1]; written as a check rather than `gt=0`, which the OpenAPI 3.0 document BentoML serves cannot express.
    top_p: Annotated[float, AfterValidator(_positive)] = Field(default=1.0, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    # OpenAI's current name for max_tokens on chat (langchain-openai and guidellm send it); accepted on both routes.
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension (load generators such as guidellm send it)
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    service_tier: Literal["auto", "default"] | None = None

    refused_fields: ClassVar[dict[str, tuple]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for field, (harmless, why) in cls.refused_fields.items():
                if field in data and not harmless(data[field]):
                    raise UnsupportedField(field, why)
                data = {k: v for k, v in data.items() if k != field} if field in data else data
        return data

    @model_validator(mode="after")
    def _one_max(self):
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            raise ValueError("max_completion_tokens: differs from max_tokens (its older name); send one of them")
        return self

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self, default_max_tokens: int = 256) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_new_tokens() or default_max_tokens, stop=stop, seed=self.seed,
                              ignore_eos=self.ignore_eos, **self._logprob_params())

    def _logprob_params(self) -> dict:
        return {}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class CompletionRequest(_Common):
    prompt: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    refused_fields: ClassVar[dict[str, tuple]] = _REFUSED_COMPLETIONS

    def prompts(self) -> list[str | list[int]]:
        """One prompt per entry: a string, a list of strings, token ids, or a list of token-id lists."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)

    def _logprob_params(self) -> dict:
        params: dict = {"logprobs": self.logprobs}
        if self.echo:
            params["prompt_logprobs"] = self.logprobs or 0
        return params


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[dict[str, Any]]

    @model_validator(mode="after")
    def _text_only(self) -> ChatMessageIn:
        if isinstance(self.content, list):
            for j, part in enumerate(self.content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"content[{j}].type: {kind!r} parts are not supported (text parts only)")
                TextPart.model_validate(part)
        return self

    def as_message(self) -> dict[str, str]:
        """The message as the chat template takes it: text parts joined with newlines (as vLLM joins them); the
        developer role is OpenAI's new name for system."""
        content = self.content if isinstance(self.content, str) else "\n".join(p["text"] for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(_Common):
    messages: list[ChatMessageIn] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    refused_fields: ClassVar[dict[str, tuple]] = _REFUSED_CHAT

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        return self

    def _logprob_params(self) -> dict:
        return {"logprobs": (self.top_logprobs or 0) if self.logprobs else None}
