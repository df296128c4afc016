"""The corrector: one interface, two implementations, one factory.

- `LocalCorrector`: the corrector proxy in this process (the reference corrector or an OpenAI-compatible
  upstream), its corrections checked by a verifier;
- `RemoteCorrector`: the corrector service (`lema serve corrector`) over gRPC.

Both answer `correct(problem, attempt)` with a `CorrectionResult`: a status the store keeps ("accepted",
"unverified", "rejected", "unparseable", "upstream_error") and the correction's fields, or "deferred" for a
transient failure (nothing stored: a later run asks again). `tag` names the corrector in correction keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from lema.core.answers import DatasetKind
from lema.core.prompts import PROMPTS
from lema.core.proto_convert import KIND_TO_PB, verdict_from_pb
from lema.core.security import open_aio_channel
from lema.services.verifier import Verifier

LOCAL = "local"


@dataclass(frozen=True)
class CorrectionResult:
    status: str
    fields: dict  # the store's correction columns
    cached: bool = False  # answered from the corrector's cache: no upstream call, nothing spent


@dataclass(frozen=True)
class CorrectionOptions:
    """Per-request choices a caller may make (the HTTP API's `max_candidates` and `sampling`); None: the corrector
    section's defaults."""

    max_candidates: int | None = None
    temperature: float | None = None  # of the 2nd..k-th candidates (the first is greedy)


class Corrector(Protocol):
    tag: str

    async def correct(self, problem: Any, attempt: Any,
                      options: CorrectionOptions | None = None) -> CorrectionResult: ...

    async def close(self) -> None: ...


class LocalCorrector:
    """The corrector proxy in this process: the reference corrector, or an OpenAI-compatible upstream at `url`."""

    def __init__(self, verifier: Verifier, url: str | None = None, model: str = "gpt-4"):
        from lema.core.config import load_config
        from lema.services.corrector.proxy import CorrectorProxy
        from lema.services.corrector.upstreams import OpenAIUpstream, ReferenceUpstream

        # The corrector section's bounds (timeouts, retries, concurrency, cache, limits); the upstream as asked.
        config = load_config().corrector.model_copy(
            update={"upstream": "openai", "base_url": url, "model": model} if url else {"upstream": "reference"})
        upstream = OpenAIUpstream(url, model, config.api_key_env, config.max_tokens, config.temperature) if url \
            else ReferenceUpstream()
        self.proxy = CorrectorProxy(upstream, config, verifier)
        versions = sorted(f"{p.id}:{p.version}" for p in PROMPTS.values())
        self.tag = "c" + hashlib.sha256(json.dumps([self.proxy.upstream.model, versions]).encode()).hexdigest()[:10]

    async def correct(self, problem: Any, attempt: Any,
                      options: CorrectionOptions | None = None) -> CorrectionResult:
        from lema.core.resilience import CircuitOpenError, RetryableError
        from lema.services.corrector.upstreams import CorrectionInput, UpstreamFatalError, UpstreamInputError

        options = options or CorrectionOptions()
        job = CorrectionInput(DatasetKind(problem.kind), problem.question, attempt.text, problem.gold_answer,
                              problem.program_json or "", temperature=options.temperature)
        try:
            o = await self.proxy.correct(job, options.max_candidates)
        except (UpstreamInputError, UpstreamFatalError) as exc:
            return CorrectionResult("upstream_error", dict(failure_reason=str(exc), upstream_model=self.proxy.upstream.model))
        except (CircuitOpenError, RetryableError, asyncio.TimeoutError):
            return CorrectionResult("deferred", {})  # transient: not stored, a later run retries it
        return CorrectionResult(o.status.value, dict(
            upstream_model=o.upstream_model, prompt_id=o.prompt_id, prompt_version=o.prompt_version,
            incorrect_step=o.incorrect_step, explanation=o.explanation, corrected_solution=o.corrected_solution,
            final_answer=o.final_answer, verified=o.verified,
            verdict=o.verdict.model_dump(mode="json") if o.verdict else None, failure_reason=o.failure_reason,
            prompt_tokens=o.prompt_tokens, completion_tokens=o.completion_tokens, cost_usd=o.cost_usd), o.cached)

    async def close(self) -> None:
        await self.proxy.upstream.close()


class RemoteCorrector:
    """The corrector service (`lema serve corrector`) over gRPC."""

    STATUS = {1: "accepted", 2: "unverified", 3: "rejected", 4: "unparseable", 5: "upstream_error"}

    def __init__(self, address: str, timeout_s: float):
        from lema.v1 import corrector_pb2_grpc

        self.channel = open_aio_channel(address)
        self.stub = corrector_pb2_grpc.CorrectorStub(self.channel)
        self.timeout_s = timeout_s
        self.tag = "c" + hashlib.sha256(address.encode()).hexdigest()[:10]

    async def correct(self, problem: Any, attempt: Any,
                      options: CorrectionOptions | None = None) -> CorrectionResult:
        from lema.v1 import common_pb2 as pb
        from lema.v1 import corrector_pb2

        options = options or CorrectionOptions()
        request = corrector_pb2.CorrectRequest(
            problem=pb.Problem(id=problem.id, kind=KIND_TO_PB[DatasetKind(problem.kind)], question=problem.question,
                               gold_answer=problem.gold_answer, program_json=problem.program_json or ""),
            wrong_solution=attempt.text, id=attempt.id, max_candidates=options.max_candidates or 0)
        if options.temperature is not None:
            request.sampling.temperature = options.temperature
        try:
            r = await self.stub.Correct(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return CorrectionResult("deferred", {})  # transient: not stored, so a later run retries it
            return CorrectionResult("upstream_error", dict(failure_reason=f"{exc.code().name}: {exc.details()}"))
        c = r.correction
        return CorrectionResult(self.STATUS.get(r.status, "upstream_error"), dict(
            upstream_model=c.upstream_model, prompt_id=c.prompt_id, prompt_version=c.prompt_version,
            incorrect_step=c.incorrect_step, explanation=c.explanation, corrected_solution=c.corrected_solution,
            final_answer=c.final_answer, verified=c.verified,
            verdict=verdict_from_pb(c.verdict).model_dump(mode="json") if c.HasField("verdict") else None,
            failure_reason=r.failure_reason, prompt_tokens=c.usage.prompt_tokens,
            completion_tokens=c.usage.completion_tokens, cost_usd=c.cost_usd), c.cached)

    async def close(self) -> None:
        await self.channel.close()



def open_corrector(target: str | None, *, verifier: Verifier, url: str | None = None, model: str = "gpt-4",
                   timeout_s: float = 600.0) -> Corrector:
    """The corrector at `target` (a gRPC address), or the proxy in this process for None or "local"."""
    if target and target.strip() != LOCAL:
        return RemoteCorrector(target.strip(), timeout_s)
    return LocalCorrector(verifier, url, model)
