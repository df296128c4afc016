"""`lema demo`: the whole loop on the embedded default, with progress and the paper's comparison at the end.

    baseline (lema-tiny through the endpoint, validation problems) -> collect mistakes on synthetic training
    problems -> correct them (reference corrector, or any OpenAI-compatible upstream) -> verify -> export (every row
    measured against the recipe's context) -> the harness (`lema.trainer.ablation`): CoT-only and LEMA adapters for
    each seed, the same steps, evaluated on the same held-out test problems -> choose the adapter with the best
    accuracy on the first validation problems -> gate it on the next, disjoint validation problems against what
    serves and the base model (lema.trainer.gate: paired, sized) -> promote it into the running endpoint if it passes
    -> evaluate through the endpoint -> tables + ablation.json/png, results.json and rounds.json with each round's
    gate.  `--rounds R` repeats collect..evaluate with the promoted adapter as the next reasoner.

The endpoint is a real `lema serve endpoint` (BentoML) process; collection, training and the arms' evaluation run
in-process (the same code the collector and trainer services run).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lema.trainer.stats import wilson


@dataclass
class DemoOptions:
    model: str = "lema-tiny"
    rounds: int = 1
    problems: int = 150  # synthetic training problems collected per round
    samples: int = 4
    eval_problems: int = 500
    hard_problems: int = 100  # the hard split (more steps than any training problem), beside the test split
    recipe: str | None = None  # default: recipe_for_model(model)
    setting: str = "main"
    seeds: tuple[int, ...] = (0, 1, 2)
    correction_ratio: float = 0.4
    # The step format won the validation grid (bench/RESULTS.md, 'The mechanism grid on validation'; within the
    # noise): the model's own correct steps as untrained context, the corrected steps from its first wrong step as the
    # target. "paper": the paper's correction rows.
    correction_format: str = "step"
    min_grade: str | None = None  # leave out corrections people graded below this (lema serve review; a reused store)
    max_steps: int | None = None  # default: the recipe's
    # Validation problems sent through the endpoint to check what serves after promotion (the endpoint answers
    # one request at a time today, about 0.4 s each for lema-tiny, so this is a sample, not all of them).
    served_check: int = 100
    # The promotion gate (docs/harness.md, 'Promotion gate'): validation problems after the selection problems, and
    # the margin it must see. lema-tiny's adapters answer about 19% of validation problems differently from the base
    # model (bench/results/learning.json), so mde_80 = 2.8 x sqrt(0.19 / n): a one-point margin needs about 15,000
    # problems per model (longer than the whole demo on two cores); 2,500 see 2.5 points, within a 3-point margin
    # with room for a discordance up to about 28%, for about 5,000 evaluations (candidate and base model).
    gate_problems: int = 2500
    gate_margin: float = 0.03  # an accuracy fraction (0.03: three points)
    corrector_url: str | None = None
    corrector_model: str = "gpt-4"
    workdir: Path = Path(".lema/demo")
    seed: int = 0


@dataclass
class Row:
    round: int
    name: str
    data: str
    examples: int
    correct: int
    n: int
    where: str
    per_seed: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class DemoResult:
    rows: list[Row] = field(default_factory=list)
    ablations: list[dict] = field(default_factory=list)  # one ablation.json per round
    # Validation outcomes (the same first `served_check` problems): the base model in-process, then what served by
    # default after each round's promotion, through the endpoint.
    base_validation: list[bool] = field(default_factory=list)
    served: list[list[bool]] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    gates: list[dict] = field(default_factory=list)  # per round: the gate's decision (lema.trainer.gate) and choice
    mistakes: int = 0
    corrections_accepted: int = 0
    seconds: float = 0.0


def recipe_for_model(model: str) -> str:
    """The recipe that fits a base model: `tiny` for the embedded lema-tiny (a few minutes on a CPU), `small` for
    any real pretrained model (micro-batches of one row, so a 135M model with a 49k vocabulary trains in about
    2-3 GB; trainer/configs/small.yaml)."""
    return "tiny" if model == "lema-tiny" else "small"


def _lema() -> list[str]:
    exe = shutil.which("lema", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lema.app.cli"]


class Endpoint:
    """A `lema serve endpoint` process with its own registry folder and admin token."""

    def __init__(self, model: str, registry: Path, log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_env = "LEMA_DEMO_ADMIN_TOKEN"
        os.environ[self.token_env] = secrets.token_hex(16)
        self.process = subprocess.Popen(
            [*_lema(), "serve", "endpoint", "--port", str(self.port), "--model", model, "--engine", "transformers",
             "--registry", str(registry), "--admin-token-env", self.token_env],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 300) -> float:
        import httpx

        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"the endpoint exited with code {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the endpoint did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def evaluate_through_endpoint(url: str, model: str, problems, max_tokens: int = 200,
                              concurrency: int = 4) -> list[bool]:
    """Greedy answers from the endpoint (the OpenAI engine: /v1/chat/completions, `concurrency` requests in flight),
    checked by the verifier through lema's one evaluator: one outcome per problem, in order."""
    from lema.core.engines.openai_engine import OpenAIEngine
    from lema.trainer.evaluate import evaluate_engine

    async def run() -> list[bool]:
        # The demo's endpoint serves /v1 without a key; naming a variable of its own keeps $OPENAI_API_KEY (a real
        # secret, maybe) from being sent to it.
        engine = OpenAIEngine(model, base_url=f"{url}/v1", api_key_env="LEMA_DEMO_ENDPOINT_API_KEY",
                              concurrency=concurrency)
        try:
            result = await evaluate_engine(engine, problems, max_tokens, split="validation")
        finally:
            await engine.close()
        return result.outcomes

    return asyncio.run(run())


