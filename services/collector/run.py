"""`lema collect`: drive the collector with a live progress display; `--follow` keeps taking intake problems."""

from __future__ import annotations

import asyncio
import logging

from lema.services.collector.pipeline import Collector, CollectSettings, Stats, transient_failure
from lema.services.collector.sources import load_source
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lema.core.store import repository as repo
from lema.core.store.db import open_store

log = logging.getLogger(__name__)


def _describe(stats: Stats) -> str:
    return (f"mistakes {stats.mistakes} · corrections {stats.corrections} (accepted {stats.accepted}) · "
            f"{stats.rate():.2f} problems/s")


async def collect(store_url: str, sources: list[str], settings: CollectSettings, follow: bool = False,
                  poll_interval_s: float = 2.0, console: Console | None = None, limit: int | None = None) -> Stats:
    console = console or Console()
    sessions = open_store(store_url)
    problem_ids: list[str] = []
    for spec in sources:
        problems = load_source(spec, limit)
        with sessions.begin() as session:
            repo.add_problems(session, problems)
        problem_ids += [p.key() for p in problems]

    collector = Collector(sessions, settings)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as progress:
        task = progress.add_task("collecting", total=len(problem_ids) or None, info="starting")

        def update(stats: Stats) -> None:
            progress.update(task, completed=stats.problems_done, total=stats.problems_total or None,
                            info=_describe(stats))

        collector.on_update = update
        await collector.start()
        try:
            if problem_ids:
                await collector.run(problem_ids)
            while follow:
                with sessions() as session:
                    pending = repo.pending_intake(session, settings.batch_size * 4)
                if not pending:
                    progress.update(task, info=_describe(collector.stats) + " · waiting for intake")
                    await asyncio.sleep(poll_interval_s)
                    continue
                await _collect_intake(collector, sessions, pending)
        finally:
            await collector.close()
    return collector.stats


async def _collect_intake(collector: Collector, sessions, pending: list[str]) -> None:
    """Collect a batch of intake problems. When the batch fails for a reason that is not transient, each problem
    is tried alone, and one that still fails is marked failed with its reason: one bad problem never stops the
    queue (a poison pill), and the good ones of its batch are collected."""
    try:
        await collector.run(pending)
        done = pending
    except Exception as exc:  # noqa: BLE001 - sorted below: transient (re-raised) or a bad problem
        if transient_failure(exc):
            raise
        done = []
        for problem_id in pending:
            try:
                await collector.run([problem_id])
            except Exception as single:  # noqa: BLE001
                if transient_failure(single):
                    raise
                reason = f"{type(single).__name__}: {str(single)[:300]}"
                log.warning("intake problem %s failed: %s", problem_id, reason)
                with sessions.begin() as session:
                    repo.mark_intake_failed(session, problem_id, reason)
            else:
                done.append(problem_id)
    with sessions.begin() as session:
        repo.mark_intake_done(session, done)
