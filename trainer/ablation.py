"""The paper's comparisons as a harness: for one setting (`lema.trainer.settings`: main, equal, matched) and several
seeds, train a CoT-only and a LEMA adapter from one export for the same number of optimizer steps, evaluate every
arm greedily on the same held-out test problems, and report per seed and pooled: accuracy, the paired difference
LEMA - CoT-only with a 95% bootstrap interval over problems and seeds, and an exact McNemar p-value per seed.

Writes `ablation.json` (schema in `AblationReport.to_json`) and `ablation.png` into the work folder. The test
problems are touched only for this table; checkpoint choice (`select_checkpoint: best_validation`) and promotion
use the validation split.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lema.trainer.evaluate import EvalResult
from lema.trainer.recipe import Recipe
from lema.trainer.settings import build_arms
from lema.trainer.stats import mcnemar_exact, paired_bootstrap, paired_power, wilson

ARMS = ("cot", "lema")
EXTRA_ARMS = ("dpo",)  # beyond the paper, optional: step-level preference on top of the CoT-only adapter
ARM_LABELS = {"base": "base", "cot": "CoT-only", "lema": "LEMA", "dpo": "CoT-only + DPO"}

EventFn = Callable[[str], None]


@dataclass
class ArmRun:
    arm: str
    seed: int
    examples: int
    data: str
    test: EvalResult
    validation: EvalResult | None
    adapter_dir: Path
    steps: int
    train_seconds: float
    hard: EvalResult | None = None  # the hard split (more steps than any training problem), when evaluated


@dataclass
class AblationReport:
    setting: str
    seeds: list[int]
    correction_ratio: float
    recipe: Recipe
    base: EvalResult
    base_validation: EvalResult | None
    runs: list[ArmRun] = field(default_factory=list)
    base_hard: EvalResult | None = None
    _paired: dict = field(default_factory=dict, repr=False, compare=False)

    def arm_runs(self, arm: str) -> list[ArmRun]:
        return sorted((r for r in self.runs if r.arm == arm), key=lambda r: self.seeds.index(r.seed))

    def arms(self) -> tuple[str, ...]:
        return ARMS + tuple(arm for arm in EXTRA_ARMS if self.arm_runs(arm))

    def results(self, arm: str, split: str = "test") -> list[EvalResult] | None:
        """Per seed, the arm's results on a split ("test", "hard", "validation"); the base model's repeated for
        every seed; None when that split was not evaluated."""
        if arm == "base":
            one = {"test": self.base, "hard": self.base_hard, "validation": self.base_validation}[split]
            return None if one is None else [one] * len(self.seeds)
        found = [{"test": r.test, "hard": r.hard, "validation": r.validation}[split] for r in self.arm_runs(arm)]
        return None if not found or any(r is None for r in found) else found

    def paired(self, a: str, b: str, split: str = "test") -> dict | None:
        """Paired comparison of arm a against arm b ("base": the base model, the same for every seed) on a split:
        `compare` of their per-seed results; None when the split was not evaluated for both."""
        key = (a, b, split, len(self.runs))  # a bootstrap of thousands of problems takes seconds: computed once
        if key not in self._paired:
            x, y = self.results(a, split), self.results(b, split)
            self._paired[key] = None if x is None or y is None else compare(x, y, self.seeds, a, b)
        return self._paired[key]

    def validation_paired(self, a: str, b: str) -> dict | None:
        """arm a - arm b on the validation problems (what a configuration is chosen on; the test table is not)."""
        return self.paired(a, b, "validation")

    def to_json(self) -> dict:
        comparisons = [("lema", "cot"), ("lema", "base"), ("cot", "base")]
        if "dpo" in self.arms():
            comparisons += [("dpo", "cot"), ("dpo", "lema")]
        arms = {"base": {"examples": 0, "accuracy": [self.base.accuracy] * len(self.seeds),
                         "hard_accuracy": [self.base_hard.accuracy] * len(self.seeds) if self.base_hard else None,
                         "validation_accuracy": self.base_validation.accuracy if self.base_validation else None}}
        for arm in self.arms():
            runs = self.arm_runs(arm)
            arms[arm] = {
                "examples": runs[0].examples if runs else 0,
                "hard_accuracy": [r.hard.accuracy for r in runs] if all(r.hard for r in runs) else None,
                "problems_per_second": [round(r.test.problems_per_second, 1) for r in runs],
                "data": runs[0].data if runs else "",
                "accuracy": [r.test.accuracy for r in runs],
                "correct": [r.test.correct for r in runs],
                "validation_accuracy": [r.validation.accuracy if r.validation else None for r in runs],
                "steps": [r.steps for r in runs],
                "train_seconds": [round(r.train_seconds, 1) for r in runs],
                "adapters": [str(r.adapter_dir) for r in runs],
            }
        return {
            "setting": self.setting,
            "seeds": self.seeds,
            "eval_problems": self.base.n,
            "eval_split": self.base.split,
            "correction_ratio": self.correction_ratio,
            "recipe": {"name": self.recipe.name, "base_model": self.recipe.base_model,
                       "max_steps": self.recipe.max_steps, "epochs": self.recipe.epochs,
                       "batch_size": self.recipe.batch_size, "learning_rate": self.recipe.learning_rate,
                       "max_seq_len": self.recipe.max_seq_len, "select_checkpoint": self.recipe.select_checkpoint},
            "arms": arms,
            # Declared before any test result was looked at (docs/harness.md, 'Which split is primary'): the in-distribution
            # test split decides; the hard split is reported beside it.
            "primary_split": "test",
            "hard_problems": self.base_hard.n if self.base_hard else 0,
            "paired": {f"{a}_vs_{b}": self.paired(a, b) for a, b in comparisons},
            **({"paired_hard": {f"{a}_vs_{b}": self.paired(a, b, "hard") for a, b in comparisons}}
               if self.base_hard is not None else {}),
            **({"validation_paired": {f"{a}_vs_{b}": self.paired(a, b, "validation") for a, b in comparisons}}
               if self.base_validation is not None else {}),
        }


def compare(a: Sequence[EvalResult], b: Sequence[EvalResult], seeds: Sequence[int], name_a: str = "a",
            name_b: str = "b", effect: float = 0.02) -> dict:
    """Arm a against arm b on the same problems, one result per seed: the mean paired difference with its 95%
    bootstrap interval (over problems and seeds), the exact McNemar test per seed, what the design can see
    (`discordance`, `seed_sd`, `se`, `mde_80`, the problems `mde_80` would need to reach `effect`), and, where both
    scored them, the same for the reference solutions' log-likelihood per token (a continuous, lower-variance
    measure of the same problems)."""
    x, y = [r.outcomes for r in a], [r.outcomes for r in b]
    diff = paired_bootstrap(x, y)
    per_seed = []
    for seed, xs, ys in zip(seeds, x, y):
        p, wins, losses = mcnemar_exact(xs, ys)
        one = paired_bootstrap([xs], [ys])
        per_seed.append({"seed": seed, "diff": one.mean_diff, "ci95": list(one.ci95), "mcnemar_p": p,
                         "discordance": (wins + losses) / len(xs), f"{name_a}_only_right": wins,
                         f"{name_b}_only_right": losses})
    out = {"mean_diff": diff.mean_diff, "ci95": list(diff.ci95), "mcnemar_p": [s["mcnemar_p"] for s in per_seed],
           "per_seed": per_seed, **paired_power(x, y).to_json(effect)}
    if all(r.reference_logprobs for r in (*a, *b)):
        def per_token(r: EvalResult) -> list[float]:
            return [lp / max(t, 1) for lp, t in zip(r.reference_logprobs, r.reference_tokens)]

        lx, ly = [per_token(r) for r in a], [per_token(r) for r in b]
        ll = paired_bootstrap(lx, ly)
        power = paired_power(lx, ly)
        out["reference_logprob"] = {"unit": "nats per reference-solution token", "mean_diff": ll.mean_diff,
                                    "ci95": list(ll.ci95), "se": power.se, "mde_80": power.mde_80,
                                    "seed_sd": power.seed_sd}
    return out


def training_rows(recipe: Recipe, arms: dict) -> int:
    """Rows each arm trains on (the same for both: common random numbers need equal steps): max_steps x the
    effective batch, or, for an epochs recipe, the largest arm's rows x epochs rounded up to whole batches."""
    batch = recipe.effective_batch
    if recipe.max_steps > 0:
        return recipe.max_steps * batch
    largest = max(len(arm.rows) for arm in arms.values())
    return max(1, math.ceil(recipe.epochs * largest / batch)) * batch


