"""Training runs on disk, each executed by its own worker process (`python -m lema.trainer.worker RUN_DIR`).

    <runs root>/<run id>/run.json       what to run (recipe YAML, export path, base model)
                         state.json     the current state (written atomically)
                         events.jsonl   progress, evaluation, state and log events, appended
                         checkpoints/   Trainer checkpoints; a killed run resumes from the newest
                         adapter/       the final PEFT adapter (then copied into the registry)

A separate process per run keeps the gRPC server responsive, lets CancelRun stop a run cleanly (SIGTERM: the
worker stops at the next step boundary and saves a checkpoint) and survives a SIGKILL: StartRun with
resume=true continues from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lema.core.errors import InvalidInput

TERMINAL = {"succeeded", "failed", "cancelled"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class RunState:
    id: str
    state: str = "queued"  # queued | running | evaluating | succeeded | failed | cancelled
    step: int = 0
    total_steps: int = 0
    adapter_id: str = ""
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    pid: int = 0
    created_at: str = field(default_factory=now)
    finished_at: str = ""


# A run id names a folder under runs_root: a plain name, never a path ("../x", "/tmp/x", "a/b").
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise InvalidInput(f"run_id: {run_id[:80]!r} is not a run name (1-128 letters, digits, '.', '_', '-'; "
                         "starting with a letter or digit; no '..')")
    return run_id


class RunDir:
    def __init__(self, path: Path):
        self.path = path

    @property
    def id(self) -> str:
        return self.path.name

    def spec(self) -> dict:
        return json.loads((self.path / "run.json").read_text())

    def state(self) -> RunState:
        return RunState(**json.loads((self.path / "state.json").read_text()))

    def write_state(self, state: RunState) -> None:
        tmp = self.path / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(state)))
        tmp.replace(self.path / "state.json")

    def update(self, **fields) -> RunState:
        state = self.state()
        for key, value in fields.items():
            setattr(state, key, value)
        self.write_state(state)
        return state

    def event(self, kind: str, **payload) -> None:
        with (self.path / "events.jsonl").open("a") as f:
            f.write(json.dumps({"time": now(), "type": kind, **payload}) + "\n")
            f.flush()

    def events(self, offset: int = 0) -> tuple[list[dict], int]:
        """Complete event lines after byte `offset`, and the new offset."""
        path = self.path / "events.jsonl"
        if not path.exists():
            return [], offset
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        lines = data[:end].decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()], offset + end


class RunManager:
    """Creates runs and their worker processes; one run trains at a time on a trainer."""

    def __init__(self, root: Path, adapters_root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.adapters_root = Path(adapters_root)
        self._processes: dict[str, subprocess.Popen] = {}
        self._recover()

    def _recover(self) -> None:
        """Runs left 'running' by a trainer that died: their worker is gone, so they failed (resumable)."""
        for run in self.all():
            state = run.state()
            if state.state not in TERMINAL and not _alive(state.pid):
                run.update(state="failed", error="the worker stopped unexpectedly; StartRun with resume=true "
                                                 "continues from the last checkpoint", finished_at=now())

    def get(self, run_id: str) -> RunDir:
        if not RUN_ID.fullmatch(run_id):
            raise KeyError(run_id)
        path = (self.root / run_id).resolve()
        if path.parent != self.root.resolve() or not (path / "run.json").exists():
            raise KeyError(run_id)
        return RunDir(path)

    def all(self) -> list[RunDir]:
        return [RunDir(p.parent) for p in sorted(self.root.glob("*/run.json"))]

    def reap(self) -> None:
        """Runs whose worker exited without reaching a final state (killed, crashed) fail at once, resumable, with
        a state event, so GetRun and WatchRun tell the truth without a trainer restart."""
        for run_id, process in list(self._processes.items()):
            code = process.poll()
            if code is None:
                continue
            run = self.get(run_id)
            if run.state().state not in TERMINAL:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                run.update(state="failed", finished_at=now(), error=f"the worker stopped unexpectedly ({how}); "
                           "StartRun with resume=true continues from the last checkpoint")
                run.event("state", state="failed")
            del self._processes[run_id]

    def is_running(self, run_id: str) -> bool:
        process = self._processes.get(run_id)
        return process is not None and process.poll() is None

    def active(self) -> RunDir | None:
        self.reap()
        for run_id, process in list(self._processes.items()):
            if process.poll() is None:
                run = self.get(run_id)
                if run.state().state not in TERMINAL:
                    return run
                try:  # finished, the process is only exiting
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            del self._processes[run_id]
        return None

    def create(self, config_yaml: str, export_path: str, base_model: str, run_id: str = "") -> RunDir:
        run_id = run_id or f"run-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        check_run_id(run_id)
        path = self.root / run_id
        path.mkdir(parents=True)
        (path / "run.json").write_text(json.dumps({"id": run_id, "config_yaml": config_yaml,
                                                   "export_path": export_path, "base_model": base_model}))
        run = RunDir(path)
        run.write_state(RunState(id=run_id))
        run.event("state", state="queued")
        return run

    def launch(self, run: RunDir) -> None:
        env = {**os.environ, "LEMA_ADAPTERS": str(self.adapters_root), "PYTHONUNBUFFERED": "1"}
        log = open(run.path / "worker.log", "a")
        process = subprocess.Popen([sys.executable, "-m", "lema.trainer.worker", str(run.path)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._processes[run.id] = process
        run.update(state="running", pid=process.pid, error="", finished_at="")
        run.event("state", state="running")

    def cancel(self, run: RunDir, grace_s: float = 120.0) -> RunState:
        process = self._processes.get(run.id)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the worker stops at the next step and saves a checkpoint
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
        state = run.state()
        if state.state not in TERMINAL:
            state = run.update(state="cancelled", finished_at=now())
            run.event("state", state="cancelled")
        return state

    def close(self) -> None:
        for run_id, process in self._processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for process in self._processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
