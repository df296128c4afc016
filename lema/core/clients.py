"""Typed clients for lema's gRPC services. Every call carries a deadline."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lema.core.config import ClientConfig
from lema.core.proto_convert import KIND_TO_PB, verdict_from_pb
from lema.core.records import Verdict, VerifyItem
from lema.core.security import open_channel
from lema.v1 import collector_pb2, collector_pb2_grpc, common_pb2, verifier_pb2, verifier_pb2_grpc


def health_status(address: str, service: str = "", timeout: float = 2.0, config: ClientConfig | None = None) -> str:
    """SERVING / NOT_SERVING / UNKNOWN / UNREACHABLE, for status displays and readiness waits."""
    try:
        with open_channel(address, config) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


class VerifierClient:
    def __init__(self, address: str, timeout_s: float = 30.0, config: ClientConfig | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self._channel = open_channel(address, config)
        self._stub = verifier_pb2_grpc.VerifierStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VerifierClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _request(job: VerifyItem) -> verifier_pb2.VerifyRequest:
        return verifier_pb2.VerifyRequest(
            kind=KIND_TO_PB[job.kind],
            gold_answer=job.gold,
            candidate=job.candidate,
            candidate_is_answer=job.candidate_is_answer,
            id=job.id,
        )

    def verify(self, job: VerifyItem) -> Verdict:
        return verdict_from_pb(self._stub.Verify(self._request(job), timeout=self.timeout_s).verdict)

    def verify_batch(self, jobs: Iterable[VerifyItem], batch_timeout_s: float = 600.0) -> Iterator[Verdict]:
        """Verdicts in job order (streamed as they are ready)."""
        request = verifier_pb2.VerifyBatchRequest(items=[self._request(j) for j in jobs])
        for response in self._stub.VerifyBatch(request, timeout=batch_timeout_s):
            yield verdict_from_pb(response.verdict)


@dataclass(frozen=True)
class IntakeResult:
    """What `CollectorClient.add_problems` did: counts, (index, reason) per rejected problem, the valid ids."""

    valid: int
    added: int
    queued: int
    rejected: list[tuple[int, str]] = field(default_factory=list)
    problem_ids: list[str] = field(default_factory=list)


class CollectorClient:
    """The collector's intake (`lema serve collector`): queue problems for `lema collect --follow`, read counts."""

    def __init__(self, address: str, timeout_s: float = 60.0, config: ClientConfig | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self._channel = open_channel(address, config)
        self._stub = collector_pb2_grpc.CollectorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_problems(self, problems: Iterable[common_pb2.Problem]) -> IntakeResult:
        """Store and queue the valid problems (one transaction); invalid ones come back with their reasons."""
        response = self._stub.AddProblems(collector_pb2.AddProblemsRequest(problems=list(problems)),
                                          timeout=self.timeout_s)
        return IntakeResult(valid=response.valid, added=response.added, queued=response.queued,
                            rejected=[(r.index, r.reason) for r in response.rejected],
                            problem_ids=list(response.problem_ids))

    def stats(self) -> dict[str, int]:
        """The store's counts: problems, attempts, mistakes, corrections, accepted corrections, intake."""
        reply = self._stub.GetStats(collector_pb2.GetStatsRequest(), timeout=self.timeout_s)
        return {f.name: getattr(reply, f.name) for f in reply.DESCRIPTOR.fields}
