"""One training run over several processes (DDP, or FSDP-QLoRA), launched by accelerate or torchrun:

    accelerate launch --config_file deploy/accelerate/ddp.yaml -m lema.trainer.distributed \\
        --run-id RUN_ID --recipe RECIPE --export EXPORT.jsonl [--runs-root DIR] [--adapters-root DIR]

Every rank trains (`lema.trainer.worker.execute`, the single-process worker's own code); rank 0 alone creates or
resumes the run folder `runs_root/RUN_ID`, writes its state and events, evaluates and registers the adapter. The
other ranks then wait at a barrier for rank 0 and exit 0. A failure on any rank makes the launcher exit nonzero.

The same command line resumes a run from its newest checkpoint, on any rank count (the recipe's batch is the
global batch: `lema.trainer.train.rank_batch`); a run that already succeeded is left as it is (exit 0, no second
adapter), so a retried Kubernetes Job registers at most one adapter. The run folder must be on storage every rank
reads and writes (the checkpoints hold one random-number state per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

from lema.core.errors import Conflict
from lema.trainer.runs import TERMINAL, RunDir, RunState, check_run_id, now
from lema.trainer.worker import execute, install_sigterm

# After SIGTERM rank 0 stops at the next step boundary. A launcher that stops the job because another rank failed
# sends SIGTERM and, 30 s later (torchrun's grace), SIGKILL; rank 0 may sit in a collective with the dead rank
# until then (NCCL waits, gloo errors at once). If the run has not reached a final state this long after SIGTERM,
# rank 0 records it as failed, so that the state never keeps saying 'running' for a dead run.
STALL_S = 20.0
# The ranks other than 0 wait for rank 0's evaluation at a barrier on a gloo group of their own, with a timeout
# longer than any evaluation (the training process group's is 30 minutes).
WAIT_TIMEOUT = timedelta(hours=48)


class RunConflict(Conflict, ValueError):
    """The run id names a run with another recipe or export."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lema.trainer.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--run-id", required=True, help="the run's folder name under --runs-root (created or resumed)")
    parser.add_argument("--recipe", required=True, help="a recipe name (trainer/configs), a YAML file or inline YAML")
    parser.add_argument("--export", required=True, type=Path, help="the training rows (JSONL, `lema export`)")
    parser.add_argument("--runs-root", type=Path, default=None, help="default: the config's trainer.runs_root")
    parser.add_argument("--adapters-root", type=Path, default=None,
                        help="the adapter registry (default: $LEMA_ADAPTERS, else the config's trainer.adapters_root)")
    return parser.parse_args(argv)


def roots(args: argparse.Namespace) -> tuple[Path, Path]:
    from lema.core.config import load_config

    config = None if args.runs_root and (args.adapters_root or os.environ.get("LEMA_ADAPTERS")) else load_config()
    runs = args.runs_root or config.trainer.runs_root
    adapters = args.adapters_root or (Path(os.environ["LEMA_ADAPTERS"]) if os.environ.get("LEMA_ADAPTERS")
                                      else config.trainer.adapters_root)
    return Path(runs).resolve(), Path(adapters).resolve()


def prepare_run(runs_root: Path, run_id: str, recipe_source: str, export: Path) -> tuple[RunDir, bool]:
    """Rank 0: the run folder, created or resumed and marked running; (run, True) for a run that already succeeded.
    Everything that can refuse the run (recipe, export rows, a conflicting run) is checked here, before any rank
    loads a model."""
    import yaml

    from lema.trainer.recipe import load_recipe
    from lema.trainer.train import check_dataset

    recipe = load_recipe(recipe_source)  # an operator's command line: a name, a YAML file or inline YAML
    export = export.resolve()
    check_dataset(export)
    run = RunDir(runs_root / run_id)
    if (run.path / "run.json").exists():
        spec = run.spec()
        if spec["export_path"] != str(export) or load_recipe(spec["config_yaml"] or None, allow_paths=False) != recipe:
            raise RunConflict(f"run {run_id} exists with another recipe or export ({spec['export_path']}); "
                              "resume it with the same ones or choose a new --run-id")
        if run.state().state == "succeeded":
            return run, True
    else:
        run.path.mkdir(parents=True)
        # The resolved recipe, not the operator's text: the ranks (and a resume) read it from run.json, and a file
        # path would not say what ran.
        config_yaml = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
        (run.path / "run.json").write_text(json.dumps({"id": run_id, "config_yaml": config_yaml,
                                                       "export_path": str(export), "base_model": recipe.base_model}))
        run.write_state(RunState(id=run_id))
        run.event("state", state="queued")
    run.update(state="running", pid=os.getpid(), error="", finished_at="")
    run.event("state", state="running")
    return run, False


