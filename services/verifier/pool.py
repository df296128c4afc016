"""The verifier's in-process implementation: worker processes with a hard per-item timeout (asyncio-native).

Why processes: math-verify (sympy) can run for minutes on a pathological answer, gives wrong results
inside threaded servers, and its own timeouts rely on signals. Each item here runs in a worker process;
when an item exceeds its time limit the worker is killed and replaced, and the caller gets a `timeout`
verdict. A worker that crashes is replaced too. Other requests never wait behind a stuck item for longer
than it takes a free worker to pick them up.

Workers are forked from a forkserver that has math-verify preloaded, so a replacement starts in tens of
milliseconds and forking never copies the gRPC server's threads.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from prometheus_client import Counter

from lema.core.answers import DatasetKind
from lema.core.records import Verdict, VerdictReason, VerifyItem
from lema.core.verification import clip, extraction_of, quick_verdict

log = logging.getLogger(__name__)

WORKER_RESTARTS = Counter(
    "lema_verifier_worker_restarts_total", "Verifier worker processes replaced", ["cause"]
)


def _worker_main(conn: Connection) -> None:
    """Worker loop: receive an item, verify it, send the verdict back. Exits on EOF or None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    from lema.core.verification import verify_item

    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        try:
            verdict = verify_item(item.kind, item.gold, item.candidate, item.candidate_is_answer)
        except Exception as exc:  # noqa: BLE001 - any library failure becomes a verdict, not a crash
            verdict = Verdict(
                correct=False,
                reason=VerdictReason.PARSE_ERROR,
                detail=f"verification failed: {type(exc).__name__}: {str(exc)[:300]}",
            )
        try:
            conn.send(verdict)
        except (BrokenPipeError, OSError):
            return


@dataclass(eq=False)  # identity hashing: workers live in a set
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    started: float = field(default_factory=time.monotonic)


class VerifierPool:
    """A fixed number of verification worker processes shared by all requests."""

    def __init__(self, workers: int = 2, item_timeout_s: float = 5.0, start_method: str = "forkserver"):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if item_timeout_s <= 0:
            raise ValueError("item_timeout_s must be > 0")
        self.size = workers
        self.item_timeout_s = item_timeout_s
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(["lema.core.verification", "math_verify"])
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._closed = False
        self.restarts = 0
        # Worker replacements run in the background; the event loop keeps only weak references to tasks, so they
        # are held here until done (else one can be collected mid-flight).
        self._replacements: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="lema-verifier-worker")
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._all.add(worker)
        return worker

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        workers = await loop.run_in_executor(None, lambda: [self._spawn() for _ in range(self.size)])
        for worker in workers:
            self._idle.put_nowait(worker)
        # Warm each worker once so the first real request does not pay for imports.
        await asyncio.gather(
            *[self.verify(VerifyItem(DatasetKind.MATH, "1/2", "0.5", True)) for _ in range(self.size)]
        )

    def _kill(self, worker: _Worker) -> None:
        self._all.discard(worker)
        try:
            worker.conn.close()
        except OSError:
            pass
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)

    async def _replace(self, worker: _Worker, cause: str) -> None:
        self.restarts += 1
        WORKER_RESTARTS.labels(cause=cause).inc()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._kill, worker)
        if self._closed:
            return
        fresh = await loop.run_in_executor(None, self._spawn)
        assert self._idle is not None
        self._idle.put_nowait(fresh)

    async def close(self) -> None:
        self._closed = True
        for worker in list(self._all):
            try:
                worker.conn.send(None)
            except OSError:
                pass
        loop = asyncio.get_running_loop()
        for worker in list(self._all):
            await loop.run_in_executor(None, worker.process.join, 2)
            self._kill(worker)

    def _background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._replacements.add(task)
        task.add_done_callback(self._replacements.discard)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._all if w.process.pid is not None]

    # -- work --------------------------------------------------------------------------------------
    async def _result(self, worker: _Worker, timeout: float) -> object:
        """Wait for the worker's reply without blocking the event loop (fd readiness, no threads)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = worker.conn.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(fd)
        return worker.conn.recv()

    async def verify(self, item: VerifyItem, timeout_s: float | None = None) -> Verdict:
        """Verify one item; never raises for bad input, never takes longer than the timeout (+ queueing)."""
        if self._closed or self._idle is None:
            raise RuntimeError("verifier pool is not running")
        # Most items (no answer, two numbers, word answers) are decided here without sympy, in linear
        # time, so they never queue behind a slow symbolic check.
        quick = quick_verdict(item.kind, item.gold, item.candidate, item.candidate_is_answer)
        if quick is not None:
            return quick
        limit = self.item_timeout_s if timeout_s is None else min(timeout_s, self.item_timeout_s)
        extraction = extraction_of(item.kind, item.candidate, item.candidate_is_answer)
        found = dict(extracted_answer=clip(extraction.answer or ""), extraction_method=extraction.method)
        worker = await self._idle.get()
        started = time.perf_counter()
        try:
            worker.conn.send(item)
            verdict = await self._result(worker, limit)
        except asyncio.TimeoutError:
            self._background(self._replace(worker, "timeout"))
            return Verdict(
                correct=False,
                reason=VerdictReason.TIMEOUT,
                detail=f"verification exceeded {limit:.1f}s; the worker was stopped",
                **found,
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
        except (EOFError, OSError, BrokenPipeError):
            code = worker.process.exitcode
            self._background(self._replace(worker, "crash"))
            log.warning("verifier worker %s died (exit code %s); replaced", worker.process.pid, code)
            return Verdict(
                correct=False,
                reason=VerdictReason.PARSE_ERROR,
                detail=f"the verifier worker crashed (exit code {code}) on this input; it was replaced",
                **found,
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
        except asyncio.CancelledError:
            # The caller went away mid-item: the worker's state is unknown, so replace it.
            self._background(self._replace(worker, "cancelled"))
            raise
        self._idle.put_nowait(worker)
        assert isinstance(verdict, Verdict)
        return verdict
