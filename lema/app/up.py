"""`lema up` / `lema status`: every service of the loop on this machine, from one configuration file.

Each service runs as its own `lema serve NAME` process with the settings of its config section; `up` waits until
each reports healthy (gRPC health checking; HTTP readiness for the endpoint), prints the addresses, and on Ctrl-C
or SIGTERM stops them all (SIGTERM first, so each drains in-flight calls, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lema.core.clients import health_status
from lema.core.config import ClientConfig, LemaConfig, load_config

GRPC_SERVICES = ("verifier", "reasoner", "corrector", "trainer", "collector")


@dataclass
class ServiceSpec:
    name: str
    args: list[str]
    address: str
    kind: str  # "grpc" | "http"
    client: ClientConfig | None = None  # how to reach a gRPC service (token, TLS)

    def health(self, timeout: float = 2.0) -> str:
        if self.kind == "grpc":
            return health_status(self.address, timeout=timeout, config=self.client)
        import httpx

        try:
            response = httpx.get(f"http://{self.address}/readyz", timeout=timeout)
        except httpx.HTTPError:
            return "UNREACHABLE"
        return "SERVING" if response.status_code == 200 else f"NOT_SERVING ({response.status_code})"


def specs(config: LemaConfig, config_path: Path | None) -> list[ServiceSpec]:
    extra = ["--config", str(config_path)] if config_path else []
    out = []
    for name in GRPC_SERVICES:
        section = getattr(config, name)
        out.append(ServiceSpec(name, ["serve", name, *extra], f"{section.host}:{section.port}", "grpc", config.client))
    endpoint = getattr(config, "endpoint", None)
    if endpoint is not None:
        out.append(ServiceSpec("endpoint", ["serve", "endpoint", *extra],
                               f"{endpoint.host}:{endpoint.port}", "http"))
    return out


def _lema() -> list[str]:
    exe = shutil.which("lema", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lema.app.cli"]


def up(config_path: Path | None, only: list[str] | None = None, timeout_s: float = 300.0,
       log_dir: Path = Path(".lema/logs")) -> int:
    console = Console()
    config = load_config(config_path)
    chosen = [s for s in specs(config, config_path) if not only or s.name in only]
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    stopping = {"now": False}

    def request_stop(signum, frame) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_stop)  # a closed terminal stops the services too
    try:
        for spec in chosen:
            log = open(log_dir / f"{spec.name}.log", "a")
            processes[spec.name] = subprocess.Popen([*_lema(), *spec.args], stdout=log, stderr=subprocess.STDOUT,
                                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            console.print(f"starting {spec.name} ({spec.address}), log: {log_dir / (spec.name + '.log')}")
        deadline = time.monotonic() + timeout_s
        pending = {s.name: s for s in chosen}
        while pending and not stopping["now"]:
            for name, spec in list(pending.items()):
                if processes[name].poll() is not None:
                    console.print(f"[red]{name} exited with code {processes[name].returncode}; see its log[/]")
                    return 1
                if spec.health() == "SERVING":
                    console.print(f"[green]✓[/] {name} healthy on {spec.address}")
                    del pending[name]
            if time.monotonic() > deadline:
                console.print(f"[red]not healthy after {timeout_s:.0f}s: {', '.join(pending)}[/]")
                return 1
            time.sleep(0.5)
        if not stopping["now"]:
            console.print(status_table(chosen))
            console.print("all services up; Ctrl-C or SIGTERM stops them")
        while not stopping["now"]:
            for name, process in processes.items():
                if process.poll() is not None:
                    console.print(f"[red]{name} stopped unexpectedly (exit code {process.returncode})[/]")
                    stopping["now"] = True
            time.sleep(0.5)
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, process in processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            console.print(f"stopped {name} (exit code {process.returncode})")


def status_table(chosen: list[ServiceSpec], health: dict[str, str] | None = None) -> Table:
    """The services and their health (`health`: already probed, by name; else each is probed now)."""
    table = Table(title="lema services")
    for col in ("service", "address", "transport", "health"):
        table.add_column(col)
    for spec in chosen:
        state = health[spec.name] if health is not None else spec.health()
        colour = "green" if state == "SERVING" else "red"
        table.add_row(spec.name, spec.address, spec.kind, f"[{colour}]{state}[/]")
    return table


def status(config_path: Path | None) -> int:
    chosen = specs(load_config(config_path), config_path)
    health = {spec.name: spec.health() for spec in chosen}  # one probe per service
    Console().print(status_table(chosen, health))
    return 0 if all(state == "SERVING" for state in health.values()) else 1
