"""Fleet-wide promotion (issue 15): three real `lema serve endpoint` replicas on 127.0.0.1 share one adapter store
and follow its promotion record, under load.

What a Kubernetes Service would do is played by the load generator: it sends only to replicas that are up (a
stopping replica leaves the rotation before it stops, as a terminating pod leaves a Service's endpoints).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from lema.core.promotion_record import content_hash, read_record, write_record
from lema.devtools import (
    base_model_dir,
    cli_args,
    free_port,
    make_adapters,
    make_broken_adapters,
    start_endpoint,
)

MODEL_DIR = base_model_dir()
POLL_S = 0.3
RECORD = "promotion.json"


def _serving(url: str) -> dict:
    reply = httpx.get(f"{url}/admin/serving", timeout=10)
    return {**reply.json(), "status": reply.status_code}


def _wait_for(replicas, predicate, timeout: float = 90.0) -> float:
    """Seconds until every replica's /admin/serving report satisfies `predicate`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        reports = [_serving(r.url) for r in replicas]
        if all(predicate(report) for report in reports):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"replicas did not converge in {timeout}s: {reports}")


class Load:
    """Completions for the model "default" (the promoted adapter answers) spread over the replicas in rotation."""

    def __init__(self) -> None:
        self.targets: list = []
        self.lock = threading.Lock()
        self.results: list[tuple[int, int, str]] = []  # (replica port, status, served model)
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        turn = 0
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                with self.lock:
                    targets = list(self.targets)
                if not targets:
                    time.sleep(0.05)
                    continue
                replica = targets[turn % len(targets)]
                turn += 1
                try:
                    reply = client.post(f"{replica.url}/v1/completions",
                                        json={"model": "default", "prompt": "Question: What is 2 + 3?\nAnswer:",
                                              "max_tokens": 2})
                    served = reply.headers.get("x-lema-adapter", "")
                    self.results.append((replica.port, reply.status_code, served))
                    if reply.status_code != 200:
                        self.failures.append(f"{replica.port}: {reply.status_code} {reply.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{replica.port}: {type(exc).__name__} {exc}")

    def served_since(self, index: int) -> set[str]:
        return {served for _, _, served in self.results[index:]}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    if MODEL_DIR is None:
        pytest.skip("lema-tiny's weights are not in the package")
    root = tmp_path_factory.mktemp("adapter-store")
    adapters = make_adapters(MODEL_DIR, root, {"fleet-a-0001": 1, "fleet-b-0002": 2})
    broken = make_broken_adapters(adapters["fleet-b-0002"], MODEL_DIR, root)
    broken["broken-nan"].rename(root / "fleet-c-0003")  # finite hash, NaN weights: fails validation
    return root


def _start(store: Path, workdir: Path, index: int):
    port = free_port()
    config = workdir / f"replica{index}.yaml"
    config.write_text(yaml.safe_dump({"endpoint": {
        "registry_dir": str(store), "promotion_record": RECORD, "promotion_poll_s": POLL_S,
        "engine": "transformers", "model": str(MODEL_DIR)}}))
    return start_endpoint(cli_args(port, str(MODEL_DIR), store, "--engine", "transformers", "--config", str(config)),
                          workdir / f"replica{index}-{time.monotonic_ns()}.log", port)


def test_promotion_converges_on_three_replicas_under_load(store, tmp_path):
    record_file = store / RECORD
    write_record(record_file, "fleet-a-0001", content_hash(store / "fleet-a-0001"))
    with ThreadPoolExecutor(3) as pool:
        replicas = list(pool.map(lambda i: _start(store, tmp_path, i), range(3)))
    load = Load()
    worker = threading.Thread(target=load.run, daemon=True)
    figures: dict[str, object] = {}
    try:
        # Every replica came up serving the recorded adapter (it caught up before it reported ready).
        for replica in replicas:
            report = _serving(replica.url)
            assert report["status"] == 200 and report["state"] == "in_sync", report
            assert report["serving"] == "fleet-a-0001", report
        load.targets = list(replicas)
        worker.start()
        time.sleep(1.0)

        # One replica is stopped; the promotion happens while it is down; it restarts on the promoted adapter.
        restarted = replicas[2]
        with load.lock:
            load.targets.remove(restarted)
        restarted.stop()
        mark = len(load.results)
        write_record(record_file, "fleet-b-0002", content_hash(store / "fleet-b-0002"))
        figures["converge_s_two_live"] = _wait_for(
            replicas[:2], lambda r: r["serving"] == "fleet-b-0002" and r["state"] == "in_sync")
        figures["requests_during_promotion"] = len(load.results) - mark
        replicas[2] = _start(store, tmp_path, 2)
        report = _serving(replicas[2].url)
        assert report["status"] == 200 and report["serving"] == "fleet-b-0002", report  # ready means caught up
        figures["restart_ready_s"] = round(replicas[2].ready_after_s, 1)
        with load.lock:
            load.targets.append(replicas[2])
        time.sleep(1.0)
        assert "fleet-b-0002" in load.served_since(len(load.results) - 5)

        # A corrupt adapter in the record: every replica refuses it, stays ready and keeps serving the previous one.
        write_record(record_file, "fleet-c-0003", content_hash(store / "fleet-c-0003"))
        _wait_for(replicas, lambda r: r["state"] == "refused")
        for replica in replicas:
            report = _serving(replica.url)
            assert report["status"] == 200 and report["serving"] == "fleet-b-0002", report
            assert "fleet-c-0003" in json.dumps(report["record"]) and "finite" in report["reason"].lower(), report
            assert httpx.get(f"{replica.url}/readyz", timeout=10).status_code == 200
        mark = len(load.results)
        time.sleep(1.0)
        assert load.served_since(mark) == {"fleet-b-0002"}

        # A folder changed after promotion (hash mismatch) is refused the same way.
        write_record(record_file, "fleet-a-0001", "0" * 64)
        _wait_for(replicas, lambda r: r["state"] == "refused" and "content hash" in (r["reason"] or ""))

        # Rollback is a record change: every replica goes back to the first adapter.
        started = time.monotonic()
        write_record(record_file, "fleet-a-0001", content_hash(store / "fleet-a-0001"))
        figures["rollback_converge_s"] = _wait_for(
            replicas, lambda r: r["serving"] == "fleet-a-0001" and r["state"] == "in_sync")
        assert time.monotonic() - started < 60
        mark = len(load.results)
        time.sleep(1.0)
        assert load.served_since(mark) == {"fleet-a-0001"}
        assert read_record(record_file).generation == 5
        for replica in replicas:  # the same story in Prometheus' words
            metrics = httpx.get(f"{replica.url}/metrics", timeout=10).text
            assert "lema_endpoint_promotion_generation 5.0" in metrics
            assert 'lema_endpoint_promotion_state{state="in_sync"} 1.0' in metrics
    finally:
        load.stop.set()
        if worker.is_alive():
            worker.join(timeout=60)
        for replica in replicas:
            replica.stop()
    per_replica = {r.port: sum(1 for port, _, _ in load.results if port == r.port) for r in replicas}
    figures |= {"requests": len(load.results), "failed": len(load.failures), "per_replica": list(per_replica.values())}
    print("fleet promotion figures:", json.dumps(figures))
    assert not load.failures, load.failures[:5]
    assert len(load.results) > 20
