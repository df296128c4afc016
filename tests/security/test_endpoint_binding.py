"""Issue 17, item 2: a plain `bentoml serve` at the repository root (which the README calls equivalent to `lema serve
endpoint`) listens on loopback only, like `lema serve endpoint`, instead of BentoML's default 0.0.0.0."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import psutil
from conftest import free_port, requires_lema_tiny

from lema.core.config import section_env
from lema.devtools import start_endpoint

pytestmark = requires_lema_tiny


def _listening_addresses(pid: int, port: int) -> set[str]:
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    found = set()
    for process in processes:
        for conn in process.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                found.add(conn.laddr.ip)
    return found


def test_plain_bentoml_serve_binds_loopback_by_default(tmp_path):
    port = free_port()
    exe = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    registry = tmp_path / "adapters"
    registry.mkdir()
    config = {"model": "lema-tiny", "engine": "transformers", "registry_dir": str(registry)}
    server = start_endpoint([exe, "serve", "--port", str(port)], tmp_path / "endpoint.log", port,
                            env=section_env("endpoint", config))
    try:
        assert _listening_addresses(server.process.pid, port) == {"127.0.0.1"}
    finally:
        server.stop()
