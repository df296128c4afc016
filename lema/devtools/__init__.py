"""Development helpers shared by the tests and bench/: LoRA adapters for a base model, broken variants of them, and
a real `lema serve endpoint` / `bentoml serve` process on 127.0.0.1. They run from a checkout (an editable install):
servers start at the repository root, where bentofile.yaml is."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "lema-test-admin-token-7f3a"
MODEL_ENV = "LEMA_TEST_ENDPOINT_MODEL"  # development only: another base model folder than lema-tiny


def base_model_dir() -> Path | None:
    """lema-tiny's folder (or $LEMA_TEST_ENDPOINT_MODEL's), None when its weights are not there."""
    from lema.core.model_resolve import resolve_model

    path = Path(resolve_model(os.environ.get(MODEL_ENV) or "lema-tiny"))
    return path if (path / "config.json").is_file() else None


# --- gRPC servers --------------------------------------------------------------------------------------


def lema_command() -> list[str]:
    exe = shutil.which("lema", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lema.app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(address: str, timeout: float = 60.0, service: str = "") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING after {timeout}s: {last}")


def wait_http(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None,
              log_path: Path | None = None) -> None:
    """Until `url` answers 200; a `process` that exits first is an error with the end of its log."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            log = log_path.read_text()[-2000:] if log_path is not None and log_path.exists() else ""
            raise RuntimeError(f"the server exited {process.returncode} before {url} answered: {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


@dataclass
class RunningServer:
    process: subprocess.Popen
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=timeout)


def start_server(args: list[str], port: int, log_path: Path, timeout: float = 120.0) -> RunningServer:
    log = open(log_path, "w")
    process = subprocess.Popen(
        [*lema_command(), *args], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    server = RunningServer(process, f"127.0.0.1:{port}", log_path)
    try:
        wait_healthy(server.address, timeout=timeout)
    except TimeoutError:
        process.kill()
        raise RuntimeError(f"server failed to start:\n{server.log()}")
    return server


# --- adapters ------------------------------------------------------------------------------------------


def make_adapters(model_dir: Path, registry: Path, seeds: dict[str, int], r: int = 8,
                  targets: tuple[str, ...] = ("q_proj", "v_proj")) -> dict[str, Path]:
    """One LoRA adapter folder per name, random non-zero weights from its seed (so outputs differ)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    out = {}
    for name, seed in seeds.items():
        torch.manual_seed(seed)
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
        model = get_peft_model(copy.deepcopy(base), config)
        model.save_pretrained(str(registry / name))
        (registry / name / "lema_adapter.json").write_text(
            json.dumps({"eval": {"accuracy": round(0.1 * seed, 2), "problems": 64}, "notes": f"seed {seed}"})
        )
        out[name] = registry / name
    return out


def make_broken_adapters(good: Path, model_dir: Path, registry: Path) -> dict[str, Path]:
    """Variants of a good adapter that must all be refused, by folder name."""
    import torch
    from safetensors.torch import load_file, save_file

    broken: dict[str, Path] = {}

    def clone(name: str) -> Path:
        target = registry / name
        shutil.copytree(good, target)
        broken[name] = target
        return target

    def edit_config(folder: Path, **changes) -> None:
        config = json.loads((folder / "adapter_config.json").read_text())
        config.update(changes)
        (folder / "adapter_config.json").write_text(json.dumps(config))

    weights = "adapter_model.safetensors"
    folder = clone("broken-truncated")
    data = (folder / weights).read_bytes()
    (folder / weights).write_bytes(data[: len(data) // 2])

    folder = clone("broken-garbage")
    (folder / weights).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + os.urandom(64))

    folder = clone("broken-base")
    edit_config(folder, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")

    folder = clone("broken-targets")
    edit_config(folder, target_modules=["q_proj", "nonexistent_proj"])

    folder = clone("broken-rank")
    edit_config(folder, r=128)

    folder = clone("broken-nan")
    tensors = load_file(str(folder / weights))
    first = min(tensors)
    tensors[first] = tensors[first].clone()
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(folder / weights))

    folder = clone("broken-shapes")  # the adapter of a wider model claiming to fit this one
    tensors = load_file(str(folder / weights))
    tensors = {k: torch.zeros(v.shape[0] + (8 if "lora_B" in k else 0), v.shape[1] + (8 if "lora_A" in k else 0))
               for k, v in tensors.items()}
    save_file(tensors, str(folder / weights))

    folder = clone("broken-pickle")
    (folder / weights).unlink()
    (folder / "adapter_model.bin").write_bytes(b"not really a pickle")

    folder = clone("broken-config")
    (folder / "adapter_config.json").write_text("{ this is not json")
    return broken


# --- servers -------------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    process: subprocess.Popen
    port: int
    log_path: Path
    started: float
    ready_after_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # our own process group (start_new_session)
                self.process.wait(timeout=10)


def start_endpoint(args: list[str], log_path: Path, port: int, env: dict[str, str] | None = None,
                   cwd: Path = REPO_ROOT, timeout: float = 180.0) -> Endpoint:
    """Start a server (`args` is the command) and wait until /readyz answers 200."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "LEMA_ADMIN_TOKEN": ADMIN_TOKEN,
                **(env or {})}
    started = time.monotonic()
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(cwd),
                                   start_new_session=True)
    server = Endpoint(process, port, log_path, started)
    deadline = started + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the endpoint exited with {process.returncode}:\n{server.log()[-5000:]}")
            try:
                if client.get(f"{server.url}/readyz").status_code == 200:
                    server.ready_after_s = time.monotonic() - started
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"the endpoint was not ready after {timeout}s:\n{server.log()[-5000:]}")


def cli_args(port: int, model: str, registry: Path, *extra: str) -> list[str]:
    """`lema serve endpoint` as a module (the same function lema's CLI registers): it execs `bentoml serve`."""
    return [sys.executable, "-m", "lema.services.endpoint.cli", "--port", str(port), "--model", model,
            "--registry", str(registry), *extra]


def bentoml_serve_args(port: int) -> list[str]:
    """A plain `bentoml serve` at the repository root: bentofile.yaml names the service."""
    exe = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    return [exe, "serve", "--port", str(port), "--host", "127.0.0.1"]
