"""One training run, in its own process: train -> evaluate -> register the adapter. Events go to the run folder.

    python -m lema.trainer.worker RUN_DIR
"""

from __future__ import annotations

import asyncio
import signal
import sys
import traceback
from pathlib import Path

from lema.trainer.runs import RunDir, now


def main(run_path: str) -> int:
    run = RunDir(Path(run_path))
    spec = run.spec()
    stop = {"requested": False}

    def on_sigterm(signum, frame) -> None:  # CancelRun: finish the current step, checkpoint, exit
        stop["requested"] = True
        run.event("log", message="cancellation requested: stopping at the next step")

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        from lema.trainer.ablation import best_checkpoint
        from lema.trainer.evaluate import evaluate
        from lema.trainer.recipe import load_recipe
        from lema.trainer.registry import AdapterRegistry
        from lema.trainer.train import latest_checkpoint, train

        from lema.core.model_resolve import resolve_model

        recipe = load_recipe(spec["config_yaml"] or None, allow_paths=False)  # a client's text: name or YAML
        resume = latest_checkpoint(run.path / "checkpoints")
        run.event("log", message=f"resuming from {resume.name}" if resume else "starting from the base model")

        def progress(event: dict) -> None:
            run.event("progress", **event)
            run.update(step=event["step"], total_steps=event["total_steps"])

        result = train(recipe, Path(spec["export_path"]), run.path, on_progress=progress,
                       should_stop=lambda: stop["requested"])
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
        # Validation metrics gate promotion; the test metrics are reported, never used to choose.
        evaluation = asyncio.run(evaluate(model_path, recipe.eval, adapter_dir))
        metrics = evaluation.metrics() | validation.metrics(prefix="validation_") | {
            "train_loss": result.train_loss, "train_seconds": result.seconds,
            "train_tokens_per_second": result.tokens_per_second}
        run.event("eval", metrics=metrics)
        record = AdapterRegistry().register(
            adapter_dir, base_model=recipe.base_model, prefix=f"{recipe.name}", metrics=metrics,
            export_id=Path(spec["export_path"]).parent.name, config_yaml=spec["config_yaml"], run_id=run.id)
        run.update(state="succeeded", adapter_id=record.id, metrics=metrics, finished_at=now())
        run.event("state", state="succeeded", adapter_id=record.id)
        return 0
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, not lost
        run.event("log", message=traceback.format_exc()[-4000:])
        run.update(state="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=now())
        run.event("state", state="failed")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
