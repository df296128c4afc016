"""Correction upstreams: any OpenAI-compatible server, or the reference corrector for synthetic problems."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Protocol

import grpc

from lema.core.answers import DatasetKind
from lema.core.errors import InvalidInput, LemaError
from lema.core.formats import cot_messages
from lema.core.prompts import CorrectionPrompt
from lema.core.resilience import RetryableError


class UpstreamInputError(InvalidInput):
    """The request cannot be served by this upstream (e.g. the reference corrector without a program)."""


class UpstreamFatalError(LemaError, RuntimeError):
    """A non-retryable upstream failure (bad credentials, unknown model, 4xx)."""

    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 502
    kind = "upstream_error"


@dataclass(frozen=True)
class CorrectionInput:
    kind: DatasetKind
    question: str
    wrong_solution: str
    gold_answer: str = ""
    program_json: str = ""
    temperature: float | None = None  # of the 2nd..k-th candidates (None: the upstream's configured temperature)


@dataclass(frozen=True)
class UpstreamReply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Upstream(Protocol):
    model: str
    deterministic: bool  # True: asking again gives the same answer, so k candidates are pointless

    async def correct(self, job: CorrectionInput, prompt: CorrectionPrompt, sample_index: int,
                      timeout_s: float) -> UpstreamReply: ...

    async def solve(self, job: CorrectionInput, n: int, timeout_s: float) -> list[UpstreamReply]: ...

    async def close(self) -> None: ...


class ReferenceUpstream:
    """Exact corrections for lema's synthetic problems, from their programs (offline, free, deterministic)."""

    deterministic = True

    def __init__(self) -> None:
        from lema.core.reference_corrector import MODEL_NAME

        self.model = MODEL_NAME

    @staticmethod
    def _problem(job: CorrectionInput):
        from lema.core.synthetic import SyntheticProblem
        from lema.core.synthetic.program import Program

        if not job.program_json:
            raise UpstreamInputError(
                "the reference corrector needs the problem's program (problem.program_json): it only corrects "
                "lema's synthetic problems; use an OpenAI-compatible upstream for other problems"
            )
        try:
            program = Program.from_json(job.program_json)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamInputError(f"problem.program_json is not a valid program: {str(exc)[:200]}") from None
        if not program.steps:
            raise UpstreamInputError("problem.program_json is not a valid program: it has no steps")
        from lema.core.formats import render_solution

        answer = str(program.steps[-1].result)
        gold = render_solution([s.description for s in program.steps], answer)
        return SyntheticProblem(id="", family="", n_steps=len(program.steps), question=job.question,
                                answer=answer, program=program, gold_solution=gold)

    async def correct(self, job: CorrectionInput, prompt: CorrectionPrompt, sample_index: int,
                      timeout_s: float) -> UpstreamReply:
        from lema.core.reference_corrector import correct

        result = correct(self._problem(job), job.wrong_solution)
        if result.text is None:
            return UpstreamReply(text=f"No incorrect step: {result.reason}")
        return UpstreamReply(text=result.text)

    async def solve(self, job: CorrectionInput, n: int, timeout_s: float) -> list[UpstreamReply]:
        return [UpstreamReply(text=self._problem(job).gold_solution)]

    async def close(self) -> None:
        return None


class OpenAIUpstream:
    """A GPT-4-class hosted model, a vLLM server or lema's own endpoint, through the official client.

    The client's own retries are off: lema's proxy retries with backoff, honours Retry-After and keeps a
    circuit breaker, so that policy is visible and measured in one place. The API key is read from the
    environment and never logged.
    """

    deterministic = False

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 768,
                 temperature: float = 0.7):
        from openai import AsyncOpenAI

        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", max_retries=0)

    async def _chat(self, messages, n: int, temperature: float, timeout_s: float) -> list[UpstreamReply]:
        import openai

        try:
            response = await self.client.chat.completions.create(
                model=self.model, messages=messages, n=n, temperature=temperature, max_tokens=self.max_tokens,
                timeout=timeout_s,
            )
        except openai.RateLimitError as exc:
            raise RetryableError(f"upstream rate limit (429): {_short(exc)}", _retry_after(exc)) from exc
        except openai.InternalServerError as exc:
            raise RetryableError(f"upstream error ({exc.status_code}): {_short(exc)}", _retry_after(exc)) from exc
        except (openai.APITimeoutError, asyncio.TimeoutError) as exc:
            raise RetryableError(f"upstream timed out after {timeout_s:.0f}s") from exc
        except openai.APIConnectionError as exc:
            raise RetryableError(f"cannot reach the upstream: {_short(exc)}") from exc
        except openai.APIStatusError as exc:
            raise UpstreamFatalError(f"upstream refused the request ({exc.status_code}): {_short(exc)}") from exc
        except (ValueError, openai.APIResponseValidationError) as exc:  # malformed JSON / unexpected shape
            raise RetryableError(f"malformed upstream response: {_short(exc)}") from exc
        try:  # a 200 with HTML, or JSON without choices, parses into something else: retryable, like a 5xx
            choices = response.choices
            if not isinstance(choices, list) or not choices:
                raise TypeError("no choices")
            usage = response.usage
            per = len(choices)
            return [
                UpstreamReply(
                    text=_content(choice.message.content),
                    prompt_tokens=(usage.prompt_tokens if usage else 0) // per,
                    completion_tokens=(usage.completion_tokens if usage else 0) // per,
                )
                for choice in choices
            ]
        except (AttributeError, TypeError) as exc:
            raise RetryableError(f"malformed upstream response: {_short(exc)}") from None

    async def correct(self, job: CorrectionInput, prompt: CorrectionPrompt, sample_index: int,
                      timeout_s: float) -> UpstreamReply:
        sampled = self.temperature if job.temperature is None else job.temperature
        temperature = 0.0 if sample_index == 0 else sampled  # greedy first, then sample
        replies = await self._chat(prompt.messages(job.question, job.wrong_solution), 1, temperature, timeout_s)
        return replies[0] if replies else UpstreamReply(text="")

    async def solve(self, job: CorrectionInput, n: int, timeout_s: float) -> list[UpstreamReply]:
        messages = cot_messages(job.question)
        return await self._chat(messages, n, self.temperature, timeout_s)

    async def close(self) -> None:
        await self.client.close()


def _content(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"message content is {type(value).__name__}, not text")
    return value


def _short(exc: Exception) -> str:
    return str(exc)[:200]


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
