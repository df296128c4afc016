"""Fleet-wide promotion benchmark: three `lema serve endpoint` replicas following one promotion record, under load.

Three replicas (transformers engine, 1 torch thread each) on 127.0.0.1 share an adapter store; a load thread sends
greedy 2-token completions for the model "default" to them in rotation all along. Rounds alternate:
- fleet: write the promotion record naming a fresh adapter (never loaded before), time until all three replicas
  report it served (`GET /admin/serving`, polled every 20 ms);
- push (the baseline): the admin API's load-and-promote of a fresh adapter on one replica, timed by its request
  (what reaches a single pod behind a Service).

    python bench/fleet.py [--rounds 5] [--poll 0.3]

Prints medians and maxima of both, their ratio, requests served meanwhile and failed requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
from lema.core.promotion_record import content_hash, write_record
from lema.devtools import ADMIN_TOKEN, base_model_dir, cli_args, free_port, make_adapters, start_endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.3, help="the replicas' promotion_poll_s")
    args = parser.parse_args()
    model = base_model_dir()
    work = Path(tempfile.mkdtemp(prefix="lema-fleet-bench-"))
    store = work / "store"
    store.mkdir()
    names = [f"bench-{kind}-{i:03d}" for i in range(args.rounds) for kind in ("fleet", "push")]
    make_adapters(model, store, {name: 10 + i for i, name in enumerate(["bench-start", *names])})
    record = store / "promotion.json"
    write_record(record, "bench-start", content_hash(store / "bench-start"))

    def start(index: int):
        port = free_port()
        config = work / f"replica{index}.yaml"
        config.write_text(yaml.safe_dump({"endpoint": {"registry_dir": str(store), "promotion_record": record.name,
                                                       "promotion_poll_s": args.poll, "engine": "transformers"}}))
        return start_endpoint(cli_args(port, str(model), store, "--engine", "transformers", "--config", str(config)),
                              work / f"replica{index}.log", port)

    with ThreadPoolExecutor(3) as pool:
        replicas = list(pool.map(start, range(3)))
    results: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        turn = 0
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                replica = replicas[turn % 3]
                turn += 1
                try:
                    reply = client.post(f"{replica.url}/v1/completions", json={
                        "model": "default", "prompt": "Question: What is 2 + 3?\nAnswer:", "max_tokens": 2})
                    results.append(reply.status_code)
                    if reply.status_code != 200:
                        failures.append(reply.text[:200])
                except httpx.HTTPError as exc:
                    failures.append(str(exc))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    fleet, push = [], []
    admin = httpx.Client(base_url=f"{replicas[0].url}/admin", timeout=120,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        for i in range(args.rounds):
            name = f"bench-fleet-{i:03d}"
            started = time.perf_counter()
            write_record(record, name, content_hash(store / name))
            while not all(httpx.get(f"{r.url}/admin/serving", timeout=10).json().get("serving") == name
                          for r in replicas):
                time.sleep(0.02)
            fleet.append(time.perf_counter() - started)

            name = f"bench-push-{i:03d}"
            started = time.perf_counter()
            reply = admin.post("/adapters/load", json={"path": name, "name": name, "promote": True})
            push.append(time.perf_counter() - started)
            assert reply.status_code == 201, reply.text
            # Back to what the record names, then unload the pushed adapter (the endpoint refuses to unload the
            # promoted one).
            admin.post("/promote", json={"name": f"bench-fleet-{i:03d}"}).raise_for_status()
            admin.post("/adapters/unload", json={"name": name}).raise_for_status()
    finally:
        stop.set()
        worker.join(timeout=60)
        admin.close()
        for replica in replicas:
            replica.stop()
    summary = {
        "rounds": args.rounds, "poll_s": args.poll,
        "fleet_converge_s": {"median": round(statistics.median(fleet), 3), "max": round(max(fleet), 3)},
        "push_one_replica_s": {"median": round(statistics.median(push), 3), "max": round(max(push), 3)},
        "ratio_fleet_to_push_median": round(statistics.median(fleet) / statistics.median(push), 2),
        "requests": len(results), "failed": len(failures),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
