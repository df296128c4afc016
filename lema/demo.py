"""`lema demo`: the main job on the embedded default, with progress and a result table.

The full loop (baseline -> collect mistakes -> correct -> verify -> export -> train CoT-only and LEMA adapters ->
hot-swap -> evaluate) is assembled stage by stage as its parts land; stages that do not exist yet are listed,
not faked. Services run as real processes, started through the `lema` command, and are talked to over gRPC.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lema.core.answers import DatasetKind
from lema.core.clients import VerifierClient, VerifyJob, health_status

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
PENDING_STAGES = [
    ("baseline evaluation of lema-tiny through the reasoner", "issue 3"),
    ("collect mistakes and correct them (reference corrector)", "issues 4, 5"),
    ("export CoT and correction sets; train CoT-only and LEMA adapters", "issues 5, 7"),
    ("hot-swap the better adapter into the endpoint; evaluate; Table 1 + plot", "issues 6, 8"),
]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _lema_command() -> list[str]:
    exe = shutil.which("lema", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lema.cli"]


@contextmanager
def running_service(name: str, args: list[str], console: Console, timeout_s: float = 120) -> Iterator[str]:
    """Start `lema serve NAME --port 0 ...`, wait until it is SERVING, yield its address, stop it (SIGTERM)."""
    process = subprocess.Popen(
        [*_lema_command(), "serve", name, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = None
        deadline = time.monotonic() + timeout_s
        assert process.stdout is not None
        for line in process.stdout:  # the server prints "... listening on HOST:PORT" when bound
            match = re.search(r"listening on (\S+:\d+)", line)
            if match:
                address = match.group(1)
                break
            if time.monotonic() > deadline:
                break
        if address is None or health_status(address) != "SERVING":
            raise RuntimeError(f"the {name} service did not start (exit code {process.poll()})")
        console.print(f"[green]✓[/] {name} service SERVING on {address}")
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _perturb(answer: str) -> str:
    m = re.search(r"\d", answer)
    if not m:
        return answer + "+1"
    return answer[: m.start()] + str((int(m.group()) + 1) % 10) + answer[m.end() :]


def _dataset_jobs(limit: int) -> dict[str, list[tuple[VerifyJob, bool]]]:
    groups: dict[str, list[tuple[VerifyJob, bool]]] = {}
    sources = {
        "GSM8K test": (SHARED_DATA / "gsm8k" / "test.jsonl", DatasetKind.GSM8K),
        "MATH-500": (SHARED_DATA / "math" / "test500.jsonl", DatasetKind.MATH),
    }
    for name, (path, kind) in sources.items():
        if not path.exists():
            continue
        golds = []
        for line in path.open():
            row = json.loads(line)
            golds.append(row["answer"].split("####")[-1].strip() if kind is DatasetKind.GSM8K else row["answer"])
        golds = golds[:limit]
        jobs = [(VerifyJob(kind, g, f"Step 1: ...\nThe answer is {g}."), True) for g in golds]
        jobs += [(VerifyJob(kind, g, _perturb(g), candidate_is_answer=True), False) for g in golds]
        groups[name] = jobs
    return groups


def verifier_stage(address: str, console: Console, limit: int) -> Table:
    groups = _dataset_jobs(limit)
    table = Table(title="Verifier check: gold answers (as solutions) and perturbed copies")
    for col in ("dataset", "items", "judged as expected", "95% CI", "items/s"):
        table.add_column(col, justify="right")
    if not groups:
        console.print(f"[yellow]no GSM8K/MATH copies under {SHARED_DATA}; skipping the dataset check[/]")
        return table
    with VerifierClient(address) as client, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        for name, jobs in groups.items():
            task = progress.add_task(f"verifying {name}", total=len(jobs))
            started = time.perf_counter()
            good = 0
            for (job, expected), verdict in zip(jobs, client.verify_batch([j for j, _ in jobs])):
                good += verdict.correct == expected
                progress.advance(task)
            elapsed = time.perf_counter() - started
            low, high = wilson_interval(good, len(jobs))
            table.add_row(name, f"{len(jobs):,}", f"{good / len(jobs):.1%}", f"{low:.1%}–{high:.1%}",
                          f"{len(jobs) / elapsed:,.0f}")
    return table


def run_demo(limit: int = 500) -> None:
    console = Console()
    console.rule("lema demo — embedded default")
    started = time.perf_counter()
    with running_service("verifier", ["--workers", "2"], console) as verifier:
        console.print(verifier_stage(verifier, console, limit))
    pending = Table(title="Stages of the loop still to come")
    pending.add_column("stage")
    pending.add_column("tracked in")
    for stage, issue in PENDING_STAGES:
        pending.add_row(stage, issue)
    console.print(pending)
    console.print(f"done in {time.perf_counter() - started:.0f}s")
