"""gRPC Corrector: correction-as-a-service and CoT augmentation over the proxy."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc
from lema.services.corrector.proxy import CorrectorProxy, Outcome, Status
from lema.services.corrector.upstreams import CorrectionInput, UpstreamFatalError, UpstreamInputError

from lema.core.config import CorrectorConfig
from lema.core.formats import split_steps
from lema.core.grpc_server import invalid_argument
from lema.core.proto_convert import kind_from_pb, verdict_to_pb
from lema.core.resilience import CircuitOpenError, RetryableError
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

    def _job(self, request: cpb.CorrectRequest, where: str = "") -> tuple[CorrectionInput | None, str]:
        c = self.config
        problem = request.problem
        kind = kind_from_pb(problem.kind)
        if kind is None:
            return None, f"{where}problem.kind must be gsm8k (1), math (2) or synthetic (3); got {problem.kind}"
        if not problem.question.strip():
            return None, f"{where}problem.question is empty"
        if len(problem.question) > c.max_question_chars:
            return None, f"{where}problem.question has {len(problem.question)} characters; the limit is {c.max_question_chars}"
        if not request.wrong_solution.strip():
            return None, f"{where}wrong_solution is empty"
        if len(request.wrong_solution) > c.max_solution_chars:
            return None, (f"{where}wrong_solution has {len(request.wrong_solution)} characters; the limit is "
                          f"{c.max_solution_chars}")
        if not split_steps(request.wrong_solution):
            return None, f"{where}wrong_solution has no steps"
        if request.max_candidates < 0 or request.max_candidates > 16:
            return None, f"{where}max_candidates must be in 0..16 (got {request.max_candidates})"
        return CorrectionInput(kind, problem.question, request.wrong_solution, problem.gold_answer,
                               problem.program_json), ""

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
        job, error = self._job(request)
        if job is None:
            await invalid_argument(context, error)
        try:
            outcome = await self.proxy.correct(job, request.max_candidates or None, self._deadline(context))
        except UpstreamInputError as exc:
            await invalid_argument(context, str(exc))
        except CircuitOpenError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (RetryableError, asyncio.TimeoutError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream failed after retries: {exc}")
        except UpstreamFatalError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return outcome_to_pb(outcome, request.problem.id, request.id, 0)

    async def CorrectBatch(self, request: cpb.CorrectBatchRequest, context) -> AsyncIterator[cpb.CorrectResponse]:
        if not request.items:
            await invalid_argument(context, "items is empty")
        if len(request.items) > self.config.max_batch_items:
            await invalid_argument(context, f"batch has {len(request.items)} items; the limit is {self.config.max_batch_items}")
        jobs = []
        for i, item in enumerate(request.items):
            job, error = self._job(item, where=f"items[{i}]: ")
            if job is None:
                await invalid_argument(context, error)
            jobs.append(job)
        deadline = self._deadline(context)
        window = 2 * self.config.max_concurrency
        pending: deque[asyncio.Task] = deque()
        next_index = 0
        try:
            for _ in range(len(jobs)):
                while next_index < len(jobs) and len(pending) < window:
                    pending.append(asyncio.ensure_future(
                        self._correct_one(request.items[next_index], jobs[next_index], next_index, deadline)))
                    next_index += 1
                yield await pending.popleft()
        finally:
            for task in pending:
                task.cancel()

    async def Augment(self, request: cpb.AugmentRequest, context) -> AsyncIterator[cpb.AugmentResponse]:
        problem = request.problem
        kind = kind_from_pb(problem.kind)
        if kind is None:
            await invalid_argument(context, "problem.kind must be gsm8k (1), math (2) or synthetic (3)")
        if not problem.question.strip() or not problem.gold_answer.strip():
            await invalid_argument(context, "problem.question and problem.gold_answer are required for augmentation")
        if not 1 <= request.num_solutions <= 16:
            await invalid_argument(context, f"num_solutions must be in 1..16 (got {request.num_solutions})")
        job = CorrectionInput(kind, problem.question, "", problem.gold_answer, problem.program_json)
        try:
            kept = await self.proxy.augment(job, request.num_solutions, self._deadline(context))
        except UpstreamInputError as exc:
            await invalid_argument(context, str(exc))
        except (CircuitOpenError, RetryableError, asyncio.TimeoutError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        for index, (text, verdict, reply) in enumerate(kept):
            yield cpb.AugmentResponse(path=pb.ReasoningPath(
                problem_id=problem.id, sample_index=index, text=text, steps=split_steps(text),
                extracted_answer=verdict.extracted_answer,
                model=pb.ModelRef(model=self.proxy.upstream.model),
                usage=pb.TokenUsage(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                                    total_tokens=reply.prompt_tokens + reply.completion_tokens),
                verdict=verdict_to_pb(verdict),
            ))
