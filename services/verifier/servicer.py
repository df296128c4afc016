"""gRPC Verifier: validates requests, fans items out to the worker pool, streams verdicts in order."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from prometheus_client import Counter, Histogram

from lema.core.concurrency import ordered_window
from lema.core.config import VerifierConfig
from lema.core.errors import InvalidInput
from lema.core.proto_convert import verdict_to_pb
from lema.core.records import VerdictReason, VerifyItem
from lema.services.verifier.pool import VerifierPool
from lema.services.verifier.validation import batch_items, verify_item
from lema.v1 import verifier_pb2 as vpb
from lema.v1 import verifier_pb2_grpc

ITEMS = Counter("lema_verifier_items_total", "Items verified", ["kind", "reason"])
ITEM_SECONDS = Histogram(
    "lema_verifier_item_seconds", "Time to verify one item", buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60)
)
REJECTED = Counter("lema_verifier_invalid_requests_total", "Requests rejected with INVALID_ARGUMENT")


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, pool: VerifierPool, config: VerifierConfig):
        self.pool = pool
        self.config = config

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
        item = self._checked(verify_item, request)
        verdict = await self._verify(item, context)
        return vpb.VerifyResponse(id=request.id, index=0, verdict=verdict)

    def _checked(self, validate, request):
        try:
            return validate(request, self.config)
        except InvalidInput:
            REJECTED.inc()
            raise  # the server's ErrorInterceptor answers INVALID_ARGUMENT with the message

    async def VerifyBatch(
        self, request: vpb.VerifyBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vpb.VerifyResponse]:
        items = self._checked(batch_items, request)

        async def verify(index: int, item: VerifyItem) -> vpb.VerifyResponse:
            return vpb.VerifyResponse(id=request.items[index].id, index=index, verdict=await self._verify(item, context))

        async for response in ordered_window(items, verify, window=2 * self.pool.size):
            yield response
