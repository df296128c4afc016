"""`lema collect`: drive the collector with a live progress display; `--follow` keeps taking intake problems."""

from __future__ import annotations

import asyncio

from lema.services.collector.pipeline import Collector, CollectSettings, Stats
from lema.services.collector.sources import load_source
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lema.core.store import repository as repo
from lema.core.store.db import open_store


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
                await collector.run(pending)
                with sessions.begin() as session:
                    repo.mark_intake_done(session, pending)
        finally:
            await collector.close()
    return collector.stats
