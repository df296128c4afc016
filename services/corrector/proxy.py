"""The corrector proxy: prompt, upstream call (deadline, retries, breaker, bounded concurrency), parse, verify, cache.

Transport-free, so the gRPC servicer, the collector (in-process) and tests share exactly one implementation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from enum import Enum

from cachetools import TTLCache
from prometheus_client import Counter, Histogram

from lema.core.config import CorrectorConfig
from lema.core.correction_parser import ParsedCorrection, ParseFailure, parse_correction
from lema.core.formats import split_steps
from lema.core.prompts import prompt_for
from lema.core.records import Verdict, VerifyItem
from lema.core.resilience import CircuitBreaker, RetryableError, RetryPolicy, call_with_retries
from lema.services.corrector.upstreams import CorrectionInput, Upstream, UpstreamReply
from lema.services.verifier import Verifier

CALLS = Counter("lema_corrector_upstream_calls_total", "Upstream calls", ["model", "outcome"])
TOKENS = Counter("lema_corrector_tokens_total", "Upstream tokens", ["model", "type"])
COST = Counter("lema_corrector_cost_usd_total", "Upstream cost in USD", ["model"])
OUTCOMES = Counter("lema_corrector_corrections_total", "Corrections by status", ["status"])
CACHE = Counter("lema_corrector_cache_total", "Cache lookups", ["result"])
LATENCY = Histogram("lema_corrector_upstream_seconds", "Upstream call latency", buckets=(0.01, 0.1, 0.5, 1, 5, 20, 60))


class Status(str, Enum):
    ACCEPTED = "accepted"
    UNVERIFIED = "unverified"
    REJECTED = "rejected"
    UNPARSEABLE = "unparseable"
    UPSTREAM_ERROR = "upstream_error"


CACHED_STATUSES = frozenset({Status.ACCEPTED, Status.UNVERIFIED})


@dataclass(frozen=True)
class Outcome:
    status: Status
    incorrect_step: int = 0
    explanation: str = ""
    corrected_solution: str = ""
    final_answer: str = ""
    verified: bool = False
    verdict: Verdict | None = None
    upstream_model: str = ""
    prompt_id: str = ""
    prompt_version: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    raw_output: str = ""
    failure_reason: str = ""
    cached: bool = False
    reasons: list[str] = field(default_factory=list)


class CorrectorProxy:
    def __init__(self, upstream: Upstream, config: CorrectorConfig, verifier: Verifier):
        self.upstream = upstream
        self.config = config
        self.verifier = verifier
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown_s)
        self.retry = RetryPolicy(max_attempts=config.max_retries + 1)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        # A TTL-bounded LRU (cachetools): entries expire, so a corrector that improved (or a prompt fixed without a
        # version bump) is asked again within cache_ttl_s.
        self._cache: TTLCache | None = TTLCache(config.cache_entries, config.cache_ttl_s) if config.cache_entries \
            else None

    # -- cache -------------------------------------------------------------------------------------
    def cache_key(self, job: CorrectionInput, max_candidates: int) -> str:
        prompt = prompt_for(job.kind)
        payload = [prompt.version, self.upstream.model, job.kind.value, job.question, job.wrong_solution,
                   job.gold_answer, job.program_json, max_candidates, job.temperature]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def _cache_get(self, key: str) -> Outcome | None:
        hit = self._cache.get(key) if self._cache is not None else None
        CACHE.labels(result="hit" if hit else "miss").inc()
        return hit

    def _cache_put(self, key: str, outcome: Outcome) -> None:
        # Only answers worth repeating: a rejected or unparseable correction was a draw from a sampling upstream,
        # and asking again may give an accepted one (an upstream error is never final either).
        if self._cache is not None and outcome.status in CACHED_STATUSES:
            self._cache[key] = outcome

    # -- one upstream call -------------------------------------------------------------------------
    async def _call(self, job: CorrectionInput, sample_index: int, deadline: float | None) -> UpstreamReply:
        prompt = prompt_for(job.kind)
        model = self.upstream.model

        async def attempt() -> UpstreamReply:
            remaining = self.config.request_timeout_s
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
                if remaining <= 0:
                    raise asyncio.TimeoutError("deadline reached before the upstream call")
            started = time.perf_counter()
            async with self._slots:  # bounded concurrency toward the upstream
                try:
                    reply = await asyncio.wait_for(
                        self.upstream.correct(job, prompt, sample_index, remaining), timeout=remaining + 1
                    )
                except asyncio.TimeoutError as exc:
                    raise RetryableError(f"upstream timed out after {remaining:.0f}s") from exc
            LATENCY.observe(time.perf_counter() - started)
            return reply

        try:
            reply = await call_with_retries(
                attempt, self.retry, self.breaker, deadline,
                on_retry=lambda n, exc: CALLS.labels(model=model, outcome="retry").inc(),
            )
        except Exception:
            CALLS.labels(model=model, outcome="error").inc()
            raise
        CALLS.labels(model=model, outcome="ok").inc()
        TOKENS.labels(model=model, type="prompt").inc(reply.prompt_tokens)
        TOKENS.labels(model=model, type="completion").inc(reply.completion_tokens)
        return reply

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        c = self.config
        return (prompt_tokens * c.usd_per_million_prompt_tokens
                + completion_tokens * c.usd_per_million_completion_tokens) / 1e6

    async def verify_answer(self, job: CorrectionInput, answer: str) -> Verdict:
        return await self.verifier.verify(VerifyItem(job.kind, job.gold_answer, answer, candidate_is_answer=True))

    # -- a correction ------------------------------------------------------------------------------
    async def correct(self, job: CorrectionInput, max_candidates: int | None = None,
                      deadline: float | None = None) -> Outcome:
        """Raises CircuitOpenError / RetryableError / UpstreamFatalError / UpstreamInputError on upstream failure."""
        k = max_candidates or self.config.max_candidates
        if self.upstream.deterministic or not job.gold_answer:
            k = 1  # nothing to gain from asking again
        key = self.cache_key(job, k)
        hit = self._cache_get(key)
        if hit is not None:
            OUTCOMES.labels(status=hit.status.value).inc()
            return replace(hit, cached=True, prompt_tokens=0, completion_tokens=0, cost_usd=0.0)

        prompt = prompt_for(job.kind)
        n_steps = len(split_steps(job.wrong_solution))
        base = dict(upstream_model=self.upstream.model, prompt_id=prompt.id, prompt_version=prompt.version)
        prompt_tokens = completion_tokens = 0
        reasons: list[str] = []
        best: tuple[ParsedCorrection, Verdict | None, str] | None = None
        attempts = 0
        for index in range(k):
            attempts += 1
            reply = await self._call(job, index, deadline)
            prompt_tokens += reply.prompt_tokens
            completion_tokens += reply.completion_tokens
            parsed = parse_correction(reply.text, job.kind, n_steps)
            if isinstance(parsed, ParseFailure):
                reasons.append(f"candidate {index + 1}: unparseable: {parsed.reason}")
                continue
            if not job.gold_answer:
                best = (parsed, None, reply.text)
                break
            verdict = await self.verify_answer(job, parsed.final_answer)
            best = (parsed, verdict, reply.text)
            if verdict.correct:
                break
            reasons.append(f"candidate {index + 1}: the verifier rejected the answer {parsed.final_answer!r} "
                           f"({verdict.reason.value})")

        cost = self._cost(prompt_tokens, completion_tokens)
        COST.labels(model=self.upstream.model).inc(cost)
        usage = dict(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost,
                     attempts=attempts, reasons=reasons)
        if best is None:
            outcome = Outcome(Status.UNPARSEABLE, failure_reason="; ".join(reasons), **base, **usage)
        else:
            parsed, verdict, raw = best
            if verdict is None:
                status = Status.UNVERIFIED
            else:
                status = Status.ACCEPTED if verdict.correct else Status.REJECTED
            outcome = Outcome(
                status,
                incorrect_step=parsed.incorrect_step,
                explanation=parsed.explanation,
                corrected_solution=parsed.corrected_solution,
                final_answer=parsed.final_answer,
                verified=bool(verdict and verdict.correct),
                verdict=verdict,
                raw_output=raw,
                failure_reason="; ".join(reasons) if status is Status.REJECTED else "",
                **base,
                **usage,
            )
        OUTCOMES.labels(status=outcome.status.value).inc()
        self._cache_put(key, outcome)
        return outcome

    # -- CoT augmentation ----------------------------------------------------------------------------
    async def augment(self, job: CorrectionInput, n: int, deadline: float | None = None) -> list[tuple[str, Verdict, UpstreamReply]]:
        """Extra solutions from the upstream, kept only when the verifier accepts them."""
        async def attempt():
            remaining = self.config.request_timeout_s if deadline is None else min(
                self.config.request_timeout_s, deadline - time.monotonic())
            async with self._slots:
                return await self.upstream.solve(job, n, remaining)

        replies = await call_with_retries(attempt, self.retry, self.breaker, deadline)
        kept = []
        for reply in replies:
            verdict = await self.verifier.verify(VerifyItem(job.kind, job.gold_answer, reply.text))
            if verdict.correct:
                kept.append((reply.text, verdict, reply))
        return kept
