"""The collector: reason (k samples) -> verify -> correct the wrong ones -> verify the corrections -> store.

Stages are connected by bounded queues, so the slowest stage sets the pace and memory stays flat however long the
run. Work units have deterministic keys (attempt: problem|run|sample; correction: attempt|corrector) and are
written insert-or-ignore in one transaction each: SIGKILL at any moment, restart, and nothing is lost or duplicated
(a unit in flight at the kill is simply redone).

Components run in-process for the embedded default (the engine, a verifier pool, the corrector proxy) or are
reached over gRPC by address (`--reasoner`, `--corrector`), with a deadline on every call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from prometheus_client import Counter

from lema.core.engines import SamplingParams
from lema.core.store import repository as repo
from lema.core.store.models import Attempt, Problem
from lema.services.corrector import CorrectionResult, open_corrector
from lema.services.reasoner import PathResult, open_reasoner
from lema.services.verifier import open_verifier

PROBLEMS_DONE = Counter("lema_collector_problems_total", "Problems reasoned about")
ATTEMPTS = Counter("lema_collector_attempts_total", "Reasoning paths stored", ["correct"])
CORRECTIONS = Counter("lema_collector_corrections_total", "Corrections stored", ["status"])


@dataclass
class CollectSettings:
    samples: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    batch_size: int = 16
    correct_concurrency: int = 4
    queue_size: int = 32
    model: str = "lema-tiny"
    engine: str = "transformers"
    adapter: str = ""
    adapter_path: str = ""  # in-process reasoner: load this PEFT folder as `adapter`
    reasoner_address: str | None = None
    corrector_address: str | None = None
    corrector_url: str | None = None  # in-process corrector with an OpenAI-compatible upstream (default: reference)
    corrector_model: str = "gpt-4"
    verifier: str | None = None  # 'local' or the verifier service's target (default: client.verifier)
    call_timeout_s: float = 600.0

    def sampling(self) -> SamplingParams:
        return SamplingParams(n=self.samples, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed)

    def run_key(self, model_id: str) -> str:
        payload = json.dumps([model_id, self.adapter, self.samples, self.temperature, self.top_p, self.max_tokens,
                              self.seed], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


def transient_failure(exc: BaseException) -> bool:
    """A failure of the services, not of the work: the work stays to do and a later pass retries it."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED)
    return isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError))


@dataclass
class Stats:
    problems_total: int = 0
    problems_done: int = 0
    attempts: int = 0
    mistakes: int = 0
    corrections: int = 0
    accepted: int = 0
    deferred: int = 0  # transient upstream trouble: not stored, a later run asks again
    failed: int = 0  # stored as upstream_error: a later run asks again too
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.problems_done / max(time.monotonic() - self.started, 1e-9)


# --- the pipeline ---------------------------------------------------------------------------------------


