"""Where do corrections pay? A grid of LEMA-style arms against CoT-only on the *validation* problems (never the test
problems), each cell with common random numbers, several seeds and what the run could see (mde_80).

    python bench/learning.py --exports e150=E150 e150step=E150STEP e600=E600 --work W [--cells A,B] [--seeds 0,1]
    python bench/learning.py --work W --report     # the table and heatmap of what has run so far

The exports are `lema export` folders of one collection (`--correction-format step` for the step cells; a larger
collection for the budget cells). Resumable: every trained and evaluated arm is kept under W/runs/<key>/ and a cell
that has its result is not run again; the CoT-only arm of a seed is trained once and shared by every cell with the
same CoT stream and recipe. Writes W/learning.json (every cell: LEMA-style − CoT-only with its 95% interval,
McNemar p per seed, discordance, mde_80, the hard split beside it, the reference log-likelihood difference) and
W/learning.png (the heatmap). The design (CELLS) is declared here before running; results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/trainer.py (a benchmark) would shadow the `trainer`
# package: the folder is not an import root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# The declared design: not every combination. Factors from the published evidence (docs/harness.md, 'Where corrections
# pay'): where the corrections enter (LoRA r=16 as today; full-rank LoRA r=128 on an unquantised base with the
# embeddings trainable, what Physics of LM 2.2 found needed for LoRA), the format (the paper's; `step`: the model's
# own correct steps as untrained context, the corrected steps as the target), the share of corrections (0.4 as the
# paper; 0.1, the range where retry data helped), the budget (40 vs 200 steps; 150 vs 600 collected problems), and a
# step-level preference arm (DPO with an SFT anchor) once its collapse is explained.
FULL_RANK = {"quantization": {"load_in_4bit": False}, "learning_rate": 5.0e-4,
             "lora": {"r": 128, "alpha": 256, "modules_to_save": ["embed_tokens", "lm_head"]}}


@dataclass(frozen=True)
class Cell:
    name: str
    export: str  # a key of --exports
    what: str  # one line: what the cell changes against today's setting
    setting: str = "main"
    ratio: float = 0.4
    overrides: dict = field(default_factory=dict)  # recipe overrides (both arms)
    # "sft": the LEMA arm trains on CoT + corrections; "dpo": the CoT-only adapter trained further with DPO on the
    # step-level pairs of the seed's LEMA corrections (lema.trainer.preference; an SFT loss as anchor)
    method: str = "sft"


CELLS = (
    Cell("A", "e150", "today: LoRA r=16, paper format, share 0.4, 40 steps, 150 problems"),
    Cell("B", "e150step", "step format", ),
    Cell("C", "e150", "share 0.1", ratio=0.1),
    Cell("D", "e150step", "step format, share 0.1", ratio=0.1),
    Cell("E", "e150", "200 steps", overrides={"max_steps": 200, "save_steps": 1000}),
    Cell("F", "e150step", "step format, 200 steps", overrides={"max_steps": 200, "save_steps": 1000}),
    Cell("G", "e600", "600 collected problems"),
    Cell("H", "e600step", "600 collected problems, step format"),
    Cell("I", "e150", "full-rank LoRA + embeddings, unquantised base", overrides=FULL_RANK),
    Cell("J", "e150step", "full-rank LoRA + embeddings, step format", overrides=FULL_RANK),
    Cell("K", "e150", "matched setting (CoT-only gets the corrected solutions)", setting="matched"),
    Cell("L", "e150", "step-level DPO + SFT anchor on the CoT-only adapter (first wrong step rejected)",
         method="dpo"),
)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _outcomes(result) -> dict:
    return {"outcomes": result.outcomes, "reference_logprobs": result.reference_logprobs,
            "reference_tokens": result.reference_tokens, "seconds": result.seconds, "n": result.n,
            "by_steps": {str(k): v for k, v in result.by_steps.items()}}


def _result(data: dict):
    from lema.trainer.evaluate import EvalResult

    return EvalResult(correct=sum(data["outcomes"]), n=data["n"], outcomes=data["outcomes"],
                      reference_logprobs=data["reference_logprobs"], reference_tokens=data["reference_tokens"],
                      seconds=data["seconds"])


def run_arm(recipe, arm, seed: int, total: int, work: Path, model_path: str, say) -> dict:
    """Train one arm of one seed on its common-random-numbers stream and evaluate it on validation and
    validation_hard; cached by the stream's content and the recipe (a CoT-only arm is shared across cells)."""
    from lema.trainer.train import train

    rows = arm.stream(total)
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    run_dir = work / "runs" / _key(text, recipe.model_dump(exclude={"eval"}), seed)
    trained_file = run_dir / "trained.json"
    if not trained_file.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train.jsonl").write_text(text)
        started = time.perf_counter()
        result = train(recipe.model_copy(update={"seed": seed, "shuffle": False}), run_dir / "train.jsonl", run_dir)
        trained_file.write_text(json.dumps({"arm": arm.name, "seed": seed, "rows": arm.describe(),
                                            "train_seconds": time.perf_counter() - started, "steps": result.steps}))
    return _evaluated(run_dir, json.loads(trained_file.read_text()), recipe, model_path, arm.describe(), say)


