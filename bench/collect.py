"""Collector throughput and memory: `lema collect` vs raw generation of the same samples.

"raw" = the same engine generating the same k samples per problem in-process, nothing else. "collector" = the
whole pipeline (generation, verification, corrections by the reference corrector, SQLite writes) as a user runs
it. Peak RSS of the collector process is sampled during the run, with the RSS at each quarter, to show that memory
stays flat on a long run.

    python bench/collect.py [--problems 200] [--samples 2]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
from lema.core.engines import SamplingParams, create_engine  # noqa: E402
from lema.core.formats import cot_messages  # noqa: E402
from lema.core.model_resolve import resolve_model  # noqa: E402
from lema.core.synthetic import generate  # noqa: E402
from lema.devtools import lema_command  # noqa: E402


def raw(n: int, k: int, max_tokens: int, batch: int) -> float:
    async def run() -> float:
        engine = create_engine("transformers", resolve_model("lema-tiny"))
        problems = generate(n, seed=11, split="train")
        prompts = [cot_messages(p.question) for p in problems]
        params = SamplingParams(n=k, temperature=0.8, max_tokens=max_tokens, seed=0)
        started = time.perf_counter()
        for i in range(0, n, batch):
            await engine.generate(prompts[i : i + batch], params)
        return time.perf_counter() - started

    return asyncio.run(run())


def collector(n: int, k: int, max_tokens: int, batch: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.db"
        started = time.perf_counter()
        process = subprocess.Popen(
            [*lema_command(), "collect", "--source", f"synthetic:{n}:seed=11", "--store", str(store), "--samples",
             str(k), "--max-tokens", str(max_tokens), "--batch-size", str(batch)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(process.pid)
        samples: list[float] = []
        while process.poll() is None:
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                samples.append(rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.25)
        if process.returncode != 0:
            raise RuntimeError(f"lema collect failed with exit code {process.returncode}")
        return time.perf_counter() - started, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    console = Console(width=130)
    n, k = args.problems, args.samples
    raw_s = raw(n, k, args.max_tokens, args.batch_size)
    collect_s, rss = collector(n, k, args.max_tokens, args.batch_size)
    quarters = [rss[min(len(rss) - 1, int(q * len(rss)))] for q in (0.25, 0.5, 0.75)] + [rss[-1]] if rss else []
    table = Table(title=f"Collector vs raw generation ({n} synthetic problems x {k} samples, lema-tiny)")
    for col in ("run", "seconds", "problems/s", "ratio", "peak RSS MiB", "RSS at 25/50/75/100% MiB"):
        table.add_column(col, justify="right")
    table.add_row("raw generation (in-process engine)", f"{raw_s:.1f}", f"{n / raw_s:.2f}", "1.00x", "-", "-")
    table.add_row("lema collect (whole pipeline, incl. start-up)", f"{collect_s:.1f}", f"{n / collect_s:.2f}",
                  f"{raw_s / collect_s:.2f}x", f"{max(rss):.0f}" if rss else "-",
                  " / ".join(f"{x:.0f}" for x in quarters))
    console.print(table)


if __name__ == "__main__":
    main()
