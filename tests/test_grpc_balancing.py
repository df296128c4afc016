"""Client-side balancing (issue 15): lema clients spread calls over every address a target resolves to (gRPC's
round_robin through the service config lema.core.security sets) and retry UNAVAILABLE, so a replica that stops
mid-run costs no failed call.

Three real verifier replicas listen on the same port of 127.0.0.1, 127.0.0.2 and 127.0.0.3 (all loopback on Linux),
as a headless Service's pods share a port; the `ipv4:` target lists them the way DNS lists a headless Service's pods.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import RunningServer, free_port, lema_command, wait_healthy

from lema.core.answers import DatasetKind
from lema.core.clients import VerifierClient, VerifyItem

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
_ITEMS = re.compile(r"^lema_verifier_items_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def _start(host: str, port: int, metrics_port: int, log_path: Path) -> RunningServer:
    log = open(log_path, "w")
    process = subprocess.Popen(
        [*lema_command(), "serve", "verifier", "--host", host, "--port", str(port), "--workers", "1",
         "--metrics-port", str(metrics_port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = RunningServer(process, f"{host}:{port}", log_path)
    try:
        wait_healthy(server.address, timeout=120)
    except TimeoutError:
        process.kill()
        raise RuntimeError(f"verifier on {host} failed to start:\n{server.log()}") from None
    return server


def _items(host: str, metrics_port: int) -> int:
    text = httpx.get(f"http://{host}:{metrics_port}/metrics", timeout=10).text
    return int(sum(float(v) for v in _ITEMS.findall(text)))


@pytest.fixture()
def replicas(tmp_path):
    port = free_port()
    metrics = [free_port() for _ in HOSTS]
    servers = []
    try:
        for host, metrics_port in zip(HOSTS, metrics):
            servers.append(_start(host, port, metrics_port, tmp_path / f"{host}.log"))
        yield port, servers, metrics
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=30)


def test_calls_spread_over_replicas_and_survive_one_stopping(replicas):
    port, servers, metrics = replicas
    target = "ipv4:" + ",".join(f"{host}:{port}" for host in HOSTS)
    job = VerifyItem(kind=DatasetKind.GSM8K, gold="42", candidate="The answer is 42.", id="x")
    failures: list[str] = []
    done = {"calls": 0}
    stop = threading.Event()
    stopping = threading.Event()

    def call_forever(client: VerifierClient) -> None:
        while not stop.is_set():
            try:
                assert client.verify(job).correct
                done["calls"] += 1
            except (grpc.RpcError, AssertionError) as exc:
                phase = "after crash" if servers[2].process.poll() is not None else \
                    "after stop" if servers[1].process.poll() is not None else "stopping" if stopping.is_set() else "before"
                failures.append(f"{phase}: {type(exc).__name__}: {str(exc)[:200]}")

    with VerifierClient(target, timeout_s=30) as client:
        for _ in range(60):  # the first calls, before any replica stops: round robin gives each a third
            assert client.verify(job).correct
        spread = [_items(host, m) for host, m in zip(HOSTS, metrics)]
        assert sum(spread) == 60 and min(spread) >= 15, spread  # pick_first would give one replica all 60

        threads = [threading.Thread(target=call_forever, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        before_stop = done["calls"]
        stopping.set()
        servers[1].process.terminate()  # graceful stop mid-run: in-flight calls finish, new ones go elsewhere
        assert servers[1].process.wait(timeout=60) == 0
        time.sleep(2.0)
        after_stop = done["calls"]
        servers[2].process.kill()  # and a crash: what was in flight there is retried on the last replica
        servers[2].process.wait(timeout=30)
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    print("balancing figures:", json.dumps({"first_60_per_replica": spread, "calls_before_stop": before_stop,
                                            "calls_after_stop": after_stop - before_stop,
                                            "calls_after_crash": done["calls"] - after_stop,
                                            "failed": len(failures)}))
    assert not failures, failures[:5]
    assert done["calls"] > after_stop > before_stop > 0  # calls went on after each replica went away
    assert _items(HOSTS[0], metrics[0]) > spread[0]  # the survivor took the rest


def test_a_dns_target_resolves_and_balances(replicas):
    port, _, _ = replicas
    with VerifierClient(f"dns:///localhost:{port}", timeout_s=30) as client:
        job = VerifyItem(kind=DatasetKind.GSM8K, gold="7", candidate="The answer is 7.", id="y")
        assert all(client.verify(job).correct for _ in range(5))
