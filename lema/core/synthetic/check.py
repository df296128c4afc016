"""Locate the first wrong step of a solution to a synthetic problem, against the problem's program.

Step k of a solution must carry operation k of the program as its last equation "a op b = c". Step k is
wrong when that equation is missing, uses another operation or other operands (either order for + and *),
or states another result. This is the reference corrector's ground truth for "where did it go wrong".
"""

from __future__ import annotations

import re

from lema.core.answers import answer_is_integer
from lema.core.formats import split_steps
from lema.core.synthetic.generate import SyntheticProblem
from lema.core.synthetic.program import ProgramError, apply_op

_OP_ALIASES = {"+": "+", "-": "-", "−": "-", "*": "*", "x": "*", "×": "*", "/": "/", "÷": "/"}
_EQUATION_RE = re.compile(r"(\d+)\s*([+\-−*x×/÷])\s*(\d+)\s*=\s*(\d+)")


def parse_equation(step_text: str) -> tuple[int, str, int, int] | None:
    """The last "a op b = c" of a step, as (a, op, b, c); None when the step has none."""
    found = _EQUATION_RE.findall(step_text.replace(",", ""))
    if not found:
        return None
    a, op, b, c = found[-1]
    return int(a), _OP_ALIASES[op], int(b), int(c)


def final_answer(solution_text: str) -> int | None:
    """The integer N of the last "The answer is N" line."""
    return answer_is_integer(solution_text)


def check_solution_steps(problem: SyntheticProblem, solution_text: str) -> int | None:
    """The 1-based index of the first wrong step, or None if every step and the final answer are right.

    A missing step counts as wrong at the first missing one. When every step is right but the final answer
    line is missing or wrong, the answer line is the mistake: returns len(program) + 1.
    """
    steps = split_steps(solution_text)
    for k, expected in enumerate(problem.program.steps, start=1):
        if k > len(steps):
            return k
        parsed = parse_equation(steps[k - 1])
        if parsed is None:
            return k
        a, op, b, c = parsed
        want = [o.value for o in expected.operands]
        same_operands = [a, b] == want or (op in "+*" and [b, a] == want)
        if op != expected.op or not same_operands or c != expected.result or not _arithmetic_holds(a, op, b, c):
            return k
    if final_answer(solution_text) != int(problem.answer):
        return len(problem.program) + 1
    return None


def _arithmetic_holds(a: int, op: str, b: int, c: int) -> bool:
    try:
        return apply_op(op, a, b) == c
    except ProgramError:
        return False