class Collector:
    def __init__(self, sessions, settings: CollectSettings, on_update: Callable[[Stats], None] | None = None):
        self.sessions = sessions
        self.settings = settings
        self.stats = Stats()
        self.on_update = on_update or (lambda stats: None)
        self.verifier = open_verifier(target=settings.verifier)
        self.reasoner = None
        self.corrector = None

    async def start(self) -> None:
        s = self.settings
        await self.verifier.start()
        adapter = (s.adapter, s.adapter_path) if s.adapter_path else None
        self.reasoner = open_reasoner(s.reasoner_address, model=s.model, engine=s.engine, verifier=self.verifier,
                                      adapter=adapter, timeout_s=s.call_timeout_s)
        await self.reasoner.start()
        self.corrector = open_corrector(s.corrector_address, verifier=self.verifier, url=s.corrector_url,
                                        model=s.corrector_model, timeout_s=s.call_timeout_s)

    async def close(self) -> None:
        for part in (self.reasoner, self.corrector):
            if part is not None:
                await part.close()
        await self.verifier.close()

    def _attempt_rows(self, problem: Problem, paths: list[PathResult], run_key: str) -> list[dict]:
        s = self.settings
        sampling = dict(n=s.samples, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)
        return [
            dict(id=repo.attempt_id(problem.id, run_key, i), problem_id=problem.id, run_key=run_key,
                 model=self.reasoner.model_id,
                 adapter=s.adapter, sampling=sampling, sample_index=i, text=p.text, extracted_answer=p.extracted,
                 correct=p.correct, verdict=p.verdict, prompt_tokens=p.prompt_tokens,
                 completion_tokens=p.completion_tokens)
            for i, p in enumerate(paths)
        ]

    def _augmentation_rows(self, attempts: list[dict]) -> list[dict]:
        """Verified-correct samples become CoT augmentations (the paper's CoT data adds correct sampled paths);
        the same text sampled twice is stored once. Exports cap them per problem and deduplicate again."""
        source = self.reasoner.model_id + (f"+{self.settings.adapter}" if self.settings.adapter else "")
        rows, seen = [], set()
        for row in attempts:
            key = " ".join(row["text"].split()).lower()
            if row["correct"] and key and key not in seen:
                seen.add(key)
                rows.append(dict(id=row["id"], problem_id=row["problem_id"], upstream_model=f"self:{source}"[:200],
                                 text=row["text"], verified=True))
        return rows

    async def run(self, problem_ids: list[str], worker_id: str | None = None) -> Stats:
        """Collect for these problems (already in the store); resumes whatever a previous run left undone. A
        `--follow` worker passes its id: mistakes of problems another live worker holds are left to that one."""
        s = self.settings
        run_key = s.run_key(self.reasoner.model_id)
        with self.sessions() as session:
            todo = repo.problems_missing_attempts(session, problem_ids, run_key, s.samples)
            leftover = repo.wrong_attempts_without_correction(session, self.corrector.tag, worker_id=worker_id)
        self.stats.problems_total += len(problem_ids)
        self.stats.problems_done += len(problem_ids) - len(todo)
        self.on_update(self.stats)

        reason_queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, s.queue_size // s.batch_size))
        correct_queue: asyncio.Queue = asyncio.Queue(maxsize=s.queue_size)

        async def produce() -> None:
            for start in range(0, len(todo), s.batch_size):
                await reason_queue.put(todo[start : start + s.batch_size])
            await reason_queue.put(None)

        async def reason() -> None:
            for attempt in leftover:  # mistakes a previous run stored but did not get to correct
                await correct_queue.put(attempt.id)
            while (batch := await reason_queue.get()) is not None:
                with self.sessions() as session:
                    problems = repo.problems_by_id(session, batch)
                results = await self.reasoner.solve(problems, s.sampling(), s.adapter)
                for problem, paths in zip(problems, results):
                    rows = self._attempt_rows(problem, paths, run_key)
                    with self.sessions.begin() as session:  # one problem's k attempts: one transaction
                        repo.add_attempts(session, rows)
                        repo.add_augmentations(session, self._augmentation_rows(rows))
                    self.stats.problems_done += 1
                    PROBLEMS_DONE.inc()
                    for row in rows:
                        self.stats.attempts += 1
                        ATTEMPTS.labels(correct=str(row["correct"]).lower()).inc()
                        if not row["correct"]:
                            self.stats.mistakes += 1
                            await correct_queue.put(row["id"])  # blocks while correctors are behind
                    self.on_update(self.stats)
            for _ in range(s.correct_concurrency):
                await correct_queue.put(None)

        async def correct() -> None:
            while (attempt_id := await correct_queue.get()) is not None:
                with self.sessions() as session:
                    attempt = session.get(Attempt, attempt_id)
                    problem = session.get(Problem, attempt.problem_id)
                try:
                    result = await self.corrector.correct(problem, attempt)
                except Exception as exc:  # noqa: BLE001 - one bad item must not stop the others
                    if transient_failure(exc):
                        result = CorrectionResult("deferred", {})
                    else:  # stored as a failure (a later run asks again), never lost, never a crash
                        result = CorrectionResult("upstream_error", dict(
                            failure_reason=f"corrector error: {type(exc).__name__}: {str(exc)[:300]}"))
                if result.status == "deferred":
                    CORRECTIONS.labels(status="deferred").inc()
                    self.stats.deferred += 1
                    self.on_update(self.stats)
                    continue
                row = dict(id=repo.correction_id(attempt.id, self.corrector.tag), attempt_id=attempt.id,
                           corrector=self.corrector.tag, problem_id=problem.id,
                           status=result.status, **{"upstream_model": "", "prompt_id": "", "prompt_version": "",
                                                     **result.fields})
                with self.sessions.begin() as session:
                    repo.add_correction(session, row)
                self.stats.corrections += 1
                self.stats.accepted += result.status == "accepted"
                self.stats.failed += result.status == "upstream_error"
                CORRECTIONS.labels(status=result.status).inc()
                self.on_update(self.stats)

        await asyncio.gather(produce(), reason(), *[correct() for _ in range(s.correct_concurrency)])
        return self.stats