def _collect(options: DemoOptions, store: str, round_index: int, adapter: tuple[str, str] | None, console: Console):
    from lema.services.collector.pipeline import CollectSettings
    from lema.services.collector.run import collect

    settings = CollectSettings(samples=options.samples, temperature=0.8, max_tokens=200, seed=options.seed + round_index,
                               model=options.model, batch_size=16, correct_concurrency=2,
                               adapter=adapter[0] if adapter else "", adapter_path=adapter[1] if adapter else "",
                               corrector_url=options.corrector_url, corrector_model=options.corrector_model)
    source = f"synthetic:{options.problems}:seed={1000 + round_index}:split=train"
    return asyncio.run(collect(store, [source], settings, console=console))


def _export(store: str, out: Path, recipe, correction_format: str = "paper", min_grade: str | None = None) -> dict:
    from transformers import AutoTokenizer

    from lema.core.exports import LengthCheck, export
    from lema.core.model_resolve import resolve_model
    from lema.core.reviews import GradeFilter
    from lema.core.store.db import open_store

    lengths = LengthCheck(AutoTokenizer.from_pretrained(resolve_model(recipe.base_model)), recipe.max_seq_len,
                          model=recipe.base_model)
    with open_store(store).begin() as session:
        manifest = export(session, out, lengths=lengths, correction_format=correction_format,
                          grades=GradeFilter(min_grade))
    if manifest["counts"]["cot"] < 8 or manifest["counts"]["correction"] == 0:
        raise RuntimeError(f"too little data to train on: {manifest['counts']}")
    return manifest


def run_demo(options: DemoOptions) -> DemoResult:
    """The demo; SIGTERM, SIGHUP and SIGINT stop it with its endpoint (lema.core.signals)."""
    from lema.core.signals import stop_on_signals

    with stop_on_signals():
        return _run_demo(options)


