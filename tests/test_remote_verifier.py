"""Issue 16: one verifier interface, one factory. With a verifier service configured, `lema collect` sends its
verifications to that service (counted on the server) and never verifies in worker processes of its own."""

from __future__ import annotations

import re
import sqlite3
import subprocess

import httpx
from conftest import free_port, lema_command, start_server

_ITEMS = re.compile(r"^lema_verifier_items_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def _items(metrics_port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return int(sum(float(v) for v in _ITEMS.findall(text)))


def _collect(store, *extra: str, env=None, source="synthetic:6:seed=3"):
    return subprocess.run([*lema_command(), "collect", "--source", source, "--store", str(store), "--samples", "2",
                           "--max-tokens", "160", *extra], capture_output=True, text=True, timeout=600, env=env)


def test_collect_verifies_through_the_configured_service(tmp_path, monkeypatch):
    port, metrics_port = free_port(), free_port()
    server = start_server(["serve", "verifier", "--port", str(port), "--workers", "1", "--metrics-port",
                           str(metrics_port)], port, tmp_path / "verifier.log")
    try:
        config = tmp_path / "lema.yaml"
        config.write_text(f"client:\n  verifier: 127.0.0.1:{port}\n")
        monkeypatch.setenv("LEMA_CONFIG", str(config))  # the configuration names the service; no flag
        store = tmp_path / "lema.db"
        done = _collect(store)
        assert done.returncode == 0, done.stderr[-3000:]
        with sqlite3.connect(store) as db:
            attempts = db.execute("select count(*) from attempts").fetchone()[0]
            corrections = db.execute("select count(*) from corrections").fetchone()[0]
        verified = _items(metrics_port)
        # Every attempt is verified once and every stored correction at least once (its candidate), all there.
        assert attempts == 12 and verified >= attempts + corrections, (verified, attempts, corrections)
    finally:
        server.stop()
    # The service is gone: the same command fails clearly instead of verifying locally behind the user's back.
    failed = _collect(tmp_path / "other.db", "--verifier", f"127.0.0.1:{port}", source="synthetic:2:seed=4")
    assert failed.returncode == 1 and "verifier at 127.0.0.1" in failed.stderr, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
