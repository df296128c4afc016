"""lema's one evaluator (`lema.trainer.evaluate.evaluate_engine`): greedy generation through an engine, every output read
by the real in-process verifier, and the result the trainer, lema-tiny and the demo all read."""

from __future__ import annotations

import asyncio

import pytest
from conftest import requires_lema_tiny

from lema.core.answers import answer_is_integer
from lema.core.engines import Completion, SamplingParams
from lema.core.synthetic import generate
from lema.services.verifier import open_verifier
from lema.trainer.evaluate import EvalResult, evaluate_engine


class ScriptedEngine:
    """An engine that answers fixed texts, each prompt by the question it holds, whatever order the evaluator sends
    them in (the generation side only: the verifier stays real)."""

    name = "scripted"
    model_id = "scripted"

    def __init__(self, texts: list[str], questions: list[str] | None = None):
        self.texts = texts
        self.questions = questions
        self.calls: list[tuple[list, SamplingParams, str | None]] = []

    async def generate(self, prompts, params, adapter=None):
        self.calls.append((prompts, params, adapter))
        if self.questions is None:
            return [[Completion(text=t)] for t in self.texts[:len(prompts)]]
        return [[Completion(text=next(t for q, t in zip(self.questions, self.texts) if q in p[0]["content"]))]
                for p in prompts]

    async def load_adapter(self, name, path): ...

    async def unload_adapter(self, name): ...

    def adapters(self):
        return []

    async def close(self): ...


def test_scores_every_output_with_the_verifier_in_problem_order_and_summarizes_like_lema_tiny():
    problems = generate(6, seed=11, split="test", steps=(2, 3))
    texts = []
    for i, p in enumerate(problems):
        if i % 3 == 0:
            texts.append(f"Step 1: a guess.\nThe answer is {int(p.answer) + 1}.")  # wrong
        elif i % 3 == 1:
            texts.append(f"Step 1: done.\nThe answer is {p.answer}.")  # right
        else:
            texts.append("I give up.")  # no answer at all (no number either: the verifier would read the last one)
    engine = ScriptedEngine(texts, [p.question for p in problems])
    result = asyncio.run(evaluate_engine(engine, problems, 77, adapter="a1", split="validation"))

    (prompts, params, adapter), = engine.calls  # one generate call, greedy, the caller's budget and adapter
    assert adapter == "a1" and params.greedy and params.max_tokens == 77 and params.n == 1
    assert [m[0]["role"] for m in prompts] == ["user"] * 6
    # sent shortest first (steps, then question length); every result comes back in the problems' own order
    sent = [next(p for p in problems if p.question in m[0]["content"]) for m in prompts]
    assert [(p.n_steps, len(p.question)) for p in sent] == sorted((p.n_steps, len(p.question)) for p in problems)
    assert result.outcomes == [i % 3 == 1 for i in range(6)]
    assert result.correct == 2 and result.n == 6 and result.split == "validation"
    assert result.outputs == texts and result.families == [p.family for p in problems]
    assert result.answers[1] == problems[1].answer and result.answers[2] is None
    steps = {p.n_steps for p in problems}
    assert result.by_steps == {k: (sum(o for o, p in zip(result.outcomes, problems) if p.n_steps == k),
                                   sum(p.n_steps == k for p in problems)) for k in sorted(steps)}

    summary = result.summary()
    assert summary["overall"] == {"n": 6, "accuracy": 2 / 6}
    assert list(summary["by_steps"]) == sorted(steps)
    assert sum(v["n"] for v in summary["by_family"].values()) == 6
    for family, v in summary["by_family"].items():
        members = [o for o, p in zip(result.outcomes, problems) if p.family == family]
        assert v == {"n": len(members), "accuracy": sum(members) / len(members)}
    metrics = result.metrics("validation_")
    assert metrics["validation_accuracy"] == 2 / 6 and metrics["validation_n"] == 6.0
    assert metrics["validation_accuracy_ci_low"] < 2 / 6 < metrics["validation_accuracy_ci_high"]


def test_a_result_from_counts_only_keeps_its_metrics_and_summary():
    result = EvalResult(3, 4, {2: (2, 2), 3: (1, 2)}, [True, True, False, True])
    assert result.metrics()["accuracy_steps_3"] == 0.5 and result.metrics()["accuracy"] == 0.75
    assert result.summary() == {"overall": {"n": 4, "accuracy": 0.75},
                                "by_steps": {2: {"n": 2, "accuracy": 1.0}, 3: {"n": 2, "accuracy": 0.5}},
                                "by_family": {}}


@requires_lema_tiny
def test_lema_tiny_through_the_transformers_engine_and_a_verifier_the_caller_owns():
    pytest.importorskip("transformers")
    from lema.core.engines.transformers_engine import TransformersEngine
    from lema.tiny import default_model_path

    problems = generate(8, seed=5, split="test", steps=(2, 3))

    async def run():
        engine = TransformersEngine(str(default_model_path()), batch_size=8)
        verifier = open_verifier()
        await verifier.start()
        try:
            result = await evaluate_engine(engine, problems, 160, verifier=verifier)
            # The caller's verifier is still open after the evaluation.
            from lema.core.answers import DatasetKind
            from lema.core.records import VerifyItem

            still = await verifier.verify(VerifyItem(DatasetKind.SYNTHETIC, "7", "The answer is 7."))
            return result, still
        finally:
            await verifier.close()
            await engine.close()

    result, still = asyncio.run(run())
    assert still.correct
    assert result.n == len(result.outputs) == len(result.outcomes) == 8
    assert all(o.startswith("Step 1:") for o in result.outputs), result.outputs
    # On Step-format outputs the verifier's verdict is exactly the "The answer is N" reading of the output.
    assert result.outcomes == [answer_is_integer(o) == int(p.answer) for o, p in zip(result.outputs, problems)]
    assert result.correct >= 4, result.outputs  # lema-tiny answers most 2-3 step problems (15 of 16 at seed 5)
