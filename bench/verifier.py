"""Verifier throughput: the gRPC service (VerifyBatch) vs math-verify called directly in one process.

Items: every GSM8K test and MATH test gold answer checked against itself, plus a perturbed copy (first
digit bumped), as bare answers. Prints items/s for both, their ratio, and how often the two agree.

    python bench/verifier.py [--limit N] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import subprocess
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
from lema.devtools import lema_command, wait_healthy  # noqa: E402
from lema.v1 import common_pb2 as pb  # noqa: E402
from lema.v1 import verifier_pb2 as vpb  # noqa: E402
from lema.v1 import verifier_pb2_grpc  # noqa: E402


def perturb(answer: str) -> str:
    m = re.search(r"\d", answer)
    if not m:
        return answer + "+1"
    return answer[: m.start()] + str((int(m.group()) + 1) % 10) + answer[m.end() :]


def load_items(limit: int | None) -> list[tuple[str, str, str, bool]]:
    """(dataset, gold, candidate, expected_correct)"""
    gsm = [json.loads(x)["answer"].split("####")[-1].strip() for x in (DATA / "gsm8k/test.jsonl").open()]
    math = [json.loads(x)["answer"] for x in (DATA / "math/test.jsonl").open()]
    if limit:
        gsm, math = gsm[:limit], math[:limit]
    items = []
    for name, golds in (("gsm8k", gsm), ("math", math)):
        items += [(name, g, g, True) for g in golds]
        items += [(name, g, perturb(g), False) for g in golds]
    return items


def run_direct(items) -> tuple[list[bool], float]:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    results = []
    start = time.perf_counter()
    for _, gold, candidate, _ in items:
        try:
            results.append(bool(verify(parse(f"${gold}$"), parse(f"${candidate}$"))))
        except Exception:  # noqa: BLE001 - the baseline's failures count as "not correct"
            results.append(False)
    return results, time.perf_counter() - start


def run_service(groups: dict[str, list], workers: int) -> dict[str, tuple[list[bool], float]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*lema_command(), "serve", "verifier", "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"127.0.0.1:{port}", timeout=120)
        kinds = {"gsm8k": pb.DATASET_KIND_GSM8K, "math": pb.DATASET_KIND_MATH}
        out = {}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = verifier_pb2_grpc.VerifierStub(channel)
            for name, items in groups.items():
                requests = [
                    vpb.VerifyRequest(kind=kinds[d], gold_answer=g, candidate=c, candidate_is_answer=True)
                    for d, g, c, _ in items
                ]
                start = time.perf_counter()
                results = []
                for i in range(0, len(requests), 2000):  # batches of 2,000 items
                    batch = vpb.VerifyBatchRequest(items=requests[i : i + 2000])
                    results += [r.verdict.correct for r in stub.VerifyBatch(batch, timeout=3600)]
                out[name] = (results, time.perf_counter() - start)
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="gold answers per dataset (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    items = load_items(args.limit)
    groups = {name: [it for it in items if it[0] == name] for name in ("gsm8k", "math")}
    console = Console(width=130)
    console.print(f"{len(items)} items (gold vs itself + perturbed), service workers={args.workers}")
    service = run_service(groups, args.workers)
    direct = {name: run_direct(group) for name, group in groups.items()}

    table = Table(title="Verifier: lema service (gRPC VerifyBatch) vs math-verify in one process")
    for col in ("dataset", "items", "service items/s", "direct items/s", "ratio", "agreement",
                "service as expected", "direct as expected"):
        table.add_column(col, justify="right")
    rows = {**groups, "all": items}
    for name, group in rows.items():
        names = [name] if name != "all" else list(groups)
        s_res = [r for n in names for r in service[n][0]]
        d_res = [r for n in names for r in direct[n][0]]
        s_time = sum(service[n][1] for n in names)
        d_time = sum(direct[n][1] for n in names)
        expected = [it[3] for n in names for it in groups[n]]
        count = len(expected)
        rate_s, rate_d = count / s_time, count / d_time
        table.add_row(
            name, f"{count:,}", f"{rate_s:,.0f}", f"{rate_d:,.0f}", f"{rate_s / rate_d:.1f}x",
            f"{sum(a == b for a, b in zip(s_res, d_res)) / count:.2%}",
            f"{sum(a == e for a, e in zip(s_res, expected)) / count:.2%}",
            f"{sum(a == e for a, e in zip(d_res, expected)) / count:.2%}",
        )
    console.print(table)
    console.print(
        "'as expected' = gold vs itself judged correct and the perturbed copy judged incorrect. The service "
        "decides plain numbers without sympy and runs math-verify in worker processes with a hard timeout."
    )


if __name__ == "__main__":
    main()
