"""The verifier: one interface, two implementations, one factory.

    verifier = open_verifier(config)           # config.client.verifier: "local" or the service's gRPC target
    await verifier.start()
    verdict = await verifier.verify(VerifyItem(kind, gold, candidate))
    await verifier.close()

- `VerifierPool` (pool.py): in this process's worker processes, with a hard time limit per item;
- `RemoteVerifier`: the verifier service (`lema serve verifier`) over gRPC, through lema's channels (token, TLS,
  round_robin over replicas, retries on UNAVAILABLE).

Both keep one contract: `verify` never raises for bad input (it answers a verdict saying what is wrong) and answers
within the item's time limit; a verifier that cannot be reached raises `VerifierUnavailable` (a ConnectionError:
callers treat it as transient and retry the work later). Every consumer (the reasoner, the corrector, the
collector, training evaluation, the demo, `lema verify`) gets its verifier from `open_verifier`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import grpc

from lema.core.errors import Unavailable
from lema.core.records import Verdict, VerdictReason, VerifyItem

if TYPE_CHECKING:
    from lema.core.config import ClientConfig, LemaConfig

LOCAL = "local"
TRANSPORT_SLACK_S = 5.0  # beyond the item's limit: the service answers a timeout verdict itself before this


class VerifierUnavailable(Unavailable):
    """The verifier service could not answer (down, overloaded, past the deadline)."""


class Verifier(Protocol):
    async def start(self) -> None: ...

    async def verify(self, item: VerifyItem, timeout_s: float | None = None) -> Verdict: ...

    async def close(self) -> None: ...


class RemoteVerifier:
    """The verifier service over gRPC, behind the same interface as the in-process pool."""

    def __init__(self, target: str, item_timeout_s: float = 5.0, client: ClientConfig | None = None):
        self.target = target
        self.item_timeout_s = item_timeout_s
        self.client = client
        self._channel: grpc.aio.Channel | None = None
        self._stub = None

    async def start(self) -> None:
        from lema.core.security import open_aio_channel
        from lema.v1 import verifier_pb2_grpc

        self._channel = open_aio_channel(self.target, self.client)
        self._stub = verifier_pb2_grpc.VerifierStub(self._channel)

    async def verify(self, item: VerifyItem, timeout_s: float | None = None) -> Verdict:
        from lema.core.proto_convert import KIND_TO_PB, verdict_from_pb
        from lema.v1 import verifier_pb2

        if self._stub is None:
            raise RuntimeError("the remote verifier is not started")
        limit = self.item_timeout_s if timeout_s is None else min(timeout_s, self.item_timeout_s)
        request = verifier_pb2.VerifyRequest(kind=KIND_TO_PB[item.kind], gold_answer=item.gold,
                                             candidate=item.candidate, candidate_is_answer=item.candidate_is_answer,
                                             id=item.id)
        try:
            # The service bounds the item by the call's deadline (its own limit too) and answers a timeout verdict.
            reply = await self._stub.Verify(request, timeout=limit + TRANSPORT_SLACK_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # bad input is a verdict, as in the pool
                return Verdict(correct=False, reason=VerdictReason.PARSE_ERROR, detail=(exc.details() or "")[:500])
            raise VerifierUnavailable(f"verifier at {self.target}: {exc.code().name}: "
                                      f"{(exc.details() or '')[:300]}") from None
        return verdict_from_pb(reply.verdict)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def open_verifier(config: LemaConfig | None = None, target: str | None = None) -> Verifier:
    """The verifier a consumer uses: `target` (or `config.client.verifier`), "local" for worker processes here with
    the `verifier` section's workers and item time limit, else the service at that gRPC target."""
    from lema.core.config import load_config

    config = config or load_config()
    target = (target or config.client.verifier).strip()
    if target == LOCAL:
        from lema.services.verifier.pool import VerifierPool

        return VerifierPool(workers=config.verifier.workers, item_timeout_s=config.verifier.item_timeout_s)
    return RemoteVerifier(target, config.verifier.item_timeout_s, config.client)


__all__ = ["LOCAL", "RemoteVerifier", "Verifier", "VerifierUnavailable", "VerifyItem", "open_verifier"]