def run_ablation(recipe: Recipe, export_dir: Path, work_dir: Path, setting: str = "main",
                 seeds: Sequence[int] = (0,), correction_ratio: float = 0.4,
                 on_progress: Callable[[str, dict], None] | None = None,
                 on_event: EventFn | None = None, validation: bool = False,
                 preference: bool = False) -> AblationReport:
    """Train and evaluate both arms of `setting` for every seed; write ablation.json and ablation.png.
    `validation`: also measure every kept adapter (and the base model) on the validation split, as promotion
    needs; `select_checkpoint: best_validation` implies it. `preference`: a third arm per seed, the CoT-only
    adapter trained further with DPO on the step-level pairs of the seed's LEMA corrections (`preference.jsonl`)."""
    from lema.core.model_resolve import resolve_model
    from lema.trainer.evaluate import evaluate
    from lema.trainer.preference import train_preference
    from lema.trainer.train import train

    say = on_event or (lambda message: None)
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    # Build every seed's arms first: a bad export fails before any training.
    plans = {seed: build_arms(export_dir, setting, correction_ratio, seed) for seed in seeds}
    model_path = resolve_model(recipe.base_model)
    select = recipe.select_checkpoint == "best_validation"
    validate = validation or select
    say(f"base model: {recipe.eval.problems} test problems (greedy)")
    # Every evaluation loads the model with the adapter merged in (the fastest to generate).
    base = asyncio.run(evaluate(model_path, recipe.eval))
    base_validation = asyncio.run(evaluate(model_path, recipe.eval, split="validation")) if validate else None
    hard = recipe.eval.hard_problems > 0
    base_hard = asyncio.run(evaluate(model_path, recipe.eval, split="hard")) if hard else None
    report = AblationReport(setting, seeds, correction_ratio, recipe, base, base_validation, base_hard=base_hard)
    # Common random numbers: each arm's file is its stream of exactly the rows it trains on, in order (the shared
    # CoT rows in the same order in both arms), trained in that order; TRL seeds the adapter's initialisation.
    in_order = recipe.model_copy(update={"shuffle": False})

    def measure(run_dir: Path, trained: Path) -> tuple[Path, EvalResult | None, EvalResult, EvalResult | None]:
        """The adapter a run keeps (its last, or its best checkpoint on validation), its validation, test and hard
        results."""
        adapter_dir, on_validation = trained, None
        if select:
            adapter_dir, on_validation = asyncio.run(best_checkpoint(model_path, recipe, run_dir, trained))
        elif validate:
            on_validation = asyncio.run(evaluate(model_path, recipe.eval, adapter_dir, split="validation"))
        on_hard = asyncio.run(evaluate(model_path, recipe.eval, adapter_dir, split="hard")) if hard else None
        return adapter_dir, on_validation, asyncio.run(evaluate(model_path, recipe.eval, adapter_dir)), on_hard

    def progress(name: str):
        return (lambda event: on_progress(name, event)) if on_progress else None

    for seed in seeds:
        seeded = recipe.model_copy(update={"seed": seed})
        total = training_rows(recipe, plans[seed])
        for arm_name in ARMS:
            arm = plans[seed][arm_name]
            run_dir = work_dir / f"seed{seed}" / arm_name
            say(f"seed {seed}: training {ARM_LABELS[arm_name]} on {arm.describe()} ({total} rows in order)")
            result = train(in_order.model_copy(update={"seed": seed}), arm.write(run_dir / "train.jsonl", total),
                           run_dir, on_progress=progress(f"{ARM_LABELS[arm_name]} seed {seed}"))
            adapter_dir, on_validation, evaluation, on_hard = measure(run_dir, result.adapter_dir)
            say(f"seed {seed}: {ARM_LABELS[arm_name]} {evaluation.correct}/{evaluation.n} = "
                f"{evaluation.accuracy:.1%} on the test problems ({evaluation.problems_per_second:.0f} problems/s)")
            report.runs.append(ArmRun(arm_name, seed, len(arm.rows), arm.describe(), evaluation, on_validation,
                                      adapter_dir, result.steps, result.seconds, on_hard))
        if preference:  # the same corrections as this seed's LEMA arm, as pairs, on top of its CoT-only adapter
            chosen = {row.get("correction_id") for row in plans[seed]["lema"].rows if row["type"] == "correction"}
            cot_run = next(r for r in report.runs if r.arm == "cot" and r.seed == seed)
            run_dir = work_dir / f"seed{seed}" / "dpo"
            say(f"seed {seed}: DPO on the step-level pairs of its {len(chosen)} corrections, from the CoT-only adapter")
            result, pairs = train_preference(seeded, export_dir / "preference.jsonl", cot_run.adapter_dir, run_dir,
                                             keep=chosen, on_progress=progress(f"DPO seed {seed}"))
            adapter_dir, on_validation, evaluation, on_hard = measure(run_dir, result.adapter_dir)
            say(f"seed {seed}: {ARM_LABELS['dpo']} {evaluation.correct}/{evaluation.n} = {evaluation.accuracy:.1%}")
            report.runs.append(ArmRun("dpo", seed, pairs, f"CoT-only adapter + {pairs} pairs", evaluation,
                                      on_validation, adapter_dir, result.steps, result.seconds, on_hard))
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "ablation.json").write_text(json.dumps(report.to_json(), indent=2))
    plot_ablation(report.to_json(), work_dir / "ablation.png")
    return report


