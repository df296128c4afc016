"""gRPC Verifier: validates requests, fans items out to the worker pool, streams verdicts in order."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc
from lema.services.verifier.pool import VerifierPool
from prometheus_client import Counter, Histogram

from lema.core.config import VerifierConfig
from lema.core.grpc_server import invalid_argument
from lema.core.proto_convert import kind_from_pb, verdict_to_pb
from lema.core.records import VerdictReason, VerifyItem
from lema.v1 import verifier_pb2 as vpb
from lema.v1 import verifier_pb2_grpc

ITEMS = Counter("lema_verifier_items_total", "Items verified", ["kind", "reason"])
ITEM_SECONDS = Histogram(
    "lema_verifier_item_seconds", "Time to verify one item", buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60)
)
REJECTED = Counter("lema_verifier_invalid_requests_total", "Requests rejected with INVALID_ARGUMENT")

_KINDS = "gsm8k (1), math (2) or synthetic (3)"


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, pool: VerifierPool, config: VerifierConfig):
        self.pool = pool
        self.config = config

    def _validate(self, request: vpb.VerifyRequest, where: str = "") -> tuple[VerifyItem | None, str]:
        kind = kind_from_pb(request.kind)
        if kind is None:
            return None, f"{where}kind must be {_KINDS}; got {request.kind}"
        if not request.gold_answer.strip():
            return None, f"{where}gold_answer is empty"
        if not request.candidate.strip():
            return None, f"{where}candidate is empty"
        if len(request.gold_answer) > self.config.max_gold_chars:
            return None, (
                f"{where}gold_answer has {len(request.gold_answer)} characters; the limit is "
                f"{self.config.max_gold_chars}"
            )
        if len(request.candidate) > self.config.max_candidate_chars:
            return None, (
                f"{where}candidate has {len(request.candidate)} characters; the limit is "
                f"{self.config.max_candidate_chars}"
            )
        return VerifyItem(kind, request.gold_answer, request.candidate, request.candidate_is_answer), ""

    async def _verify(self, item: VerifyItem, context: grpc.aio.ServicerContext) -> vpb.VerifyResponse:
        remaining = context.time_remaining()
        started = time.perf_counter()
        verdict = await self.pool.verify(item, timeout_s=remaining)
        ITEM_SECONDS.observe(time.perf_counter() - started)
        ITEMS.labels(kind=item.kind.value, reason=verdict.reason.value).inc()
        if verdict.reason == VerdictReason.TIMEOUT and remaining is not None and remaining < self.pool.item_timeout_s:
            # The caller's deadline, not the item limit, stopped the work: the deadline has passed, so say so
            # instead of racing a verdict against it (the caller would get either, depending on timing).
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed during verification")
        return verdict_to_pb(verdict)

    async def Verify(self, request: vpb.VerifyRequest, context: grpc.aio.ServicerContext) -> vpb.VerifyResponse:
        item, error = self._validate(request)
        if item is None:
            REJECTED.inc()
            await invalid_argument(context, error)
        verdict = await self._verify(item, context)
        return vpb.VerifyResponse(id=request.id, index=0, verdict=verdict)

    async def VerifyBatch(
        self, request: vpb.VerifyBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vpb.VerifyResponse]:
        if not request.items:
            REJECTED.inc()
            await invalid_argument(context, "items is empty")
        if len(request.items) > self.config.max_batch_items:
            REJECTED.inc()
            await invalid_argument(
                context, f"batch has {len(request.items)} items; the limit is {self.config.max_batch_items}"
            )
        # Validate everything first: a bad item rejects the batch before any work starts.
        items: list[VerifyItem] = []
        for i, message in enumerate(request.items):
            item, error = self._validate(message, where=f"items[{i}]: ")
            if item is None:
                REJECTED.inc()
                await invalid_argument(context, error)
            items.append(item)

        # A sliding window keeps every worker busy while responses leave in request order; the window
        # bounds memory, and a slow client (backpressure on `yield`) pauses new work.
        window = 2 * self.pool.size
        pending: deque[asyncio.Task[vpb.Verdict]] = deque()
        next_index = 0
        try:
            for index in range(len(items)):
                while next_index < len(items) and len(pending) < window:
                    pending.append(asyncio.ensure_future(self._verify(items[next_index], context)))
                    next_index += 1
                verdict = await pending.popleft()
                yield vpb.VerifyResponse(id=request.items[index].id, index=index, verdict=verdict)
        finally:
            for task in pending:  # client cancelled or deadline passed: stop the rest
                task.cancel()
