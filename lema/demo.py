"""`lema demo`: the whole loop on the embedded default, with progress and the paper's Table 1 at the end.

    baseline (lema-tiny through the endpoint) -> collect mistakes on synthetic training problems -> correct them
    (reference corrector, or any OpenAI-compatible upstream) -> verify -> export CoT and correction sets -> train a
    CoT-only and a LEMA adapter at equal data size -> hot-swap the better one into the running endpoint ->
    evaluate through the endpoint -> table + PNG plot.  `--rounds R` repeats collect..evaluate with the promoted
    adapter as the next reasoner.

The endpoint is a real `lema serve endpoint` (BentoML) process; collection, training and the candidates' evaluation
run in-process (the same code the collector and trainer services run).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lema.core.answers import DatasetKind


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class DemoOptions:
    model: str = "lema-tiny"
    rounds: int = 1
    problems: int = 150  # synthetic training problems collected per round
    samples: int = 4
    eval_problems: int = 200
    recipe: str = "tiny"
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

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class DemoResult:
    rows: list[Row] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    mistakes: int = 0
    corrections_accepted: int = 0
    seconds: float = 0.0


def _lema() -> list[str]:
    exe = shutil.which("lema", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lema.cli"]


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


def evaluate_through_endpoint(url: str, model: str, problems, max_tokens: int = 200, concurrency: int = 4) -> tuple[int, int]:
    """Greedy answers from the endpoint with the official openai client, checked by the verifier."""
    from openai import OpenAI

    from lema.core.formats import cot_prompt
    from lema.core.verifier_pool import VerifierPool, VerifyItem

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=2)

    def ask(problem) -> str:
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens,
                                               messages=[{"role": "user", "content": cot_prompt(problem.question)}])
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(concurrency) as pool:
        texts = list(pool.map(ask, problems))

    async def check() -> int:
        verifier = VerifierPool(workers=1, item_timeout_s=5.0)
        await verifier.start()
        try:
            return sum([(await verifier.verify(VerifyItem(DatasetKind.SYNTHETIC, p.answer, t))).correct
                        for p, t in zip(problems, texts)])
        finally:
            await verifier.close()

    return asyncio.run(check()), len(problems)


def _collect(options: DemoOptions, store: str, round_index: int, adapter: tuple[str, str] | None, console: Console):
    from lema.services.collector.pipeline import CollectSettings
    from lema.services.collector.run import collect

    settings = CollectSettings(samples=options.samples, temperature=0.8, max_tokens=200, seed=options.seed + round_index,
                               model=options.model, batch_size=16, correct_concurrency=2,
                               adapter=adapter[0] if adapter else "", adapter_path=adapter[1] if adapter else "",
                               corrector_url=options.corrector_url, corrector_model=options.corrector_model)
    source = f"synthetic:{options.problems}:seed={1000 + round_index}:split=train"
    return asyncio.run(collect(store, [source], settings, console=console))


def _export(store: str, out: Path) -> dict:
    from lema.core.exports import correction_examples, cot_examples, dedupe, export
    from lema.core.store.db import open_store

    sessions = open_store(store)
    with sessions() as session:
        n_cot = len(dedupe(cot_examples(session)))
        n_corr = len(dedupe(correction_examples(session)))
    size = min(n_cot, 2 * n_corr)  # the LEMA mix: every correction (up to half) + CoT, the same total as CoT-only
    if size < 8:
        raise RuntimeError(f"too little data to train on ({n_cot} CoT, {n_corr} corrections)")
    with sessions.begin() as session:
        return export(session, out, size=size, seed=0)


def run_demo(options: DemoOptions) -> DemoResult:
    from lema.core.model_resolve import resolve_model
    from lema.core.synthetic import generate
    from lema.trainer.evaluate import evaluate
    from lema.trainer.promote import promote
    from lema.trainer.recipe import load_recipe
    from lema.trainer.registry import AdapterRegistry
    from lema.trainer.train import train

    console = Console() if sys.stdout.isatty() else Console(width=130)
    # Our own progress lines say what is happening; the libraries' per-call progress bars only add noise.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.monotonic()
    work = options.workdir
    if work.exists():
        shutil.rmtree(work)
    (work / "adapters").mkdir(parents=True)
    store = str(work / "lema.db")
    recipe = load_recipe(options.recipe, {"base_model": options.model,
                                          "eval": {"problems": options.eval_problems}})
    model_path = resolve_model(options.model)
    eval_problems = generate(options.eval_problems, seed=recipe.eval.seed, split=recipe.eval.split)
    registry = AdapterRegistry(work / "adapters")
    result = DemoResult()

    console.rule(f"lema demo — {options.model}, {options.rounds} round(s)")
    console.print("[bold]1/7[/] starting the endpoint (BentoML, transformers engine) ...")
    endpoint = Endpoint(options.model, work / "adapters", work / "endpoint.log")
    try:
        cold = endpoint.wait_ready()
        console.print(f"    endpoint ready on {endpoint.url} in {cold:.1f}s")
        base_name = Path(model_path).name if Path(model_path).exists() else options.model
        console.print(f"[bold]2/7[/] baseline: {options.eval_problems} held-out problems through the endpoint ...")
        correct, n = evaluate_through_endpoint(endpoint.url, base_name, eval_problems)
        result.rows.append(Row(0, "base", "-", 0, correct, n, "endpoint"))
        console.print(f"    base accuracy {correct}/{n} = {correct / n:.1%}")

        serving: tuple[str, str] | None = None  # (adapter name, path) used as the reasoner of the next round
        for r in range(1, options.rounds + 1):
            console.rule(f"round {r}")
            console.print(f"[bold]3/7[/] collecting: {options.problems} synthetic training problems x "
                          f"{options.samples} samples, verified, mistakes corrected "
                          f"({'OpenAI-compatible corrector' if options.corrector_url else 'reference corrector'}) ...")
            stats = _collect(options, store, r, serving, console)
            result.mistakes += stats.mistakes
            result.corrections_accepted += stats.accepted
            console.print(f"    {stats.mistakes} mistakes, {stats.accepted} corrections accepted")
            console.print("[bold]4/7[/] exporting CoT and correction sets at equal size ...")
            manifest = _export(store, work / f"export-round{r}")
            size = manifest["mixes"]["size"]
            mix = manifest["mixes"]["lema"]
            console.print(f"    size {size}: CoT-only = {size} CoT; LEMA = {mix['cot']} CoT + {mix['correction']} corrections")
            candidates = []
            for name, file, data in (("CoT-only", f"mix-cot-{size}.jsonl", f"{size} CoT"),
                                     ("LEMA", f"mix-lema-{size}.jsonl",
                                      f"{mix['cot']} CoT + {mix['correction']} corr.")):
                console.print(f"[bold]5/7[/] training the {name} adapter (QLoRA, 4-bit base) ...")
                run = train(recipe, work / f"export-round{r}" / file, work / "runs" / f"round{r}-{name.lower()}",
                            on_progress=lambda e, name=name: console.print(
                                f"    {name} step {e['step']}/{e['total_steps']} loss {e['loss']:.3f}"))
                evaluation = asyncio.run(evaluate(model_path, recipe.eval, run.adapter_dir))
                record = registry.register(run.adapter_dir, base_model=options.model,
                                           prefix=f"demo-r{r}-{name.lower().replace('-only', '')}",
                                           metrics=evaluation.metrics(), export_id=manifest["id"],
                                           parent_adapter=serving[0] if serving else "")
                console.print(f"    {name}: {evaluation.correct}/{evaluation.n} = {evaluation.accuracy:.1%} "
                              f"(adapter {record.id})")
                result.rows.append(Row(r, name, data, size, evaluation.correct, evaluation.n, "in-process"))
                candidates.append((evaluation.accuracy, record))
            best = max(candidates, key=lambda c: c[0])[1]
            console.print(f"[bold]6/7[/] hot-swapping {best.id} into the endpoint (eval-gated) ...")
            outcome = promote(best, endpoint.url, endpoint.token_env)
            console.print(f"    {outcome.reason}")
            if outcome.promoted:
                result.promoted.append(best.id)
                serving = (best.id, best.path)
            console.print("[bold]7/7[/] evaluating through the endpoint (the promoted adapter serves by default) ...")
            correct, n = evaluate_through_endpoint(endpoint.url, "default", eval_problems)
            result.rows.append(Row(r, f"served: {serving[0] if serving else base_name}", "-", 0, correct, n,
                                   "endpoint"))
            console.print(f"    served accuracy {correct}/{n} = {correct / n:.1%}")
    finally:
        endpoint.stop()
    result.seconds = time.monotonic() - started
    console.print(results_table(result))
    plot = plot_results(result, work / "results.png")
    (work / "results.json").write_text(json.dumps([r.__dict__ for r in result.rows], indent=2))
    console.print(f"plot: {plot}   data: {work / 'results.json'}   total {result.seconds / 60:.1f} min")
    return result


def results_table(result: DemoResult) -> Table:
    table = Table(title="lema-tiny on held-out synthetic problems (greedy) — in the shape of the LEMA paper's Table 1")
    for col in ("round", "model", "training data", "examples", "accuracy", "95% CI", "measured"):
        table.add_column(col, justify="right")
    for row in result.rows:
        low, high = wilson_interval(row.correct, row.n)
        table.add_row(str(row.round), row.name, row.data, str(row.examples) if row.examples else "-",
                      f"{row.accuracy:.1%}", f"{low:.1%}–{high:.1%}", row.where)
    return table


def plot_results(result: DemoResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted({r.round for r in result.rows if r.round > 0})
    fig, axes = plt.subplots(1, 2 if len(rounds) > 1 else 1, figsize=(11 if len(rounds) > 1 else 6.5, 4.2))
    axes = axes if isinstance(axes, (list, tuple)) or hasattr(axes, "__len__") else [axes]
    last = rounds[-1] if rounds else 0
    bars = [r for r in result.rows if r.round == 0 or (r.round == last and r.name in ("CoT-only", "LEMA"))]
    names = [r.name for r in bars]
    values = [100 * r.accuracy for r in bars]
    errors = [[100 * (r.accuracy - wilson_interval(r.correct, r.n)[0]) for r in bars],
              [100 * (wilson_interval(r.correct, r.n)[1] - r.accuracy) for r in bars]]
    axes[0].bar(names, values, yerr=errors, capsize=6, color=["#999999", "#4c72b0", "#dd8452"][: len(bars)])
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title(f"base vs CoT-only vs LEMA (round {last}), 95% CI")
    if len(rounds) > 1:
        for name, colour in (("CoT-only", "#4c72b0"), ("LEMA", "#dd8452")):
            points = [(r.round, 100 * r.accuracy) for r in result.rows if r.name == name]
            axes[1].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name, color=colour)
        served = [(r.round, 100 * r.accuracy) for r in result.rows if r.name.startswith("served")]
        axes[1].plot([p[0] for p in served], [p[1] for p in served], marker="s", label="served", color="black")
        axes[1].axhline(values[0], color="#999999", linestyle="--", label="base")
        axes[1].set_xlabel("round")
        axes[1].set_ylabel("accuracy (%)")
        axes[1].set_title("accuracy per round (continuous learning from mistakes)")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