async def best_checkpoint(model_path: str, recipe: Recipe, run_dir: Path,
                          final_adapter: Path) -> tuple[Path, EvalResult]:
    """Among the run's saved checkpoints and its final adapter, the one with the best validation accuracy
    (ties: the later one)."""
    from lema.trainer.evaluate import evaluate

    candidates = sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*")
                         if (p / "adapter_config.json").exists()), key=lambda p: int(p.name.split("-")[-1]))
    candidates.append(final_adapter)
    best: tuple[Path, EvalResult] | None = None
    for path in candidates:
        result = await evaluate(model_path, recipe.eval, path, split="validation")
        if best is None or result.accuracy >= best[1].accuracy:
            best = (path, result)
    assert best is not None
    return best


def table_rows(data: dict) -> list[list[str]]:
    """Rows for a printed table: one per arm (mean over seeds, per-seed values) and the paired differences."""
    rows = []
    n = data["eval_problems"]
    for arm in ("base", *[a for a in (*ARMS, *EXTRA_ARMS) if a in data["arms"]]):
        info = data["arms"][arm]
        accs = info["accuracy"]
        mean = sum(accs) / len(accs)
        low, high = wilson(round(mean * n), n)
        per_seed = " ".join(f"{a:.1%}" for a in accs) if arm != "base" else "-"
        rows.append([ARM_LABELS[arm], info.get("data", "-") or "-", str(info["examples"] or "-"), f"{mean:.1%}",
                     f"{low:.1%}–{high:.1%}", per_seed])
    return rows


