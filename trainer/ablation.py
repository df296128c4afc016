"""The paper's control experiment: from one export, train a CoT-only and a CoT + corrections (LEMA) adapter at
equal data size and compare their greedy accuracies (with 95% Wilson intervals) against the base model."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from lema.trainer.evaluate import EvalResult, evaluate, wilson
from lema.trainer.recipe import Recipe


@dataclass
class AblationRow:
    name: str
    data: str
    examples: int
    result: EvalResult
    adapter_dir: Path | None = None

    def cells(self) -> list[str]:
        low, high = wilson(self.result.correct, self.result.n)
        return [self.name, self.data, str(self.examples), f"{self.result.accuracy:.1%}", f"{low:.1%}–{high:.1%}",
                f"{self.result.correct}/{self.result.n}"]


def _count(path: Path) -> tuple[int, dict[str, int]]:
    kinds: dict[str, int] = {}
    for line in path.open():
        if line.strip():
            kind = json.loads(line)["type"]
            kinds[kind] = kinds.get(kind, 0) + 1
    return sum(kinds.values()), kinds


def run_ablation(recipe: Recipe, export_dir: Path, work_dir: Path, on_progress=None) -> list[AblationRow]:
    from lema.trainer.train import train

    from lema.core.model_resolve import resolve_model

    manifest = json.loads((export_dir / "manifest.json").read_text())
    size = manifest["mixes"]["size"]
    model_path = resolve_model(recipe.base_model)
    rows = [AblationRow("base", "-", 0, asyncio.run(evaluate(model_path, recipe.eval)))]
    for name, file in (("CoT-only", f"mix-cot-{size}.jsonl"), ("LEMA (CoT + corrections)", f"mix-lema-{size}.jsonl")):
        path = export_dir / file
        total, kinds = _count(path)
        run_dir = work_dir / name.split()[0].lower()
        result = train(recipe, path, run_dir, on_progress=(lambda e, n=name: on_progress(n, e)) if on_progress else None)
        evaluation = asyncio.run(evaluate(model_path, recipe.eval, result.adapter_dir))
        data = " + ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        rows.append(AblationRow(name, data, total, evaluation, result.adapter_dir))
    return rows