def _run_demo(options: DemoOptions) -> DemoResult:
    from lema.core.model_resolve import resolve_model
    from lema.core.quiet import quiet_libraries
    from lema.trainer.ablation import ARM_LABELS, print_report, run_ablation
    from lema.trainer.evaluate import eval_problems, evaluate
    from lema.trainer.gate import Outcomes
    from lema.trainer.promote import promote
    from lema.trainer.recipe import load_recipe
    from lema.trainer.registry import AdapterRegistry

    console = Console() if sys.stdout.isatty() else Console(width=130)
    quiet_libraries()  # our own progress lines say what is happening
    started = time.monotonic()
    work = options.workdir
    if work.exists():
        shutil.rmtree(work)
    (work / "adapters").mkdir(parents=True)
    store = str(work / "lema.db")
    overrides: dict = {"base_model": options.model, "eval": {"problems": options.eval_problems,
                                                             "hard_problems": options.hard_problems,
                                                             "gate_problems": options.gate_problems}}
    if options.max_steps:
        overrides["max_steps"] = options.max_steps
    recipe = load_recipe(options.recipe or recipe_for_model(options.model), overrides)
    if recipe.max_steps <= 0:
        raise ValueError("the demo's comparison needs a recipe with max_steps (the same steps for both arms)")
    model_path = resolve_model(options.model)
    validation = eval_problems(recipe.eval, "validation")
    # The gate grades on its own problems: accuracy only (the reference log-likelihood is a pass it does not read).
    gate_settings = recipe.eval.model_copy(update={"reference_logprob": False})
    base_gate: Outcomes | None = None  # the base model's, measured in round 1
    registry = AdapterRegistry(work / "adapters")
    result = DemoResult()
    seeds = list(options.seeds)

    console.rule(f"lema demo — {options.model}, recipe '{recipe.name}', setting '{options.setting}', seeds {seeds}, "
                 f"{options.rounds} round(s)")
    console.print("[bold]1/7[/] starting the endpoint (BentoML, transformers engine) ...")
    endpoint = Endpoint(options.model, work / "adapters", work / "endpoint.log")
    try:
        cold = endpoint.wait_ready()
        console.print(f"    endpoint ready on {endpoint.url} in {cold:.1f}s")
        base_name = Path(model_path).name if Path(model_path).exists() else options.model
        # The base model is measured in-process by the harness (test problems for the table, validation problems for
        # the promotion gate); the endpoint is measured once its promoted model serves (step 6).
        serving: tuple[str, str] | None = None  # (adapter name, path) used as the reasoner of the next round
        for r in range(1, options.rounds + 1):
            console.rule(f"round {r}")
            console.print(f"[bold]2/7[/] collecting: {options.problems} synthetic training problems x "
                          f"{options.samples} samples, verified, mistakes corrected "
                          f"({'OpenAI-compatible corrector' if options.corrector_url else 'reference corrector'}) ...")
            stats = _collect(options, store, r, serving, console)
            result.mistakes += stats.mistakes
            result.corrections_accepted += stats.accepted
            console.print(f"    {stats.mistakes} mistakes, {stats.accepted} corrections accepted")
            console.print(f"[bold]3/7[/] exporting (every row measured against max_seq_len {recipe.max_seq_len}) ...")
            export_dir = work / f"export-round{r}"
            manifest = _export(store, export_dir, recipe, options.correction_format, options.min_grade)
            length = manifest["length"]
            console.print(f"    {manifest['counts']['cot']} CoT rows ({manifest['counts']['cot_augmentation']} "
                          f"verified samples), {manifest['counts']['correction']} corrections ({options.correction_format} format); "
                          f"shortened {length['shortened'] or 0}, dropped {length['dropped_over_length'] or 0}, "
                          "truncated 0")
            console.print(f"[bold]4/7[/] the '{options.setting}' comparison: CoT-only vs LEMA, seeds {seeds}, "
                          f"{recipe.max_steps} steps each, {recipe.eval.problems} held-out test problems ...")
            ablation_dir = work / f"round{r}"
            report = run_ablation(recipe, export_dir, ablation_dir, setting=options.setting, seeds=seeds,
                                  correction_ratio=options.correction_ratio, validation=True,
                                  on_event=lambda message: console.print(f"    {message}"))
            data = report.to_json()
            result.ablations.append(data)
            shutil.copy(ablation_dir / "ablation.json", work / "ablation.json")
            shutil.copy(ablation_dir / "ablation.png", work / "ablation.png")
            if r == 1:
                result.rows.append(Row(0, "base", "-", 0, report.base.correct, report.base.n, "in-process, test"))
                result.base_validation = list(report.base_validation.outcomes[: options.served_check])
            for arm in ("cot", "lema"):
                runs = report.arm_runs(arm)
                mean_correct = round(sum(x.test.correct for x in runs) / len(runs))  # the interval is per seed's n
                result.rows.append(Row(r, ARM_LABELS[arm], runs[0].data, runs[0].examples, mean_correct,
                                       runs[0].test.n, f"in-process, test, mean of {len(runs)} seeds",
                                       [x.test.accuracy for x in runs]))
            # Chosen on the first validation problems; gated on the next ones, which the choice never saw.
            best = max(report.runs, key=lambda x: x.validation.accuracy)
            first, gated = recipe.eval.validation_problems, recipe.eval.gate_problems
            console.print(f"[bold]5/7[/] the gate: {ARM_LABELS[best.arm]} seed {best.seed} was chosen among "
                          f"{len(report.runs)} adapters on validation problems 1-{first} "
                          f"({best.validation.accuracy:.1%}); it is gated on problems {first + 1}-{first + gated}, "
                          f"paired with what serves and the base model (margin {100 * options.gate_margin:.1f} pts) ...")
            gate_started = time.monotonic()
            if base_gate is None:
                base_gate = Outcomes.of(asyncio.run(evaluate(model_path, gate_settings, split="gate")))
            candidate_gate = Outcomes.of(asyncio.run(evaluate(model_path, gate_settings, best.adapter_dir,
                                                              split="gate")))
            gate_seconds = time.monotonic() - gate_started
            metrics = best.test.metrics() | best.validation.metrics(prefix="validation_") | {
                "gate_accuracy": candidate_gate.accuracy, "gate_n": float(candidate_gate.n)}
            record = registry.register(best.adapter_dir, base_model=options.model,
                                       prefix=f"demo-r{r}-{best.arm}-s{best.seed}", metrics=metrics,
                                       export_id=manifest["id"], parent_adapter=serving[0] if serving else "",
                                       config_yaml=recipe_yaml(recipe), gate_outcomes=candidate_gate.to_json())
            outcome = promote(record, endpoint.url, endpoint.token_env, registry, base_outcomes=base_gate,
                              margin=options.gate_margin)
            result.gates.append({"round": r, **outcome.gate, "promoted": outcome.promoted,
                                 "chosen": {"arm": best.arm, "seed": best.seed, "among": len(report.runs),
                                            "validation_problems": first,
                                            "validation_accuracy": best.validation.accuracy},
                                 "gate_problems": gated, "seconds": round(gate_seconds, 1)})
            console.print(f"    gate ({candidate_gate.n} problems x 2 models evaluated in {gate_seconds:.0f}s): "
                          + gate_line(outcome.gate))
            console.print(f"    {'promoted' if outcome.promoted else 'not promoted'}: {outcome.reason}")
            if outcome.promoted:
                result.promoted.append(record.id)
                serving = (record.id, record.path)
            check = validation[: options.served_check]
            console.print(f"[bold]6/7[/] evaluating through the endpoint what serves by default now, on "
                          f"{len(check)} of the validation problems ...")
            outcomes = evaluate_through_endpoint(endpoint.url, "default", check, recipe.eval.max_tokens)
            correct, n = sum(outcomes), len(outcomes)
            result.served.append(outcomes)
            result.rows.append(Row(r, f"served: {serving[0] if serving else base_name}", "-", 0, correct, n,
                                   "endpoint, validation"))
            console.print(f"    served validation accuracy {correct}/{n} = {correct / n:.1%}")
            if outcome.promoted:  # the same adapter in-process (merged weights) on the same problems
                console.print(f"    in-process, the same adapter on the same problems: "
                              f"{sum(best.validation.outcomes[:n])}/{n}")
    finally:
        endpoint.stop()
    result.seconds = time.monotonic() - started
    console.print("[bold]7/7[/] results")
    console.print(results_table(result))
    for gate in result.gates:
        console.print(f"gate, round {gate['round']}: {gate_line(gate)}")
    print_report(console, result.ablations[-1])
    rounds = rounds_report(result)
    if options.rounds > 1:
        console.print(rounds["summary"])
    plot = plot_results(result, work / "results.png")
    (work / "results.json").write_text(json.dumps({"rows": [r.__dict__ for r in result.rows],
                                                   "gate": result.gates[-1] if result.gates else None,
                                                   "gates": result.gates}, indent=2))
    (work / "rounds.json").write_text(json.dumps(rounds, indent=2))
    console.print(f"plots: {plot}, {work / 'ablation.png'}   data: {work / 'results.json'}, "
                  f"{work / 'ablation.json'}, {work / 'rounds.json'}   total {result.seconds / 60:.1f} min")
    return result


