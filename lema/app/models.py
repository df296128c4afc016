"""`lema models ...`: pretrain and evaluate lema-tiny (torch is imported inside the commands)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lema.tiny import default_model_path
from lema.tiny.recipe import DEFAULT_RECIPE

models_app = typer.Typer(help="The embedded default model lema-tiny: pretrain it from scratch, evaluate it.",
                         no_args_is_help=True)


@models_app.command("pretrain-tiny")
def pretrain_tiny(
    recipe: Path = typer.Option(DEFAULT_RECIPE, "--recipe", help="Recipe YAML (model, data, curriculum)."),
    out: Path = typer.Option(default_model_path(), "--out", help="Where to write weights and tokenizer."),
    seed: int | None = typer.Option(None, "--seed", help="Overrides the recipe's seed."),
) -> None:
    """Train lema-tiny from scratch on synthetic problems (about 20-35 minutes on this 2-core machine, 1 thread)."""
    from lema.tiny.recipe import load_recipe
    from lema.trainer.tiny.pretrain import pretrain

    result = pretrain(load_recipe(recipe), out, seed)
    typer.echo(f"saved to {out}: {result['steps']} steps, {result['wall_seconds']} s, "
               f"validation accuracy {result['validation'][-1]['accuracy']:.3f}")


@models_app.command("eval-tiny")
def eval_tiny(
    model: Path = typer.Option(default_model_path(), "--model", help="Model folder (transformers format)."),
    n: int = typer.Option(200, "--n", help="Held-out test problems (mixed 2-6 steps)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test problems."),
    ood: bool = typer.Option(False, "--ood", help="Also evaluate n problems of the held-out family."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    format_loss: bool = typer.Option(False, "--format-loss",
                                     help="Also the mean loss per completion token on CoT rows and on paper-format "
                                          "correction rows of the same problems (how well the model reads each)."),
) -> None:
    """Greedy accuracy on held-out synthetic test problems, overall and by step count."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from lema.core.synthetic import generate
    from lema.trainer.tiny.evaluate import completion_losses, evaluate_loaded, load_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    problems = generate(n, seed=seed, split="test")
    loaded, tokenizer = load_model(model)
    report = {"test": evaluate_loaded(loaded, tokenizer, problems, model_id=str(model)).summary()}
    if ood:
        report["ood"] = evaluate_loaded(loaded, tokenizer, generate(n, seed=seed, split="ood"), model_id=str(model),
                                        split="ood").summary()
    losses = completion_losses(model, problems, seed=seed) if format_loss else None
    if as_json:
        if losses:
            report["completion_loss"] = losses
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"lema-tiny greedy accuracy ({model})")
    for column in ("split", "slice", "n", "accuracy"):
        table.add_column(column)
    for split, summary in report.items():
        rows = [("overall", summary["overall"])]
        rows += [(f"{k} steps", v) for k, v in summary["by_steps"].items()]
        rows += [(family, v) for family, v in summary["by_family"].items()]
        for name, v in rows:
            table.add_row(split, name, str(v["n"]), f"{v['accuracy']:.1%}")
    Console().print(table)
    for name, loss in (losses or {}).items():
        typer.echo(f"{name} completions: {loss['loss_per_token']:.3f} nats/token ({loss['rows']} rows, "
                   f"{loss['tokens']} tokens)")
