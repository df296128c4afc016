"""Corrector proxy overhead: `lema serve corrector` vs calling the same upstream directly with the openai client.

The upstream is the controllable OpenAI-compatible test server (lema/devtools/upstream.py), which answers
instantly with a fixed correction, so the figures isolate what the proxy adds: gRPC, prompt building, the
upstream call through the official client, parsing, verification (gold answer given) and caching.

    python bench/corrector.py [--requests 256]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
from lema.core.prompts import GSM8K_PROMPT  # noqa: E402
from lema.devtools import free_port, start_server  # noqa: E402
from lema.v1 import common_pb2 as pb  # noqa: E402
from lema.v1 import corrector_pb2 as cpb  # noqa: E402
from lema.v1 import corrector_pb2_grpc  # noqa: E402

WRONG = "Step 1: 6 * 12 = 72.\nStep 2: 72 + 23 = 98.\nThe answer is 98."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_concurrent(call, n: int, concurrency: int) -> tuple[list[float], float]:
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with semaphore:
            started = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(n)])
    return latencies, time.perf_counter() - started


async def bench(upstream_url: str, corrector_address: str, n: int) -> list[tuple]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=upstream_url, api_key="x", max_retries=0)
    rows = []
    async with grpc.aio.insecure_channel(corrector_address) as channel:
        stub = corrector_pb2_grpc.CorrectorStub(channel)

        def proxy_call(tag: str):
            async def call(i: int):
                request = cpb.CorrectRequest(
                    problem=pb.Problem(kind=pb.DATASET_KIND_GSM8K, question=f"Question {tag}-{i}?", gold_answer="95"),
                    wrong_solution=WRONG,
                )
                response = await stub.Correct(request, timeout=60)
                assert response.status == cpb.CORRECTION_STATUS_ACCEPTED, response
            return call

        async def direct_call(i: int):
            await client.chat.completions.create(
                model="double", messages=GSM8K_PROMPT.messages(f"Question direct-{i}?", WRONG), temperature=0,
                max_tokens=768)

        for concurrency in (1, 64):
            await run_concurrent(direct_call, 16, concurrency)  # warm-up
            direct, direct_s = await run_concurrent(direct_call, n, concurrency)
            proxy, proxy_s = await run_concurrent(proxy_call(f"c{concurrency}"), n, concurrency)
            rows.append((f"c={concurrency}", direct, direct_s, proxy, proxy_s))
        # warm cache: the same requests again (c64 set), served without touching the upstream
        cached, cached_s = await run_concurrent(proxy_call("c64"), n, 64)
        rows.append(("warm cache c=64", None, None, cached, cached_s))
    await client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    args = parser.parse_args()
    console = Console(width=140)
    logs = Path("/tmp") if Path("/tmp").exists() else REPO
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "lema.devtools.upstream", "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    corrector = None
    try:
        time.sleep(3)
        corrector = start_server(
            ["serve", "corrector", "--upstream", "openai", "--base-url", f"http://127.0.0.1:{upstream_port}/v1",
             "--model", "double", "--port", str(port)], port, logs / "lema-bench-corrector.log")
        rows = asyncio.run(bench(f"http://127.0.0.1:{upstream_port}/v1", corrector.address, args.requests))
    finally:
        if corrector is not None:
            corrector.stop()
        upstream.kill()
    table = Table(title=f"Corrector proxy vs the same upstream called directly ({args.requests} requests per row)")
    for col in ("run", "direct p50 ms", "direct p99 ms", "proxy p50 ms", "proxy p99 ms", "added p50 ms",
                "added p99 ms", "direct req/s", "proxy req/s", "ratio"):
        table.add_column(col, justify="right")
    for name, direct, direct_s, proxy, proxy_s in rows:
        p50, p99 = percentile(proxy, 0.5), percentile(proxy, 0.99)
        if direct is None:
            table.add_row(name, "-", "-", f"{p50:.1f}", f"{p99:.1f}", "-", "-", "-", f"{len(proxy) / proxy_s:,.0f}", "-")
            continue
        d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
        table.add_row(name, f"{d50:.1f}", f"{d99:.1f}", f"{p50:.1f}", f"{p99:.1f}", f"{p50 - d50:+.1f}",
                      f"{p99 - d99:+.1f}", f"{len(direct) / direct_s:,.0f}", f"{len(proxy) / proxy_s:,.0f}",
                      f"{(len(proxy) / proxy_s) / (len(direct) / direct_s):.2f}x")
    console.print(table)
    console.print(f"median of all proxy latencies: {statistics.median([x for r in rows for x in r[3]]):.1f} ms")


if __name__ == "__main__":
    main()
