"""Distributed training (`lema.trainer.distributed`) as the Kubernetes Job runs it: `accelerate launch` of real
processes (DDP over gloo on CPU cores, deploy/accelerate/cpu_ddp.yaml), the tiny recipe with few steps on lema-tiny's
4-bit base, a real registry and run folder. Rank 0 alone evaluates, registers and writes the run; both ranks train;
a 2-rank checkpoint resumes on 1 rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, free_port, requires_lema_tiny

pytestmark = requires_lema_tiny

MODEL = os.environ.get("LEMA_TEST_MODEL", "lema-tiny")
# The tiny recipe, cut to a few steps, one thread per rank (2 ranks on 2 cores) and a small evaluation.
OVERRIDES = {"base_model": MODEL, "max_steps": 6, "save_steps": 3, "logging_steps": 1, "threads": 1,
             "eval": {"problems": 24, "validation_problems": 24, "max_tokens": 160, "threads": 1}}


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate

    path = tmp_path_factory.mktemp("export") / "mix.jsonl"
    with path.open("w") as f:
        for p in generate(120, seed=3, split="train"):
            f.write(json.dumps({"type": "cot", "prompt": cot_prompt(p.question), "completion": p.gold_solution}) + "\n")
    return path


def recipe_file(folder: Path, **overrides) -> Path:
    from lema.trainer.recipe import load_recipe

    recipe = load_recipe("tiny", OVERRIDES | overrides)
    path = folder / f"recipe-{recipe.max_steps}.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    return path


def launch(root: Path, run_id: str, recipe: Path, export: Path, processes: int) -> subprocess.Popen:
    """The Job's command line, with its own rendezvous port (other torchrun jobs may share this machine)."""
    log = open(root / f"{run_id}-{processes}.log", "a")
    return subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO_ROOT / "deploy" / "accelerate" / "cpu_ddp.yaml"), "--num_processes", str(processes),
         "--main_process_port", str(free_port()), "-m", "lema.trainer.distributed", "--run-id", run_id,
         "--recipe", str(recipe), "--export", str(export), "--runs-root", str(root / "runs"),
         "--adapters-root", str(root / "adapters")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True)


def events(root: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (root / "runs" / run_id / "events.jsonl").read_text().splitlines()]


def state(root: Path, run_id: str) -> dict:
    return json.loads((root / "runs" / run_id / "state.json").read_text())


def registered(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "adapters").glob("*/metadata.json"))]


def test_two_ranks_train_and_rank_zero_registers_one_adapter(tmp_path, export_file):
    started = time.monotonic()
    process = launch(tmp_path, "ddp", recipe_file(tmp_path), export_file, processes=2)
    code = process.wait(timeout=400)
    log = (tmp_path / "ddp-2.log").read_text(errors="replace")
    assert code == 0, log[-4000:]
    final = state(tmp_path, "ddp")
    assert final["state"] == "succeeded" and final["step"] == 6, final
    # exactly one adapter, from rank 0, with the run's metrics
    adapters = registered(tmp_path)
    assert len(adapters) == 1 and adapters[0]["id"] == final["adapter_id"] and adapters[0]["run_id"] == "ddp"
    assert adapters[0]["metrics"]["train_world_size"] == 2 and adapters[0]["rank"] == 16
    files = {p.name for p in Path(adapters[0]["path"]).iterdir()}
    # the adapter as one process writes it (PEFT adds its README.md): no optimizer, tokenizer or pickled arguments
    # (and the registry's gate-outcomes.json: the adapter's outcomes on the gate's validation problems, issue 33)
    assert files == {"adapter_config.json", "adapter_model.safetensors", "metadata.json", "README.md",
                     "gate-outcomes.json"}, files
    # both ranks trained: the global batch of 16 rows per step split 8 + 8, each rank 6 steps x 8 rows
    run_events = events(tmp_path, "ddp")
    trained = [e for e in run_events if e.get("ranks")]
    assert len(trained) == 1 and trained[0]["world_size"] == 2
    assert trained[0]["ranks"] == [{"rank": 0, "rows": 48, "forward_passes": 6},
                                   {"rank": 1, "rows": 48, "forward_passes": 6}]
    # only rank 0 writes the run: one progress event per step, one terminal state, one evaluation
    assert [e["step"] for e in run_events if e["type"] == "progress"] == [1, 2, 3, 4, 5, 6]
    assert [e["state"] for e in run_events if e["type"] == "state"] == ["queued", "running", "evaluating",
                                                                        "succeeded"]
    assert sum(e["type"] == "eval" for e in run_events) == 1
    # every rank saved its own random-number state in the checkpoints
    assert {p.name for p in (tmp_path / "runs" / "ddp" / "checkpoints" / "checkpoint-6").glob("rng_state*")} == \
        {"rng_state_0.pth", "rng_state_1.pth"}
    # the same command again: the run already succeeded, nothing is trained or registered twice
    again = launch(tmp_path, "ddp", recipe_file(tmp_path), export_file, processes=2)
    assert again.wait(timeout=120) == 0
    assert len(registered(tmp_path)) == 1 and state(tmp_path, "ddp")["adapter_id"] == final["adapter_id"]
    print(f"2-rank run: {time.monotonic() - started:.1f} s")