def paired_rows(data: dict, section: str = "paired") -> list[list[str]]:
    """One row per comparison of a `paired*` section: mean, interval, verdict, McNemar p per seed, what the design
    could see (mde_80) and the reference log-likelihood difference where scored."""
    rows = []
    for key, label in (("lema_vs_cot", "LEMA − CoT-only"), ("cot_vs_base", "CoT-only − base"),
                       ("lema_vs_base", "LEMA − base"), ("dpo_vs_cot", "CoT+DPO − CoT-only"),
                       ("dpo_vs_lema", "CoT+DPO − LEMA")):
        p = (data.get(section) or {}).get(key)
        if not p:
            continue
        lo, hi = p["ci95"]
        verdict = "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0 (not a result)"
        mde = f"{100 * p['mde_80']:.1f} pts" if "mde_80" in p else "-"
        ll = p.get("reference_logprob")
        ll_text = (f"{ll['mean_diff']:+.4f} [{ll['ci95'][0]:+.4f}, {ll['ci95'][1]:+.4f}]" if ll else "-")
        rows.append([label, f"{100 * p['mean_diff']:+.1f} pts", f"[{100 * lo:+.1f}, {100 * hi:+.1f}]", verdict,
                     " ".join(f"{x:.3g}" for x in p["mcnemar_p"]), mde, ll_text])
    return rows