def run_dpo_arm(recipe, cot_dir: Path, pairs: Path, keep: set[str], seed: int, work: Path, model_path: str,
                say) -> dict:
    """The DPO arm of one seed: the CoT-only adapter in `cot_dir` trained further on the pairs of `keep`."""
    from lema.trainer.preference import train_preference

    run_dir = work / "runs" / _key(cot_dir.name, "dpo", recipe.preference.model_dump(), sorted(keep), seed)
    trained_file = run_dir / "trained.json"
    if not trained_file.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result, n = train_preference(recipe.model_copy(update={"seed": seed}), pairs, cot_dir / "adapter", run_dir,
                                     keep=keep)
        trained_file.write_text(json.dumps({"arm": "dpo", "seed": seed, "rows": f"CoT-only adapter + {n} pairs",
                                            "train_seconds": time.perf_counter() - started,
                                            "steps": result.steps}))
    trained = json.loads(trained_file.read_text())
    return _evaluated(run_dir, trained, recipe, model_path, trained["rows"], say)


def _evaluated(run_dir: Path, out: dict, recipe, model_path: str, rows: str, say) -> dict:
    """`out` with the run's validation and validation_hard results (each evaluated once per split and size)."""
    from lema.trainer.evaluate import evaluate

    out["run_dir"] = run_dir.name
    for split, n in (("validation", recipe.eval.validation_problems), ("validation_hard", recipe.eval.hard_problems)):
        done = run_dir / f"{split}-{n}.json"  # evaluated once per split and size
        if not done.exists():
            done.write_text(json.dumps(_outcomes(asyncio.run(evaluate(model_path, recipe.eval,
                                                                      run_dir / "adapter", split=split)))))
        out[split] = json.loads(done.read_text())
    say(f"  {out['arm']} seed {out['seed']}: {rows}: train {out['train_seconds']:.0f} s, validation "
        f"{sum(out['validation']['outcomes'])}/{out['validation']['n']}, hard "
        f"{sum(out['validation_hard']['outcomes'])}/{out['validation_hard']['n']}")
    return out