def rounds_report(result: DemoResult) -> dict:
    """Whether served accuracy keeps rising over the rounds: validation accuracy of the base model (in-process) and of
    what served after each round (through the endpoint), each round paired against the one before it and against the
    base on the same problems (bootstrap interval of the difference, exact McNemar p)."""
    series = [("base", result.base_validation)] + [(f"round {i}", o) for i, o in enumerate(result.served, start=1)]
    series = [(name, outcomes) for name, outcomes in series if outcomes]
    steps = [_difference(before, now) for before, now in zip(series, series[1:])]
    overall = _difference(series[0], series[-1]) if len(series) > 1 else None
    rising = bool(steps) and all(s["difference"] > 0 for s in steps)
    lines = [" -> ".join(f"{name} {sum(o) / len(o):.1%}" for name, o in series)]
    for s in steps + ([overall] if overall else []):
        lines.append(f"  {s['to']} - {s['from']}: {s['difference']:+.1%} [{s['ci95'][0]:+.1%}, {s['ci95'][1]:+.1%}], "
                     f"McNemar p = {s['p_value']:.3f}")
    outside = sum(s["ci95"][0] > 0 for s in steps)
    verdict = (f"the point estimate rose in {sum(s['difference'] > 0 for s in steps)} of {len(steps)} steps; "
               f"{outside} of {len(steps)} gains are outside the noise (95% interval above zero)")
    if overall:
        verdict += (f"; overall {overall['to']} - {overall['from']} is "
                    + ("outside the noise" if overall["ci95"][0] > 0 or overall["ci95"][1] < 0 else "within the noise"))
    return {"accuracy": {name: sum(o) / len(o) for name, o in series}, "n": {name: len(o) for name, o in series},
            "steps": steps, "overall": overall, "rising": rising, "gates": result.gates,
            "summary": "served validation accuracy by round: " + "\n".join(lines) + "\n" + verdict}


