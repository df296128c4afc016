"""Wrong solutions of a synthetic problem, written the way a small model goes wrong: for pretraining text in the
correction format (lema-tiny v2 reads the paper's correction prompts because it saw them in pretraining).

One step k is corrupted and every later step carries the wrong value on, as a model that trusts its own earlier
steps does. The kinds follow what lema-tiny's own mistakes look like:
- `arithmetic`: the right operands, a wrong result ("18 - 3 = 14");
- `copy`: an operand taken from the question is the wrong number (another number of the question, or off by one);
- `reference`: an operand that should be an earlier step's result is another earlier result or a question number;
- `operation`: the wrong operation on the right operands;
- `stop`: the solution ends before step k, answering with step k-1's result.
A later step whose division becomes inexact on the carried value is written with floor division (it is not the first
error, so the correction does not change); a corruption that makes any value negative, or that leaves the final
answer right by luck (the verifier would not call it a mistake), is not used.
"""

from __future__ import annotations

import random

from lema.core.formats import render_solution, split_steps
from lema.core.synthetic.check import check_solution_steps, final_answer
from lema.core.synthetic.generate import SyntheticProblem
from lema.core.synthetic.program import Step

# How often each kind is drawn (arithmetic slips and copy errors are lema-tiny's most common mistakes).
_DEFAULT_WEIGHTS = {"arithmetic": 0.3, "copy": 0.3, "reference": 0.15, "operation": 0.15, "stop": 0.1}
ERROR_KINDS = tuple(_DEFAULT_WEIGHTS)


def _loose(op: str, a: int, b: int) -> int | None:
    """The result a model writes for `a op b` (no exactness required); None for a division by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a // b


def _equation(a: int, op: str, b: int, c: int) -> str:
    return f"{a} {op} {b} = {c}"


def wrong_solution(problem: SyntheticProblem, rng: random.Random, kind: str | None = None,
                   step: int | None = None) -> tuple[str, int, str] | None:
    """A wrong solution of `problem`: (text, first incorrect step, kind), or None when the drawn corruption does not
    apply (e.g. `reference` on a step that uses no earlier result) or would leave the answer right."""
    steps = problem.program.steps
    n = len(steps)
    kind = kind or rng.choices(ERROR_KINDS, weights=list(_DEFAULT_WEIGHTS.values()))[0]
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {ERROR_KINDS}")
    k = step or rng.randint(1, n)
    gold_lines = split_steps(problem.gold_solution)

    if kind == "stop":
        if k == 1:
            return None
        text = render_solution(gold_lines[: k - 1], str(steps[k - 2].result))
        return _checked(problem, text, k, kind)

    question_numbers = problem.program.question_numbers()
    results: list[int] = []
    lines: list[str] = []
    for index, s in enumerate(steps, start=1):
        values = [o.value if o.step is None else results[o.step - 1] for o in s.operands]
        op = s.op
        forced: int | None = None
        if index == k:
            corrupted = _corrupt(s, values, kind, rng, question_numbers, results)
            if corrupted is None:
                return None
            op, values, forced = corrupted
        result = forced if forced is not None else _loose(op, *values)
        if result is None or result < 0:  # a model that writes negative counts is not what lema-tiny does
            return None
        results.append(result)
        lines.append(s.description.replace(s.equation, _equation(values[0], op, values[1], result)))
    return _checked(problem, render_solution(lines, str(results[-1])), k, kind)


def _corrupt(s: Step, values: list[int], kind: str, rng: random.Random, question_numbers: list[int],
             results: list[int]) -> tuple[str, list[int], int | None] | None:
    """(operation, operands, forced result or None) of the corrupted step."""
    if kind == "arithmetic":
        right = _loose(s.op, *values)
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 3])
        return (s.op, values, wrong) if wrong >= 0 else None
    if kind == "operation":
        others = [op for op in "+-*" if op != s.op]
        return rng.choice(others), values, None
    slots = [i for i, o in enumerate(s.operands) if (o.step is None) == (kind == "copy")]
    if not slots:
        return None
    slot = rng.choice(slots)
    if kind == "copy":
        choices = {v for v in question_numbers if v != values[slot]}
        choices |= {v for v in (values[slot] - 1, values[slot] + 1) if v > 0}
    else:  # reference
        choices = {v for v in results + question_numbers if v != values[slot]}
    if not choices:
        return None
    changed = list(values)
    changed[slot] = rng.choice(sorted(choices))
    return s.op, changed, None


def _checked(problem: SyntheticProblem, text: str, k: int, kind: str) -> tuple[str, int, str] | None:
    """Keep a wrong solution only when its first incorrect step is exactly the corrupted one and its answer is wrong
    (right by luck, the verifier would not call it a mistake)."""
    if final_answer(text) == problem.program.answer or check_solution_steps(problem, text) != k:
        return None
    return text, k, kind