def plot_ablation(data: dict, path: Path) -> Path:
    """Bars: mean accuracy per arm with its 95% interval, one dot per seed; right: LEMA − CoT-only per seed and
    pooled with 95% paired-bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = data["eval_problems"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = ("base", *[a for a in (*ARMS, *EXTRA_ARMS) if a in data["arms"]])
    colours = ("#999999", "#4c72b0", "#dd8452", "#55a868")
    for i, (arm, colour) in enumerate(zip(names, colours)):
        accs = [100 * a for a in data["arms"][arm]["accuracy"]]
        mean = sum(accs) / len(accs)
        low, high = wilson(round(mean / 100 * n), n)
        left.bar(i, mean, color=colour, yerr=[[mean - 100 * low], [100 * high - mean]], capsize=6)
        if arm != "base":
            left.scatter([i + (j - (len(accs) - 1) / 2) * 0.12 for j in range(len(accs))], accs, color="black",
                         s=14, zorder=3)
    left.set_xticks(range(len(names)), [ARM_LABELS[a] for a in names])
    left.set_ylabel("accuracy (%)")
    left.set_title(f"setting '{data['setting']}', {n} test problems, seeds {data['seeds']}")
    paired = data["paired"]["lema_vs_cot"]
    labels = [f"seed {s['seed']}" for s in paired["per_seed"]] + ["pooled"]
    values = [100 * s["diff"] for s in paired["per_seed"]] + [100 * paired["mean_diff"]]
    cis = [s["ci95"] for s in paired["per_seed"]] + [paired["ci95"]]
    errors = [[v - 100 * c[0] for v, c in zip(values, cis)], [100 * c[1] - v for v, c in zip(values, cis)]]
    right.errorbar(range(len(values)), values, yerr=errors, fmt="o", capsize=6, color="#dd8452")
    right.axhline(0, color="#999999", linestyle="--")
    right.set_xticks(range(len(values)), labels)
    right.set_ylabel("LEMA − CoT-only (points)")
    right.set_title("paired difference, 95% bootstrap interval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_report(console, data: dict) -> None:
    """The arms table and the paired-differences table of an ablation.json."""
    from rich.table import Table

    title = (f"setting '{data['setting']}': {data['eval_problems']} held-out test problems (greedy), "
             f"seeds {','.join(map(str, data['seeds']))}, {data['recipe']['max_steps']} steps per arm")
    table = Table(title=title)
    for col in ("model", "training data", "examples", "accuracy (mean)", "95% CI", "per seed"):
        table.add_column(col, justify="right")
    for row in table_rows(data):
        table.add_row(*row)
    console.print(table)
    for section, what in (("paired", f"test, the primary split ({data['eval_problems']} problems)"),
                          ("paired_hard", f"hard split ({data.get('hard_problems', 0)} problems, more steps than "
                                          "any training problem)")):
        if not data.get(section):
            continue
        paired = Table(title=f"paired differences, {what}; bootstrap over problems and seeds")
        for col in ("comparison", "mean", "95% CI", "interval", "McNemar p per seed", "mde_80",
                    "ref. log-lik./token"):
            paired.add_column(col, justify="right")
        for row in paired_rows(data, section):
            paired.add_row(*row)
        console.print(paired)
    main = data["paired"].get("lema_vs_cot") or {}
    if "mde_80" in main:
        mde, needed = main["mde_80"], main.get("problems_for_mde_2pts")
        if mde <= 0.02:
            console.print(f"power: this run detects a true LEMA − CoT-only difference of {100 * mde:.1f} points with "
                          "80% power: an effect of the paper's size (about 2 points) would show.")
        else:
            console.print(f"power: this run detects only differences of {100 * mde:.1f} points or more (80% power; "
                          f"discordance {100 * main['discordance']:.0f}%); the paper's effects are about 2 points. "
                          + (f"About {needed:,} test problems at these seeds would see 2 points "
                             "(`make confirm` runs such a comparison)." if needed else
                             "The seeds' spread alone exceeds that: more seeds are needed."))
    for name, diff in (data.get("validation_paired") or {}).items():
        if diff:
            console.print(f"validation ({name.replace('_vs_', ' - ')}): {100 * diff['mean_diff']:+.1f} pts "
                          f"[{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]")