def run_cell(cell: Cell, exports: dict[str, Path], seeds: list[int], work: Path, base: dict, say) -> dict:
    from lema.core.model_resolve import resolve_model
    from lema.trainer.ablation import compare, training_rows
    from lema.trainer.recipe import load_recipe
    from lema.trainer.settings import build_arms

    recipe = load_recipe("tiny", _eval_overrides(cell.overrides))
    model_path = resolve_model(recipe.base_model)
    runs: dict[str, list[dict]] = {"cot": [], "lema": []}
    for seed in seeds:
        arms = build_arms(exports[cell.export], cell.setting, cell.ratio, seed)
        total = training_rows(recipe, arms)
        runs["cot"].append(run_arm(recipe, arms["cot"], seed, total, work, model_path, say))
        if cell.method == "dpo":
            keep = {r.get("correction_id") for r in arms["lema"].rows if r["type"] == "correction"}
            runs["lema"].append(run_dpo_arm(recipe, work / "runs" / runs["cot"][-1]["run_dir"],
                                            exports[cell.export] / "preference.jsonl", keep, seed, work,
                                            model_path, say))
        else:
            runs["lema"].append(run_arm(recipe, arms["lema"], seed, total, work, model_path, say))
    out = {"cell": asdict(cell), "seeds": seeds, "rows": {k: v[0]["rows"] for k, v in runs.items()},
           "train_seconds": {k: [r["train_seconds"] for r in v] for k, v in runs.items()}}
    for split in ("validation", "validation_hard"):
        lema = [_result(r[split]) for r in runs["lema"]]
        cot = [_result(r[split]) for r in runs["cot"]]
        base_results = [_result(base[split])] * len(seeds)
        out[split] = {"lema_vs_cot": compare(lema, cot, seeds, "lema", "cot"),
                      "cot_vs_base": compare(cot, base_results, seeds, "cot", "base"),
                      "accuracy": {"cot": [r.accuracy for r in cot], "lema": [r.accuracy for r in lema],
                                   "base": base_results[0].accuracy}}
    return out


def _eval_overrides(overrides: dict) -> dict:
    """The grid's evaluation: 2,000 validation problems (at the arms' measured discordance, about 17%, two seeds of
    1,000 resolve only about 2.7 points) and 200 hard ones, one thread, batched, with the reference log-likelihood."""
    return {**overrides, "eval": {"validation_problems": 2000, "hard_problems": 200, "threads": 1, "batch_size": 128,
                                  "reference_logprob": True}}


def base_results(work: Path, say) -> dict:
    from lema.core.model_resolve import resolve_model
    from lema.trainer.evaluate import evaluate
    from lema.trainer.recipe import load_recipe

    path = work / "base-2000.json"
    if path.exists():
        return json.loads(path.read_text())
    recipe = load_recipe("tiny", _eval_overrides({}))
    out = {split: _outcomes(asyncio.run(evaluate(resolve_model(recipe.base_model), recipe.eval, split=split)))
           for split in ("validation", "validation_hard")}
    say(f"base: validation {sum(out['validation']['outcomes'])}/{out['validation']['n']}")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def rescore(work: Path, say) -> None:
    """Recompute the reference log-likelihoods of every cached evaluation (the outcomes stay): for results scored
    before the scorer stopped at the end token (it scored the chat template's newline after it too)."""
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.formats import cot_prompt
    from lema.core.model_resolve import resolve_model
    from lema.trainer.evaluate import eval_problems
    from lema.trainer.recipe import load_recipe

    settings = load_recipe("tiny", _eval_overrides({})).eval
    problems = {split: eval_problems(settings, split) for split in ("validation", "validation_hard")}
    targets = [(None, work / "base-2000.json")] + [(d / "adapter", d) for d in sorted((work / "runs").iterdir())
                                                  if (d / "adapter").exists()]
    for adapter, where in targets:
        engine = TransformersEngine(resolve_model("lema-tiny"), batch_size=128, threads=1,
                                    merge_adapter=str(adapter) if adapter else None)
        try:
            for split, items in problems.items():
                path = where if adapter is None else where / f"{split}-{len(items)}.json"
                if not path.exists():
                    continue
                data = json.loads(path.read_text())
                section = data[split] if adapter is None else data
                scores = asyncio.run(engine.completion_logprobs([(cot_prompt(p.question), p.gold_solution)
                                                                 for p in items]))
                section["reference_logprobs"] = [lp for lp, _ in scores]
                section["reference_tokens"] = [t for _, t in scores]
                path.write_text(json.dumps(data))
        finally:
            asyncio.run(engine.close())
        say(f"rescored {where.name}")


