"""`lema collect`: drive the collector with a live progress display; `--follow` keeps taking intake problems.

Many `--follow` workers may share one store: each claims a few intake problems at a time (a lease: its worker id and
an expiry, `repository.claim_intake`), renews the leases of what it holds while it works (a heartbeat), and clears
them when it marks the problems done or failed. A worker that dies stops renewing, and once its leases pass its
problems are claimed by another. A problem redone that way (or by a worker that stalled past its lease) is stored
once: every stored unit has a deterministic key. PostgreSQL serves a fleet on any number of machines; SQLite
serialises the claims of workers on the one machine that holds its file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lema.core.store import repository as repo
from lema.core.store.db import open_store
from lema.services.collector.pipeline import Collector, CollectSettings, Stats, transient_failure
from lema.services.collector.sources import load_source

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 300.0


def default_worker_id() -> str:
    """hostname-pid: unique among live workers, and says where to look when one stalls."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _describe(stats: Stats) -> str:
    return (f"mistakes {stats.mistakes} · corrections {stats.corrections} (accepted {stats.accepted}) · "
            f"{stats.rate():.2f} problems/s")


class Claims:
    """The intake problems this worker holds, and the heartbeat that keeps their leases alive."""

    def __init__(self, sessions, worker_id: str, lease_s: float):
        self.sessions = sessions
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.held: set[str] = set()

    def claim(self, limit: int) -> list[str]:
        with self.sessions.begin() as session:  # a short transaction: the claim is visible once it commits
            claimed = repo.claim_intake(session, self.worker_id, limit, self.lease_s)
        self.held.update(claimed)
        if claimed:
            log.info("worker %s claimed %d intake problems", self.worker_id, len(claimed))
        return claimed

    def let_go(self, problem_ids) -> None:
        """No longer renew these (called before they are marked done or failed, which clears their leases)."""
        self.held.difference_update(problem_ids)

    def _renew(self, problem_ids: list[str]) -> list[str]:
        with self.sessions.begin() as session:
            return repo.renew_intake_leases(session, self.worker_id, problem_ids, self.lease_s)

    async def heartbeat(self) -> None:
        """Renew every third of a lease, so two beats may be missed (a slow store, a busy machine) before a live
        worker's problems are given to another. The store call runs off the event loop."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = list(self.held)
            if not held:
                continue
            try:
                kept = set(await asyncio.to_thread(self._renew, held))
            except Exception as exc:  # noqa: BLE001 - a missed beat only risks a redo (stored once); never stop
                log.warning("worker %s could not renew its leases (will retry): %s", self.worker_id, exc)
                continue
            lost = (set(held) - kept) & self.held
            if lost:
                # Our lease had passed and another worker claimed these: it redoes them, the keys store them once.
                log.warning("worker %s lost %d leases to other workers (stalled longer than a lease of %.0f s)",
                            self.worker_id, len(lost), self.lease_s)
                self.held -= lost

    def release(self) -> None:
        """A clean stop: give back what is not finished, so others need not wait for the leases to pass."""
        if not self.held:
            return
        try:
            with self.sessions.begin() as session:
                repo.release_intake(session, self.worker_id, list(self.held))
        except Exception as exc:  # noqa: BLE001 - the leases still pass on their own
            log.warning("worker %s could not release its claims (they return in %.0f s): %s", self.worker_id,
                        self.lease_s, exc)
        self.held.clear()


async def collect(store_url: str, sources: list[str], settings: CollectSettings, follow: bool = False,
                  poll_interval_s: float = 2.0, console: Console | None = None, limit: int | None = None,
                  worker_id: str | None = None, lease_s: float = DEFAULT_LEASE_S) -> Stats:
    console = console or Console()
    worker_id = worker_id or default_worker_id()
    sessions = open_store(store_url)
    problem_ids: list[str] = []
    for spec in sources:
        problems = load_source(spec, limit)
        with sessions.begin() as session:
            repo.add_problems(session, problems)
        problem_ids += [p.key() for p in problems]

    collector = Collector(sessions, settings)
    claims = Claims(sessions, worker_id, lease_s)
    beat: asyncio.Task | None = None
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    terminated = False

    def on_sigterm() -> None:  # a container being stopped: stop like on Ctrl-C, giving back what is held
        nonlocal terminated
        terminated = True
        main.cancel()

    if follow:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as progress:
        task = progress.add_task("collecting", total=len(problem_ids) or None, info="starting")

        def update(stats: Stats) -> None:
            progress.update(task, completed=stats.problems_done, total=stats.problems_total or None,
                            info=_describe(stats))

        collector.on_update = update
        try:
            await collector.start()
            if problem_ids:
                await collector.run(problem_ids)
            if follow:
                beat = asyncio.create_task(claims.heartbeat())
            while follow:
                claimed = claims.claim(settings.batch_size * 4)
                if not claimed:
                    progress.update(task, info=_describe(collector.stats) + f" · {worker_id} waiting for intake")
                    await asyncio.sleep(poll_interval_s)
                    continue
                await _collect_intake(collector, sessions, claimed, claims)
        except asyncio.CancelledError:
            if terminated:
                raise KeyboardInterrupt from None
            raise
        finally:
            if beat is not None:
                beat.cancel()
            claims.release()
            if follow:
                loop.remove_signal_handler(signal.SIGTERM)
            await collector.close()
    return collector.stats


async def _collect_intake(collector: Collector, sessions, pending: list[str], claims: Claims) -> None:
    """Collect a batch of claimed intake problems. When the batch fails for a reason that is not transient, each
    problem is tried alone, and one that still fails is marked failed with its reason: one bad problem never stops
    the queue (a poison pill), and the good ones of its batch are collected. A transient failure leaves the claims
    to their leases (or to the release of a clean stop): the problems return to the queue."""
    worker_id = claims.worker_id
    try:
        await collector.run(pending, worker_id=worker_id)
        done = pending
    except Exception as exc:  # noqa: BLE001 - sorted below: transient (re-raised) or a bad problem
        if transient_failure(exc):
            raise
        done = []
        for problem_id in pending:
            try:
                await collector.run([problem_id], worker_id=worker_id)
            except Exception as single:  # noqa: BLE001
                if transient_failure(single):
                    raise
                reason = f"{type(single).__name__}: {str(single)[:300]}"
                log.warning("intake problem %s failed: %s", problem_id, reason)
                claims.let_go([problem_id])
                with sessions.begin() as session:
                    repo.mark_intake_failed(session, problem_id, reason, worker_id=worker_id)
            else:
                done.append(problem_id)
    claims.let_go(done)
    with sessions.begin() as session:
        repo.mark_intake_done(session, done, worker_id=worker_id)
