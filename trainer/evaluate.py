"""Greedy accuracy on held-out synthetic problems, checked by the verifier, with a 95% Wilson interval: lema's one
evaluator. `evaluate_engine` generates through any engine (the transformers engine over a folder or over weights in
memory, vLLM, an OpenAI-compatible server such as lema's own endpoint) and scores every output with the verifier
interface, so the trainer, lema-tiny's pretraining and `lema models eval-tiny`, and the demo's served check read
answers one way.

Two held-out sets: `test` (the reported problems: touched only for the final table) and `validation`
(training-distribution problems that fine-tuning data never holds). The validation stream is cut in two: its first
`validation_problems` choose (checkpoints, candidates) and the next `gate_problems` (the "gate" split) only gate
promotion, so the gate never grades a choice on the problems that made it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lema.trainer.recipe import EvalSettings
from lema.trainer.stats import wilson

if TYPE_CHECKING:
    from lema.core.engines import Engine
    from lema.core.synthetic import SyntheticProblem
    from lema.services.verifier import Verifier

__all__ = ["EvalResult", "evaluate", "evaluate_engine", "eval_problems", "wilson"]

VERIFY_CONCURRENCY = 64  # verifications in flight at once (a remote verifier gets no more than this)


@dataclass
class EvalResult:
    correct: int
    n: int
    by_steps: dict[int, tuple[int, int]] = field(default_factory=dict)  # step count -> (correct, n)
    outcomes: list[bool] = field(default_factory=list)  # per problem, in the order of the evaluated set
    split: str = "test"
    ids: list[str] = field(default_factory=list)  # the problems' ids, in the same order (pairs two evaluations)
    # Per problem, in the same order (empty for a result built from counts only).
    outputs: list[str] = field(default_factory=list)  # the greedy completion
    families: list[str] = field(default_factory=list)  # the synthetic problem's family
    answers: list[str | None] = field(default_factory=list)  # the answer the verifier read, if any
    # Per problem: the summed log-likelihood (nats) of its reference solution and that solution's token count
    # (empty when not scored).
    reference_logprobs: list[float] = field(default_factory=list)
    reference_tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0  # generation, verification and scoring, wall clock

    @property
    def problems_per_second(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    @property
    def mean_reference_logprob(self) -> float | None:
        """Mean over problems of the reference solution's log-likelihood per token."""
        if not self.reference_logprobs:
            return None
        return sum(lp / max(t, 1) for lp, t in zip(self.reference_logprobs, self.reference_tokens)) / self.n

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def by_family(self) -> dict[str, tuple[int, int]]:
        """family -> (correct, n), from the per-problem outcomes."""
        totals, hits = Counter(self.families), Counter(f for f, ok in zip(self.families, self.outcomes) if ok)
        return {f: (hits[f], totals[f]) for f in sorted(totals)}

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics; `prefix` names the set ("validation_"), none for the test set."""
        low, high = wilson(self.correct, self.n)
        out = {"accuracy": self.accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high, "n": float(self.n)}
        for steps, (c, n) in sorted(self.by_steps.items()):
            out[f"accuracy_steps_{steps}"] = c / n if n else 0.0
        return {f"{prefix}{k}": v for k, v in out.items()}

    def summary(self) -> dict:
        """Accuracy overall, by step count and by family: {"overall": {"n", "accuracy"}, "by_steps": {steps: ...},
        "by_family": {family: ...}} (what `lema models eval-tiny` prints and lema-tiny's pretraining logs)."""
        def acc(c: int, n: int) -> dict:
            return {"n": n, "accuracy": c / n if n else 0.0}

        return {
            "overall": acc(self.correct, self.n),
            "by_steps": {k: acc(*self.by_steps[k]) for k in sorted(self.by_steps)},
            "by_family": {f: acc(c, n) for f, (c, n) in self.by_family.items()},
        }


SPLITS = ("test", "ood", "validation", "gate", "hard", "validation_hard")
HARD_MAX_TOKENS = 320  # the hard split's generation bound (its longest reference solutions: about 200 tokens)


def eval_problems(settings: EvalSettings, split: str | None = None):
    """The held-out problems of a split: `settings.split` (test, or ood), "validation", "gate" (the
    `settings.gate_problems` validation problems after the first `validation_problems`, disjoint from them; the
    validation problems themselves when `gate_problems` is 0), or a hard split: "hard" (test problems with more steps
    than any training problem: `HARD_STEPS`) and "validation_hard" (the same from the validation slice, for choosing
    on), `settings.hard_problems` of each."""
    from lema.core.synthetic import generate
    from lema.core.synthetic.generate import HARD_STEPS

    split = split or settings.split
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    if split == "validation":
        return generate(settings.validation_problems, seed=settings.seed, split="validation")
    if split == "gate":
        # One stream, cut: a stream's first k problems are the same for any n >= k, so the two parts never overlap.
        first = settings.validation_problems
        return generate(first + settings.gate_problems, seed=settings.seed, split="validation")[
            first if settings.gate_problems else 0:]
    if split in ("hard", "validation_hard"):
        if not settings.hard_problems:
            raise ValueError("eval.hard_problems is 0: set it to evaluate the hard split")
        return generate(settings.hard_problems, seed=settings.seed, steps=HARD_STEPS,
                        split="test" if split == "hard" else "validation")
    return generate(settings.problems, seed=settings.seed, split=split)


async def evaluate_engine(engine: Engine, problems: Sequence[SyntheticProblem], max_tokens: int, *,
                          adapter: str | None = None, verifier: Verifier | None = None,
                          split: str = "test", reference_logprob: bool = False,
                          by_length: bool = True) -> EvalResult:
    """Greedy accuracy of what `engine` serves (with `adapter`, a name the engine has loaded, if given) on synthetic
    `problems`: one generate call over the chat-formatted CoT prompts, every output checked by the verifier.

    `verifier`: one the caller has started and will close; by default one is opened (`open_verifier()`: the
    `client.verifier` of $LEMA_CONFIG, local worker processes or the verifier service) for this call only.
    `reference_logprob`: also score each problem's reference solution (engines that can: the transformers engine).
    `by_length`: generate in order of expected length (False: in the given order; bench/evaluation.py compares)."""
    import time

    from lema.core.answers import DatasetKind
    from lema.core.engines import SamplingParams
    from lema.core.formats import cot_messages
    from lema.services.verifier import VerifyItem, open_verifier

    started = time.perf_counter()
    problems = list(problems)
    # Generated in order of length (steps, then question length): a batch runs until its longest row ends, so rows
    # of similar length share batches (measured: bench/RESULTS.md, 'Evaluation speed'); answers return in order.
    order = list(range(len(problems)))
    if by_length:
        order.sort(key=lambda i: (problems[i].n_steps, len(problems[i].question)))
    prompts = [cot_messages(problems[i].question) for i in order]
    outputs = await engine.generate(prompts, SamplingParams(max_tokens=max_tokens), adapter) if prompts else []
    if len(outputs) != len(problems):
        raise RuntimeError(f"the engine answered {len(outputs)} of {len(problems)} prompts")
    texts = [""] * len(problems)
    for i, samples in zip(order, outputs):
        texts[i] = samples[0].text if samples else ""
    owned = verifier is None
    if owned:
        verifier = open_verifier()
        await verifier.start()
    limit = asyncio.Semaphore(VERIFY_CONCURRENCY)

    async def verify(problem, text: str):
        async with limit:
            return await verifier.verify(VerifyItem(DatasetKind.SYNTHETIC, problem.answer, text))

    try:  # the interface verifies one item per call: the calls run concurrently, bounded
        verdicts = await asyncio.gather(*[verify(p, t) for p, t in zip(problems, texts)])
    finally:
        if owned:
            await verifier.close()
    scores: list[tuple[float, int]] = []
    if reference_logprob and hasattr(engine, "completion_logprobs") and problems:
        from lema.core.formats import cot_prompt

        scores = await engine.completion_logprobs([(cot_prompt(p.question), p.gold_solution) for p in problems],
                                                  adapter)
    totals, hits = Counter(), Counter()
    for problem, verdict in zip(problems, verdicts):
        totals[problem.n_steps] += 1
        hits[problem.n_steps] += bool(verdict.correct)
    return EvalResult(
        correct=sum(hits.values()), n=len(problems), by_steps={k: (hits[k], totals[k]) for k in sorted(totals)},
        outcomes=[bool(v.correct) for v in verdicts], split=split, ids=[p.id for p in problems], outputs=texts,
        families=[p.family for p in problems], answers=[v.extracted_answer or None for v in verdicts],
        reference_logprobs=[lp for lp, _ in scores], reference_tokens=[t for _, t in scores],
        seconds=time.perf_counter() - started)


async def evaluate(model_path: str, settings: EvalSettings, adapter_dir: Path | None = None, engine=None,
                   split: str | None = None) -> EvalResult:
    """Evaluate a base model, optionally with a PEFT adapter, through the transformers engine + verifier, on
    the split's problems (default: `settings.split`). With `engine` given, the adapter is loaded into it for this
    evaluation and unloaded after; else a model of its own is loaded (the adapter merged) and closed after."""
    from lema.core.engines.transformers_engine import TransformersEngine

    split = split or settings.split
    problems = eval_problems(settings, split)
    adapter, owned = None, engine is None
    if owned:  # a model of its own: the adapter (if any) merged into the weights, the fastest to generate
        engine = TransformersEngine(model_path, batch_size=settings.batch_size, threads=settings.threads,
                                    merge_adapter=str(adapter_dir) if adapter_dir is not None else None)
    elif adapter_dir is not None:
        adapter = f"eval-{adapter_dir.parent.name}-{adapter_dir.name}"
        await engine.load_adapter(adapter, str(adapter_dir))
    # A hard problem's solution is longer than any training problem's (8 steps: about 190 tokens of reference).
    max_tokens = max(settings.max_tokens, HARD_MAX_TOKENS) if split in ("hard", "validation_hard") else \
        settings.max_tokens
    try:
        return await evaluate_engine(engine, problems, max_tokens, adapter=adapter, split=split,
                                     reference_logprob=settings.reference_logprob)
    finally:
        if adapter:
            await engine.unload_adapter(adapter)
        if owned:
            await engine.close()
