"""Greedy accuracy on held-out synthetic problems, checked by the verifier, with a 95% Wilson interval."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lema.trainer.recipe import EvalSettings


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    correct: int
    n: int
    by_steps: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def metrics(self) -> dict[str, float]:
        low, high = wilson(self.correct, self.n)
        out = {"accuracy": self.accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high, "n": float(self.n)}
        for steps, (c, n) in sorted(self.by_steps.items()):
            out[f"accuracy_steps_{steps}"] = c / n if n else 0.0
        return out


async def evaluate(model_path: str, settings: EvalSettings, adapter_dir: Path | None = None, engine=None) -> EvalResult:
    """Evaluate a base model, optionally with a PEFT adapter, through the transformers engine + verifier pool."""
    from lema.core.answers import DatasetKind
    from lema.core.engines import SamplingParams
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.core.formats import cot_prompt
    from lema.core.synthetic import generate
    from lema.core.verifier_pool import VerifierPool, VerifyItem

    problems = generate(settings.problems, seed=settings.seed, split=settings.split)
    engine = engine or TransformersEngine(model_path, batch_size=settings.batch_size)
    adapter = None
    if adapter_dir is not None:
        adapter = f"eval-{adapter_dir.parent.name}-{adapter_dir.name}"
        await engine.load_adapter(adapter, str(adapter_dir))
    prompts = [[{"role": "user", "content": cot_prompt(p.question)}] for p in problems]
    outputs = await engine.generate(prompts, SamplingParams(max_tokens=settings.max_tokens), adapter)
    pool = VerifierPool(workers=1, item_timeout_s=5.0)
    await pool.start()
    try:
        totals, hits = Counter(), Counter()
        for problem, samples in zip(problems, outputs):
            verdict = await pool.verify(VerifyItem(DatasetKind.SYNTHETIC, problem.answer, samples[0].text))
            totals[problem.n_steps] += 1
            hits[problem.n_steps] += verdict.correct
    finally:
        await pool.close()
        if adapter:
            await engine.unload_adapter(adapter)
    return EvalResult(sum(hits.values()), len(problems), {k: (hits[k], totals[k]) for k in totals})
