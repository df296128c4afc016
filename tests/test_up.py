"""`lema up` and `lema status` as a user runs them: one config file, every service a real process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml
from conftest import free_port, lema_command, requires_lema_tiny

pytestmark = requires_lema_tiny

MODEL = os.environ.get("LEMA_TEST_MODEL", "lema-tiny")
SERVICES = ("verifier", "reasoner", "corrector", "trainer", "collector", "endpoint")


@pytest.fixture
def config_file(tmp_path):
    ports = {name: free_port() for name in SERVICES}
    config = {
        "verifier": {"port": ports["verifier"], "workers": 1},
        "reasoner": {"port": ports["reasoner"], "model": MODEL, "engine": "transformers"},
        "corrector": {"port": ports["corrector"]},
        "trainer": {"port": ports["trainer"], "runs_root": str(tmp_path / "runs"),
                    "adapters_root": str(tmp_path / "adapters"),
                    "endpoint_url": f"http://127.0.0.1:{ports['endpoint']}"},
        "collector": {"port": ports["collector"], "store": str(tmp_path / "lema.db")},
        "endpoint": {"port": ports["endpoint"], "model": MODEL, "engine": "transformers",
                     "registry_dir": str(tmp_path / "adapters")},
    }
    (tmp_path / "adapters").mkdir()
    path = tmp_path / "lema.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, ports


def _status(config_path, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*lema_command(), "status", "--config", str(config_path)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_up_starts_every_service_status_reports_them_and_sigterm_stops_all(config_file, tmp_path):
    config_path, ports = config_file
    assert _status(config_path, tmp_path).returncode == 1  # nothing is running yet

    log = open(tmp_path / "up.log", "w")
    up = subprocess.Popen([*lema_command(), "up", "--config", str(config_path), "--timeout", "400"], cwd=tmp_path,
                          stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 420
        while "all services up" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(1)
        printed = (tmp_path / "up.log").read_text()
        for name in SERVICES:  # every address is printed
            assert f"127.0.0.1:{ports[name]}" in printed, printed

        status = _status(config_path, tmp_path)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("SERVING") == len(SERVICES), status.stdout
        children = _children(up.pid)
        assert len(children) == len(SERVICES)
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    printed = (tmp_path / "up.log").read_text()
    assert all(f"stopped {name}" in printed for name in SERVICES), printed
    assert not [pid for pid in children if _alive(pid)]  # no orphaned service
    down = _status(config_path, tmp_path)
    assert down.returncode == 1 and "SERVING" not in down.stdout.replace("NOT_SERVING", "")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout.split("\n")[1:]
    return [int(p) for p, pp in (line.split() for line in out if line.strip()) if int(pp) == pid]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}/stat") else "X"
    return status != "Z"
