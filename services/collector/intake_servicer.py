"""gRPC Collector: problems into the intake table (validated like `lema problems add`), and the store's counts.

Each item is checked exactly like one JSONL line of `lema problems add` (`repo.validate_problem`): invalid items
are reported by index with a reason naming the field and the valid ones are kept. The valid items are stored and
queued in one transaction, insert-or-ignore on their keys, so a request sent again adds and queues nothing.
Store work is blocking SQLAlchemy and runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from lema.core.config import CollectorConfig
from lema.core.errors import InvalidInput, Unavailable
from lema.core.proto_convert import kind_from_pb
from lema.core.store import repository as repo
from lema.core.store.repository import ProblemIn
from lema.v1 import collector_pb2 as cpb
from lema.v1 import collector_pb2_grpc
from lema.v1 import common_pb2 as pb

log = logging.getLogger(__name__)

ITEMS = Counter("lema_collector_intake_items_total", "Problems received over gRPC", ["outcome"])
REJECTED = Counter("lema_collector_invalid_requests_total", "Requests rejected with INVALID_ARGUMENT")

_KINDS = "DATASET_KIND_GSM8K (1), DATASET_KIND_MATH (2) or DATASET_KIND_SYNTHETIC (3)"


def _kind_name(value: int) -> str:
    try:
        return f"{pb.DatasetKind.Name(value)} ({value})"
    except ValueError:
        return f"unknown value {value}"


def problem_from_pb(message: pb.Problem) -> tuple[ProblemIn | None, str]:
    """A wire Problem as `lema problems add` would read it: the problem, or why it is rejected (naming the field).

    proto3 cannot tell an unset string from an empty one, so empty optional fields (id, source, program_json) take
    the JSONL defaults; empty required ones (question, gold_answer) are rejected as an empty JSONL value would be.
    """
    kind = kind_from_pb(message.kind)
    if kind is None:
        return None, f"kind: must be {_KINDS}; got {_kind_name(message.kind)}"
    data: dict[str, Any] = {"kind": kind.value, "question": message.question, "gold_answer": message.gold_answer}
    if message.id:
        data["id"] = message.id
    if message.source:
        data["source"] = message.source
    if message.program_json:
        data["program_json"] = message.program_json
    if message.metadata:
        data["meta"] = dict(message.metadata)
    return repo.validate_problem(data)


class CollectorServicer(collector_pb2_grpc.CollectorServicer):
    def __init__(self, sessions: sessionmaker[Session], config: CollectorConfig):
        self.sessions = sessions
        self.config = config

    def _add(self, items) -> cpb.AddProblemsResponse:
        """Validate, then store and queue the valid problems in one transaction (runs in a worker thread)."""
        valid: list[ProblemIn] = []
        rejected: list[cpb.Rejected] = []
        for index, item in enumerate(items):
            problem, reason = problem_from_pb(item)
            if problem is None:
                rejected.append(cpb.Rejected(index=index, reason=reason))
            else:
                valid.append(problem)
        added = queued = 0
        if valid:
            with self.sessions.begin() as session:
                added, queued = repo.intake_problems(session, valid)
        ITEMS.labels(outcome="valid").inc(len(valid))
        ITEMS.labels(outcome="rejected").inc(len(rejected))
        ITEMS.labels(outcome="added").inc(added)
        return cpb.AddProblemsResponse(valid=len(valid), added=added, queued=queued, rejected=rejected,
                                       problem_ids=[p.key() for p in valid])

    def _counts(self) -> cpb.CollectorStats:
        with self.sessions() as session:
            counts = repo.counts(session)
        fields = cpb.CollectorStats.DESCRIPTOR.fields_by_name
        return cpb.CollectorStats(**{name: value for name, value in counts.items() if name in fields})

    @staticmethod
    def _store_unavailable(exc: SQLAlchemyError) -> Unavailable:
        log.exception("store error")
        return Unavailable(f"the store is unavailable: {type(exc).__name__}")  # no URL, no password

    async def AddProblems(
        self, request: cpb.AddProblemsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.AddProblemsResponse:
        count = len(request.problems)
        if count == 0 or count > self.config.max_items_per_request:
            REJECTED.inc()
            raise InvalidInput("problems is empty: send at least one problem" if count == 0 else
                               f"request has {count} problems; the limit is {self.config.max_items_per_request} "
                               "per request (split it into several requests)")
        try:
            return await asyncio.to_thread(self._add, list(request.problems))
        except SQLAlchemyError as exc:
            raise self._store_unavailable(exc) from None

    async def GetStats(self, request: cpb.GetStatsRequest, context: grpc.aio.ServicerContext) -> cpb.CollectorStats:
        try:
            return await asyncio.to_thread(self._counts)
        except SQLAlchemyError as exc:
            raise self._store_unavailable(exc) from None