def _difference(before: tuple[str, list[bool]], now: tuple[str, list[bool]]) -> dict:
    """`now` - `before` (named outcome lists) on the problems both answered: the difference, its paired bootstrap
    interval, the exact McNemar p."""
    from lema.trainer.stats import mcnemar_exact, paired_bootstrap

    n = min(len(before[1]), len(now[1]))
    paired = paired_bootstrap([now[1][:n]], [before[1][:n]])
    p_value, _, _ = mcnemar_exact(now[1][:n], before[1][:n])
    return {"from": before[0], "to": now[0], "difference": paired.mean_diff, "ci95": list(paired.ci95),
            "p_value": p_value, "n": n}


def recipe_yaml(recipe) -> str:
    """The recipe as YAML, registered with the adapter: `lema promote` and the trainer read its evaluation settings
    (the gate's problems) from it."""
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def gate_line(gate: dict) -> str:
    """One line: the deciding comparison's interval and the decision (every check when there are several)."""
    def one(c: dict) -> str:
        if c["diff"] is None:
            return f"{c['candidate']} − {c['reference']}: {c['decision']}"
        low, high = c["ci95"]
        return (f"{c['candidate']} − {c['reference']} on {c['n']} problems: {100 * c['diff']:+.1f} pts "
                f"[{100 * low:+.1f}, {100 * high:+.1f}], mde_80 {100 * c['mde_80']:.1f} pts, margin "
                f"{100 * c['margin']:.1f} pts: {c['decision']}"
                + (f" (about {c['problems_needed']:,} problems would decide)" if c.get("problems_needed") else ""))

    return "; ".join(one(c) for c in gate.get("checks") or [gate]) + (" — forced" if gate.get("forced") else "")


