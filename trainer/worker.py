"""One training run, in its own process: train -> evaluate -> register the adapter. Events go to the run folder.

    python -m lema.trainer.worker RUN_DIR

`execute` is the whole run; the distributed entry (`lema.trainer.distributed`) calls it on every rank with
`main=False` on all ranks but rank 0, so that rank 0 alone evaluates, registers and writes the run's state and events.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from lema.trainer.runs import RunDir, now


def install_sigterm(run: RunDir, main: bool = True) -> dict:
    """CancelRun (SIGTERM): finish the current step, checkpoint, exit. Returns the flag the handler sets."""
    stop = {"requested": False}

    def on_sigterm(signum, frame) -> None:
        stop["requested"] = True
        if main:
            run.event("log", message="cancellation requested: stopping at the next step")

    signal.signal(signal.SIGTERM, on_sigterm)
    return stop


def execute(run: RunDir, should_stop: Callable[[], bool], registry_root: Path | None = None,
            main: bool = True) -> int:
    """Train the run's recipe on its export (resuming from its newest checkpoint), then, on the main process only,
    evaluate on the validation and test problems and register the adapter; 0 on success or cancellation, 1 on
    failure (recorded in the run's state by the main process; another rank prints its traceback).

    `registry_root`: the adapter registry (default: $LEMA_ADAPTERS, see `registry.default_root`)."""
    spec = run.spec()
    try:
        from lema.core.model_resolve import resolve_model
        from lema.trainer.ablation import best_checkpoint
        from lema.trainer.evaluate import evaluate
        from lema.trainer.gate import Outcomes
        from lema.trainer.recipe import load_recipe
        from lema.trainer.registry import AdapterRegistry
        from lema.trainer.train import latest_checkpoint, train, world

        recipe = load_recipe(spec["config_yaml"] or None, allow_paths=False)  # a client's text: name or YAML
        resume = latest_checkpoint(run.path / "checkpoints")
        if main:
            run.event("log", message=f"resuming from {resume.name}" if resume else "starting from the base model")
            world_size = world()[2]
            saved_by = (len(list(resume.glob("rng_state_*.pth"))) or 1) if resume else world_size
            if saved_by != world_size:
                # The steps, optimizer and data position carry over (the global batch is the recipe's on any rank
                # count); the Trainer restores a random-number state only for a rank that saved one, so dropout
                # masks differ from an uninterrupted run's.
                run.event("log", message=f"{resume.name} was saved by {saved_by} rank(s), resumed on {world_size}: "
                                         "random-number streams start afresh")

        def progress(event: dict) -> None:
            run.event("progress", **event)
            run.update(step=event["step"], total_steps=event["total_steps"])

        result = train(recipe, Path(spec["export_path"]), run.path, on_progress=progress if main else None,
                       should_stop=should_stop)
        if not main:
            return 0
        if result.world_size > 1:
            run.event("log", message=f"trained on {result.world_size} ranks: " + "; ".join(
                f"rank {r['rank']} {r['rows']} rows in {r['forward_passes']} forward passes" for r in result.ranks),
                world_size=result.world_size, ranks=result.ranks)
        if result.cancelled:
            run.update(state="cancelled", finished_at=now(), step=result.steps)
            run.event("state", state="cancelled")
            return 0
        run.update(state="evaluating", step=result.steps)
        run.event("state", state="evaluating")
        model_path = resolve_model(recipe.base_model)
        adapter_dir, validation = result.adapter_dir, None
        if recipe.select_checkpoint == "best_validation":
            adapter_dir, validation = asyncio.run(best_checkpoint(model_path, recipe, run.path, result.adapter_dir))
            run.event("log", message=f"kept {adapter_dir.name} (best validation accuracy {validation.accuracy:.3f})")
        else:
            validation = asyncio.run(evaluate(model_path, recipe.eval, adapter_dir, split="validation"))
        # The gate pairs per-problem outcomes on its own validation problems (eval.gate_problems, after those a
        # checkpoint was chosen on); with none set it reuses the validation problems, marked as chosen on when a
        # checkpoint was chosen there (the gate then refuses: lema.trainer.gate).
        if recipe.eval.gate_problems:
            on_gate = asyncio.run(evaluate(model_path, recipe.eval.model_copy(update={"reference_logprob": False}),
                                           adapter_dir, split="gate"))
            gate_outcomes = Outcomes.of(on_gate)
        else:
            gate_outcomes = Outcomes.of(validation, chosen_on=recipe.select_checkpoint == "best_validation")
        # The test metrics are reported, never used to choose.
        evaluation = asyncio.run(evaluate(model_path, recipe.eval, adapter_dir))
        metrics = evaluation.metrics() | validation.metrics(prefix="validation_") | {
            "gate_accuracy": gate_outcomes.accuracy, "gate_n": float(gate_outcomes.n),
            "train_loss": result.train_loss, "train_seconds": result.seconds,
            "train_tokens_per_second": result.tokens_per_second, "train_world_size": float(result.world_size)}
        run.event("eval", metrics=metrics)
        record = AdapterRegistry(registry_root).register(
            adapter_dir, base_model=recipe.base_model, prefix=f"{recipe.name}", metrics=metrics,
            export_id=Path(spec["export_path"]).parent.name, config_yaml=spec["config_yaml"], run_id=run.id,
            gate_outcomes=gate_outcomes.to_json())
        run.update(state="succeeded", adapter_id=record.id, metrics=metrics, finished_at=now())
        run.event("state", state="succeeded", adapter_id=record.id)
        return 0
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, not lost
        if not main:  # only rank 0 writes the run folder; this rank's traceback goes to its log
            traceback.print_exc()
            return 1
        run.event("log", message=traceback.format_exc()[-4000:])
        run.update(state="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=now())
        run.event("state", state="failed")
        return 1


def main(run_path: str) -> int:
    run = RunDir(Path(run_path))
    stop = install_sigterm(run)
    return execute(run, should_stop=lambda: stop["requested"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