def report(work: Path) -> str:
    """learning.json's cells as a markdown table, and the heatmap (learning.png)."""
    data = json.loads((work / "learning.json").read_text())
    lines = ["| cell | what | LEMA-style arm | validation: LEMA − CoT-only [95% CI] | McNemar p | discordance | "
             "mde_80 | CoT-only − base | hard split: LEMA − CoT-only | ref. log-lik./token |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for name in sorted(data):
        c = data[name]
        v, h = c["validation"]["lema_vs_cot"], c["validation_hard"]["lema_vs_cot"]
        cb = c["validation"]["cot_vs_base"]
        ll = v.get("reference_logprob")
        lines.append(
            f"| {name} | {c['cell']['what']} | {c['rows']['lema']} | {100 * v['mean_diff']:+.1f} "
            f"[{100 * v['ci95'][0]:+.1f}, {100 * v['ci95'][1]:+.1f}] | "
            f"{', '.join(f'{p:.2g}' for p in v['mcnemar_p'])} | {100 * v['discordance']:.1f}% | "
            f"{100 * v['mde_80']:.1f} | {100 * cb['mean_diff']:+.1f} | {100 * h['mean_diff']:+.1f} "
            f"[{100 * h['ci95'][0]:+.1f}, {100 * h['ci95'][1]:+.1f}] | "
            + (f"{ll['mean_diff']:+.4f} [{ll['ci95'][0]:+.4f}, {ll['ci95'][1]:+.4f}]" if ll else "-") + " |")
    _heatmap(data, work / "learning.png")
    return "\n".join(lines)


def _heatmap(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted(data)
    columns = (("validation", "validation"), ("validation_hard", "hard (7-8 steps)"))
    values = np.array([[100 * data[n][split]["lema_vs_cot"]["mean_diff"] for split, _ in columns] for n in names])
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(names) + 1.5))
    bound = max(2.0, float(np.abs(values).max()))
    image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    for i, n in enumerate(names):
        for j, (split, _) in enumerate(columns):
            p = data[n][split]["lema_vs_cot"]
            ax.text(j, i, f"{values[i, j]:+.1f}\n[{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}]",
                    ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), [label for _, label in columns])
    ax.set_yticks(range(len(names)), [f"{n}: {data[n]['cell']['what'][:48]}" for n in names], fontsize=7)
    ax.set_title("LEMA-style arm − CoT-only on validation (points; 95% paired CI)")
    fig.colorbar(image, ax=ax, label="points")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", nargs="*", default=[], help="name=folder for every export a cell names")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cells", default=",".join(c.name for c in CELLS), help="which cells, in this order")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--report", action="store_true", help="print the table of what has run; run nothing")
    parser.add_argument("--rescore", action="store_true", help="recompute the cached evaluations' reference "
                                                               "log-likelihoods, then recompute the cells")
    args = parser.parse_args()
    if args.report:
        print(report(args.work))
        return
    exports = {k: Path(v) for k, v in (item.split("=", 1) for item in args.exports)}
    seeds = [int(s) for s in args.seeds.split(",")]
    by_name = {c.name: c for c in CELLS}
    unknown = [name for name in args.cells.split(",") if name not in by_name]
    if unknown:
        parser.error(f"--cells: no cell named {', '.join(unknown)} (cells: {', '.join(by_name)})")
    wanted = [by_name[name] for name in args.cells.split(",")]
    missing = sorted({c.export for c in wanted} - set(exports))
    if missing:
        parser.error(f"--exports has no folder for {', '.join(missing)}")

    def say(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "learning.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.rescore:
        rescore(args.work, say)
    base = base_results(args.work, say)
    for cell in wanted:
        if not args.rescore and cell.name in results and results[cell.name]["seeds"] == seeds and \
                results[cell.name]["validation"]["lema_vs_cot"]["problems"] == 2000:
            continue
        say(f"cell {cell.name}: {cell.what}")
        results[cell.name] = run_cell(cell, exports, seeds, args.work, base, say)
        v = results[cell.name]["validation"]["lema_vs_cot"]
        say(f"cell {cell.name}: LEMA − CoT-only {100 * v['mean_diff']:+.1f} [{100 * v['ci95'][0]:+.1f}, "
            f"{100 * v['ci95'][1]:+.1f}], mde_80 {100 * v['mde_80']:.1f}")
        results_path.write_text(json.dumps(results, indent=1))
    print(report(args.work))


if __name__ == "__main__":
    main()