def results_table(result: DemoResult) -> Table:
    table = Table(title="greedy accuracy — in the shape of the LEMA paper's Table 1 (arms: mean over seeds)")
    for col in ("round", "model", "training data", "examples", "accuracy", "95% CI", "per seed", "measured"):
        table.add_column(col, justify="right")
    for row in result.rows:
        low, high = wilson(row.correct, row.n)
        table.add_row(str(row.round), row.name, row.data, str(row.examples) if row.examples else "-",
                      f"{row.accuracy:.1%}", f"{low:.1%}–{high:.1%}",
                      " ".join(f"{a:.1%}" for a in row.per_seed) or "-", row.where)
    return table


def plot_results(result: DemoResult, path: Path) -> Path:
    """results.png: each model's accuracy with its 95% interval (test problems for the base model and the arms,
    validation problems through the endpoint for what serves); per round when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = demo_figure(result, plt)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _percent_interval(row: Row) -> tuple[float, float, float]:
    """(accuracy, low, high) in percent: the table's Wilson interval (an arm's: of its mean over seeds, on n)."""
    low, high = wilson(row.correct, row.n)
    return 100 * row.accuracy, 100 * low, 100 * high


def demo_figure(result: DemoResult, plt):
    rounds = sorted({r.round for r in result.rows if r.round > 0})
    base_test = next((r for r in result.rows if r.round == 0 and r.where.endswith("test")), None)
    figure, axis = plt.subplots(figsize=(6.8, 4.4))
    if len(rounds) <= 1:  # one round: a bar per model (lines over one x value hid CoT-only under LEMA)
        bars = [("base\n(test)", base_test, "#999999")] if base_test else []
        for name, colour in (("CoT-only", "#4c72b0"), ("LEMA", "#dd8452")):
            row = next((r for r in result.rows if r.name == name and r.round > 0), None)
            if row:
                bars.append((f"{name}\n(test, {len(row.per_seed) or 1} seed{'s' if len(row.per_seed) > 1 else ''})",
                             row, colour))
        served = next((r for r in result.rows if r.name.startswith("served") and r.round > 0), None)
        if served:
            bars.append(("served\n(validation)", served, "black"))
        values = [_percent_interval(row) for _, row, _ in bars]
        positions = list(range(len(bars)))
        axis.bar(positions, [v for v, _, _ in values], color=[colour for *_, colour in bars],
                 yerr=[[v - low for v, low, _ in values], [high - v for v, _, high in values]], capsize=6,
                 ecolor="#333333")
        for x, (_, row, _), (value, _, high) in zip(positions, bars, values):
            axis.annotate(f"{value:.1f}%\n({row.correct}/{row.n})", (x, high), ha="center", va="bottom", fontsize=8)
        axis.set_xticks(positions, [label for label, *_ in bars])
        axis.set_ylim(0, max([high for *_, high in values] + [1]) * 1.2)
        axis.set_title("accuracy after one round of learning from mistakes (95% intervals)")
    else:
        axis.set_xticks(rounds)
        series = [(name, "#4c72b0" if name == "CoT-only" else "#dd8452", "o", f"{name} (test)",
                   [r for r in result.rows if r.name == name]) for name in ("CoT-only", "LEMA")]
        series.append(("served", "black", "s", "served (validation)",
                       [r for r in result.rows if r.name.startswith("served")]))
        for offset, (_, colour, marker, label, rows) in zip((-0.08, 0.0, 0.08), series):
            values = [_percent_interval(r) for r in rows]
            axis.errorbar([r.round + offset for r in rows], [v for v, _, _ in values],
                          yerr=[[v - low for v, low, _ in values], [high - v for v, _, high in values]],
                          marker=marker, color=colour, capsize=4, label=label)
        if base_test:
            value, low, high = _percent_interval(base_test)
            axis.axhline(value, color="#999999", linestyle="--", label="base (test)")
            axis.axhspan(low, high, color="#999999", alpha=0.15)
        axis.set_xlabel("round")
        axis.legend()
        axis.set_title("accuracy per round (95% intervals)")
    axis.set_ylabel("accuracy (%)")
    figure.tight_layout()
    return figure