def watch_for_stall(run: RunDir) -> None:
    """Rank 0 after SIGTERM: record the run as failed if it is not final within STALL_S (see STALL_S)."""
    previous = signal.getsignal(signal.SIGTERM)
    armed = {"done": False}

    def mark_failed() -> None:
        if run.state().state not in TERMINAL:
            run.update(state="failed", finished_at=now(), error=f"stopped by SIGTERM and not at a step boundary "
                       f"{STALL_S:.0f} s later (another rank failed, or the job was stopped); the same command "
                       "resumes from the last checkpoint")
            run.event("state", state="failed")

    def on_sigterm(signum, frame) -> None:
        if callable(previous):
            previous(signum, frame)
        if not armed["done"]:
            armed["done"] = True
            timer = threading.Timer(STALL_S, mark_failed)
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_run_id(args.run_id)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    # Join the process group the launcher described (RANK, WORLD_SIZE, MASTER_ADDR...): NCCL on GPUs, gloo on CPUs
    # (accelerate picks gloo only when asked for the CPU). The Trainer later finds this group and uses it.
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=1800))
    rank, is_main, distributed = state.process_index, state.is_main_process, state.num_processes > 1
    wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT) if distributed else None
    try:
        runs_root, adapters_root = roots(args)
        run = RunDir(runs_root / args.run_id)
        status = {"ok": True, "done": False, "error": ""}
        if is_main:
            try:
                run, done = prepare_run(runs_root, args.run_id, args.recipe, args.export)
                status["done"] = done
            except Exception as exc:  # noqa: BLE001 - every rank must hear of it, or they would wait forever
                status = {"ok": False, "done": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        if distributed:  # the other ranks read run.json only once rank 0 has written it
            box = [status]
            dist.broadcast_object_list(box, src=0, group=wait_group)
            status = box[0]
        if not status["ok"]:
            if is_main:
                print(f"error: {status['error']}", file=sys.stderr)
            return 1
        if status["done"]:
            if is_main:
                print(f"run {args.run_id} already succeeded (adapter {run.state().adapter_id}): nothing to do")
            return 0

        stop = install_sigterm(run, main=is_main)
        if is_main:
            watch_for_stall(run)
            from lema.trainer.recipe import load_recipe
            from lema.trainer.train import rank_batch

            recipe = load_recipe(run.spec()["config_yaml"], allow_paths=False)
            try:
                micro, passes = rank_batch(recipe, state.num_processes)
                run.event("log", message=f"{state.num_processes} rank(s) ({state.backend or 'no process group'}): "
                                         f"{micro} rows x {passes} forward passes per rank per optimizer step, "
                                         f"{recipe.effective_batch} rows in all", world_size=state.num_processes)
            except ValueError:
                pass  # `train` refuses the batch on every rank, and rank 0 records why
        code = execute(run, should_stop=lambda: stop["requested"], registry_root=adapters_root, main=is_main)
        if is_main:
            final = run.state()
            print(f"run {run.id}: {final.state}" + (f", adapter {final.adapter_id}" if final.adapter_id else "")
                  + (f" ({final.error})" if final.error else ""), flush=True)
        if distributed and (code == 0 or is_main):
            # Rank 0 comes here after registering (or failing); the others wait for it, so the job ends when the
            # run does. A rank whose training failed leaves at once: the launcher then stops the job.
            try:
                dist.barrier(group=wait_group)
            except Exception as exc:  # noqa: BLE001 - rank 0 (or a peer) died: this rank's part did not finish
                print(f"rank {rank}: the final barrier failed ({type(exc).__name__}: {str(exc)[:300]})",
                      file=sys.stderr)
                return code or (0 if is_main else 1)
        return code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
