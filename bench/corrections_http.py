"""Corrections per second through the three ways to reach the corrector, side by side (issue 32): HTTP (the
endpoint's POST /v1/corrections, with an API key), gRPC (`lema serve corrector`: Correct, CorrectBatch) and
in-process (lema.services.corrector.LocalCorrector), each with the reference corrector on the same synthetic wrong
solutions, at batch 1 (one item per call, calls one after another) and batch 32 (32 items per call).

The corrector's cache is off everywhere (LEMA_CORRECTOR__CACHE_ENTRIES=0), so every item is corrected and verified.
All processes share this machine's cores: compare the ratios, measured in one run.

    python bench/corrections_http.py [--items 2048] [--out bench/results/corrections_http.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/trainer.py is not `trainer`

import grpc  # noqa: E402
import httpx  # noqa: E402

from lema.core.model_resolve import resolve_model  # noqa: E402
from lema.core.synthetic import generate  # noqa: E402
from lema.core.synthetic.errors import wrong_solution  # noqa: E402
from lema.devtools import cli_args, free_port, lema_command, start_endpoint, start_server  # noqa: E402

BATCH = 32


def items(n: int, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for problem in generate(4 * n, seed=seed, split="train"):
        wrong = wrong_solution(problem, rng)
        if wrong is not None:
            out.append({"question": problem.question, "solution": wrong[0], "kind": "synthetic",
                        "gold_answer": str(problem.answer), "program_json": problem.program.to_json(),
                        "id": problem.id})
        if len(out) == n:
            return out
    raise RuntimeError("not enough wrong solutions")


def chunks(values: list, size: int) -> list[list]:
    return [values[i:i + size] for i in range(0, len(values), size)]


REPEATS = 3  # each configuration is timed this many times over all items; the median is reported


def rate(n: int, seconds: list[float], statuses: list[str]) -> dict:
    import statistics

    median = statistics.median(seconds)
    return {"items": n, "seconds": [round(s, 3) for s in seconds], "per_second": round(n / median, 1),
            "accepted": sum(s == "accepted" for s in statuses) // len(seconds)}


def http_runs(url: str, key: str, work: list[dict]) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    results = {}
    with httpx.Client(headers=headers, timeout=600) as client:
        client.post(f"{url}/v1/corrections", json=work[0]).raise_for_status()  # warm: verifier and corrector open
        for batch in (1, BATCH):
            statuses, seconds = [], []
            for _ in range(REPEATS):
                started = time.perf_counter()
                for group in chunks(work, batch):
                    body = group[0] if batch == 1 else {"items": group}
                    reply = client.post(f"{url}/v1/corrections", json=body)
                    reply.raise_for_status()
                    data = reply.json()
                    statuses += [data["status"]] if batch == 1 else [r["status"] for r in data["results"]]
                seconds.append(time.perf_counter() - started)
            results[batch] = rate(len(work), seconds, statuses)
    return results


def grpc_runs(address: str, work: list[dict]) -> dict:
    from lema.v1 import common_pb2 as pb
    from lema.v1 import corrector_pb2 as cpb
    from lema.v1 import corrector_pb2_grpc

    def request(item: dict) -> cpb.CorrectRequest:
        return cpb.CorrectRequest(problem=pb.Problem(id=item["id"], kind=pb.DATASET_KIND_SYNTHETIC, question=item["question"],
                                                     gold_answer=item["gold_answer"],
                                                     program_json=item["program_json"]),
                                  wrong_solution=item["solution"], id=item["id"])

    names = {1: "accepted", 2: "unverified", 3: "rejected", 4: "unparseable", 5: "upstream_error"}
    results = {}
    with grpc.insecure_channel(address) as channel:
        stub = corrector_pb2_grpc.CorrectorStub(channel)
        stub.Correct(request(work[0]), timeout=600)
        for batch in (1, BATCH):
            statuses, seconds = [], []
            for _ in range(REPEATS):
                started = time.perf_counter()
                for group in chunks(work, batch):
                    if batch == 1:
                        statuses.append(names[stub.Correct(request(group[0]), timeout=600).status])
                    else:
                        replies = stub.CorrectBatch(cpb.CorrectBatchRequest(items=[request(i) for i in group]),
                                                    timeout=600)
                        statuses += [names[r.status] for r in replies]
                seconds.append(time.perf_counter() - started)
            results[batch] = rate(len(work), seconds, statuses)
    return results


async def in_process_runs(work: list[dict]) -> dict:
    from lema.services.corrector import LocalCorrector
    from lema.services.verifier import open_verifier

    verifier = open_verifier()
    await verifier.start()
    corrector = LocalCorrector(verifier)

    async def one(item: dict) -> str:
        problem = SimpleNamespace(id=item["id"], kind="synthetic", question=item["question"],
                                  gold_answer=item["gold_answer"], program_json=item["program_json"])
        return (await corrector.correct(problem, SimpleNamespace(id=item["id"], text=item["solution"]))).status

    results = {}
    try:
        await one(work[0])
        for batch in (1, BATCH):
            statuses, seconds = [], []
            for _ in range(REPEATS):
                started = time.perf_counter()
                for group in chunks(work, batch):
                    statuses += await asyncio.gather(*[one(i) for i in group])
                seconds.append(time.perf_counter() - started)
            results[batch] = rate(len(work), seconds, statuses)
    finally:
        await corrector.close()
        await verifier.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "corrections_http.json")
    args = parser.parse_args()
    os.environ["LEMA_CORRECTOR__CACHE_ENTRIES"] = "0"  # every item is corrected, in every process
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = items(args.items)
    logs = Path("/tmp/lema-bench-corrections")
    logs.mkdir(parents=True, exist_ok=True)
    keys = logs / "api-keys.json"
    keys.unlink(missing_ok=True)
    key = json.loads(subprocess.run([*lema_command(), "keys", "create", "--name", "bench", "--requests-per-minute",
                                     "1000000", "--corrections-per-day", "100000000", "--file", str(keys)],
                                    check=True, capture_output=True, text=True).stdout)["key"]

    measured: dict = {"items": len(work), "batch": BATCH}
    measured["in_process"] = asyncio.run(in_process_runs(work))
    port = free_port()
    corrector = start_server(["serve", "corrector", "--port", str(port)], port, logs / "corrector.log")
    try:
        measured["grpc"] = grpc_runs(f"127.0.0.1:{port}", work)
    finally:
        corrector.stop()
    port = free_port()
    endpoint = start_endpoint(cli_args(port, resolve_model("lema-tiny"), logs / "registry"), logs / "endpoint.log",
                              port, env={"LEMA_ENDPOINT__API_KEYS_FILE": str(keys)})
    try:
        measured["http"] = http_runs(endpoint.url, key, work)
    finally:
        endpoint.stop()
    for batch in (1, BATCH):
        measured[f"http_over_grpc_batch_{batch}"] = round(
            measured["http"][batch]["per_second"] / measured["grpc"][batch]["per_second"], 3)
        measured[f"http_over_in_process_batch_{batch}"] = round(
            measured["http"][batch]["per_second"] / measured["in_process"][batch]["per_second"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(measured, indent=2))
    print(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
