"""Greedy accuracy on held-out synthetic problems, checked by the verifier, with a 95% Wilson interval.

Two held-out sets: `test` (the reported problems: touched only for the final table) and `validation`
(training-distribution problems that fine-tuning data never holds: checkpoint selection and the promotion gate).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from trainer.recipe import EvalSettings
from trainer.stats import wilson

__all__ = ["EvalResult", "evaluate", "eval_problems", "wilson"]


@dataclass
class EvalResult:
    correct: int
    n: int
    by_steps: dict[int, tuple[int, int]] = field(default_factory=dict)
    outcomes: list[bool] = field(default_factory=list)  # per problem, in the order of the evaluated set
    split: str = "test"

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics; `prefix` names the set ("validation_"), none for the test set."""
        low, high = wilson(self.correct, self.n)
        out = {"accuracy": self.accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high, "n": float(self.n)}
        for steps, (c, n) in sorted(self.by_steps.items()):
            out[f"accuracy_steps_{steps}"] = c / n if n else 0.0
        return {f"{prefix}{k}": v for k, v in out.items()}


def eval_problems(settings: EvalSettings, split: str | None = None):
    """The held-out problems of a split: `settings.split` (test) or "validation"."""
    from lema.core.synthetic import generate

    split = split or settings.split
    if split == "validation":
        return generate(settings.validation_problems, seed=settings.seed, split="validation")
    return generate(settings.problems, seed=settings.seed, split=split)


async def evaluate(model_path: str, settings: EvalSettings, adapter_dir: Path | None = None, engine=None,
                   split: str | None = None) -> EvalResult:
    """Evaluate a base model, optionally with a PEFT adapter, through the transformers engine + verifier pool, on
    the split's problems (default: `settings.split`)."""
    from lema.core.answers import DatasetKind
    from lema.core.engines import SamplingParams
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.formats import cot_prompt
    from services.verifier import VerifyItem, open_verifier

    split = split or settings.split
    problems = eval_problems(settings, split)
    adapter = None
    if engine is None:  # a model of its own: the adapter (if any) merged into the weights, the fastest to generate
        engine = TransformersEngine(model_path, batch_size=settings.batch_size, threads=settings.threads,
                                    merge_adapter=str(adapter_dir) if adapter_dir is not None else None)
    elif adapter_dir is not None:
        adapter = f"eval-{adapter_dir.parent.name}-{adapter_dir.name}"
        await engine.load_adapter(adapter, str(adapter_dir))
    prompts = [[{"role": "user", "content": cot_prompt(p.question)}] for p in problems]
    outputs = await engine.generate(prompts, SamplingParams(max_tokens=settings.max_tokens), adapter)
    pool = open_verifier()  # client.verifier of $LEMA_CONFIG: local, or the verifier service
    await pool.start()
    try:
        totals, hits, outcomes = Counter(), Counter(), []
        for problem, samples in zip(problems, outputs):
            verdict = await pool.verify(VerifyItem(DatasetKind.SYNTHETIC, problem.answer, samples[0].text))
            totals[problem.n_steps] += 1
            hits[problem.n_steps] += verdict.correct
            outcomes.append(bool(verdict.correct))
    finally:
        await pool.close()
        if adapter:
            await engine.unload_adapter(adapter)
    return EvalResult(sum(hits.values()), len(problems), {k: (hits[k], totals[k]) for k in totals}, outcomes, split)
