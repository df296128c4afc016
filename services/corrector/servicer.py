"""gRPC Corrector: correction-as-a-service and CoT augmentation over the proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from lema.core.concurrency import ordered_window
from lema.core.config import CorrectorConfig
from lema.core.errors import Unavailable
from lema.core.formats import split_steps
from lema.core.proto_convert import verdict_to_pb
from lema.core.resilience import CircuitOpenError, RetryableError
from lema.services.corrector.proxy import CorrectorProxy, Outcome, Status
from lema.services.corrector.upstreams import CorrectionInput, UpstreamFatalError, UpstreamInputError
from lema.services.corrector.validation import augmentation_job, batch_jobs, correction_job
from lema.v1 import common_pb2 as pb
from lema.v1 import corrector_pb2 as cpb
from lema.v1 import corrector_pb2_grpc

STATUS_TO_PB = {
    Status.ACCEPTED: cpb.CORRECTION_STATUS_ACCEPTED,
    Status.UNVERIFIED: cpb.CORRECTION_STATUS_UNVERIFIED,
    Status.REJECTED: cpb.CORRECTION_STATUS_REJECTED,
    Status.UNPARSEABLE: cpb.CORRECTION_STATUS_UNPARSEABLE,
    Status.UPSTREAM_ERROR: cpb.CORRECTION_STATUS_UPSTREAM_ERROR,
}


def outcome_to_pb(outcome: Outcome, problem_id: str, request_id: str, index: int) -> cpb.CorrectResponse:
    correction = pb.Correction(
        problem_id=problem_id,
        incorrect_step=outcome.incorrect_step,
        explanation=outcome.explanation,
        corrected_solution=outcome.corrected_solution,
        final_answer=outcome.final_answer,
        verified=outcome.verified,
        upstream_model=outcome.upstream_model,
        prompt_id=outcome.prompt_id,
        prompt_version=outcome.prompt_version,
        usage=pb.TokenUsage(prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                            total_tokens=outcome.prompt_tokens + outcome.completion_tokens),
        cost_usd=outcome.cost_usd,
        attempts=outcome.attempts,
        raw_output=outcome.raw_output,
        cached=outcome.cached,
    )
    if outcome.verdict is not None:
        correction.verdict.CopyFrom(verdict_to_pb(outcome.verdict))
    return cpb.CorrectResponse(id=request_id, index=index, status=STATUS_TO_PB[outcome.status],
                               correction=correction, failure_reason=outcome.failure_reason)


class CorrectorServicer(corrector_pb2_grpc.CorrectorServicer):
    def __init__(self, proxy: CorrectorProxy, config: CorrectorConfig):
        self.proxy = proxy
        self.config = config

    @staticmethod
    def _deadline(context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else time.monotonic() + remaining

    async def _correct_one(self, request: cpb.CorrectRequest, job: CorrectionInput, index: int,
                           deadline: float | None) -> cpb.CorrectResponse:
        """Upstream failures become a response with a reason (used by batches: nothing already done is lost)."""
        try:
            outcome = await self.proxy.correct(job, request.max_candidates or None, deadline)
        except (CircuitOpenError, RetryableError, UpstreamFatalError, UpstreamInputError, asyncio.TimeoutError) as exc:
            return cpb.CorrectResponse(id=request.id, index=index, status=cpb.CORRECTION_STATUS_UPSTREAM_ERROR,
                                       failure_reason=str(exc) or type(exc).__name__)
        return outcome_to_pb(outcome, request.problem.id, request.id, index)

    async def Correct(self, request: cpb.CorrectRequest, context) -> cpb.CorrectResponse:
        job = correction_job(request, self.config)
        try:
            outcome = await self.proxy.correct(job, request.max_candidates or None, self._deadline(context))
        except (RetryableError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"upstream failed after retries: {str(exc) or type(exc).__name__}") from None
        # Other errors carry their status (lema.core.errors): bad input, breaker open, a fatal upstream reply.
        return outcome_to_pb(outcome, request.problem.id, request.id, 0)

    async def CorrectBatch(self, request: cpb.CorrectBatchRequest, context) -> AsyncIterator[cpb.CorrectResponse]:
        jobs = batch_jobs(request, self.config)
        deadline = self._deadline(context)

        async def correct(index: int, job: CorrectionInput) -> cpb.CorrectResponse:
            return await self._correct_one(request.items[index], job, index, deadline)

        async for response in ordered_window(jobs, correct, window=2 * self.config.max_concurrency):
            yield response

    async def Augment(self, request: cpb.AugmentRequest, context) -> AsyncIterator[cpb.AugmentResponse]:
        problem = request.problem
        job, num_solutions = augmentation_job(request)
        try:
            kept = await self.proxy.augment(job, num_solutions, self._deadline(context))
        except asyncio.TimeoutError:
            raise Unavailable("upstream timed out") from None
        for index, (text, verdict, reply) in enumerate(kept):
            yield cpb.AugmentResponse(path=pb.ReasoningPath(
                problem_id=problem.id, sample_index=index, text=text, steps=split_steps(text),
                extracted_answer=verdict.extracted_answer,
                model=pb.ModelRef(model=self.proxy.upstream.model),
                usage=pb.TokenUsage(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                                    total_tokens=reply.prompt_tokens + reply.completion_tokens),
                verdict=verdict_to_pb(verdict),
            ))