def test_a_two_rank_checkpoint_resumes_on_one_rank(tmp_path, export_file):
    """SIGTERM (the Job deleted) stops both ranks at the same step with a checkpoint; the same command with one
    process resumes from it and finishes the run."""
    recipe = recipe_file(tmp_path, max_steps=16, save_steps=2)
    process = launch(tmp_path, "moved", recipe, export_file, processes=2)
    checkpoints = tmp_path / "runs" / "moved" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "checkpoint-2").exists():
        assert process.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "moved-2.log").read_text(errors="replace")[-4000:]
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)  # the launcher forwards it to both ranks
    process.wait(timeout=120)
    cancelled = state(tmp_path, "moved")
    assert cancelled["state"] == "cancelled" and 2 <= cancelled["step"] < 16, cancelled
    ranks = [e for e in events(tmp_path, "moved") if e.get("ranks")][0]["ranks"]
    assert ranks[0]["rows"] == ranks[1]["rows"] == 8 * cancelled["step"]  # the ranks stopped at the same step
    saved = checkpoints / f"checkpoint-{cancelled['step']}"
    assert saved.exists() and {p.name for p in saved.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert registered(tmp_path) == []

    resumed = launch(tmp_path, "moved", recipe, export_file, processes=1)
    code = resumed.wait(timeout=400)
    assert code == 0, (tmp_path / "moved-1.log").read_text(errors="replace")[-4000:]
    final = state(tmp_path, "moved")
    assert final["state"] == "succeeded" and final["step"] == 16
    run_events = events(tmp_path, "moved")
    logs = [e["message"] for e in run_events if e["type"] == "log"]
    assert f"resuming from checkpoint-{cancelled['step']}" in logs
    assert any("saved by 2 rank(s), resumed on 1" in line for line in logs), logs
    # the optimizer steps carry on where the 2-rank run stopped (the global batch is the recipe's on any rank count)
    steps = [e["step"] for e in run_events if e["type"] == "progress"]
    assert steps == list(range(1, 17)), steps
    adapters = registered(tmp_path)
    assert len(adapters) == 1 and adapters[0]["id"] == final["adapter_id"]
    assert adapters[0]["metrics"]["train_world_size"] == 1


def test_rank_batch_keeps_the_global_batch():
    from lema.trainer.recipe import load_recipe
    from lema.trainer.train import rank_batch

    tiny = load_recipe("tiny")  # 16 rows per step, all in one forward pass
    assert rank_batch(tiny, 1) == (16, 1) and rank_batch(tiny, 2) == (8, 1) and rank_batch(tiny, 16) == (1, 1)
    small = load_recipe("small")  # 16 rows per step, one row per forward pass
    assert rank_batch(small, 1) == (1, 16) and rank_batch(small, 4) == (1, 4)
    paper = load_recipe("paper")  # 16 x 6 accumulation = 96 rows per step
    assert rank_batch(paper, 1) == (16, 6) and rank_batch(paper, 4) == (12, 2) and rank_batch(paper, 8) == (12, 1)
    with pytest.raises(ValueError, match="does not split evenly over 5 ranks"):
        rank_batch(tiny, 5)


def test_the_run_id_is_checked_before_anything_starts(tmp_path, export_file):
    result = subprocess.run(
        [sys.executable, "-m", "lema.trainer.distributed", "--run-id", "../escape", "--recipe", "tiny", "--export",
         str(export_file), "--runs-root", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not a run name" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()
