"""The reference corrector for lema's synthetic problems: it knows each problem's program.

It locates the first wrong step exactly (`check_solution_steps`), explains what that step should have
computed and what it computed instead, and writes the gold steps from there on. Its output is rendered in the
same text format an upstream model must produce, so it goes through the same parser: it is the offline default
and the quality ceiling that real upstreams are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

from lema.core.formats import corrected_from_step, correction_output, split_steps
from lema.core.synthetic import SyntheticProblem, check_solution_steps, parse_equation
from lema.core.synthetic.program import Program

MODEL_NAME = "lema-reference-corrector"


@dataclass(frozen=True)
class ReferenceResult:
    text: str | None  # the correction in the prompt's output format; None when nothing is wrong
    reason: str = ""


def _strip_equation(description: str) -> str:
    """'so she has 36 - 5 = 31 pens' -> a readable clause for explanations."""
    return description.strip().rstrip(".")


def correct(problem: SyntheticProblem, wrong_solution: str) -> ReferenceResult:
    step = check_solution_steps(problem, wrong_solution)
    if step is None:
        return ReferenceResult(None, "the solution has no incorrect step: every step and the answer are right")
    program: Program = problem.program
    gold_steps = split_steps(problem.gold_solution)
    written = split_steps(wrong_solution)
    n = len(program.steps)

    if step > n:  # every step right, the answer line is not
        explanation = (
            f"All {n} steps are right, but the final answer must be the result of Step {n}, {problem.answer}."
        )
        corrected = f"...\nThe answer is {problem.answer}."
        return ReferenceResult(correction_output(step, explanation, corrected))

    expected = program.steps[step - 1]
    want = expected.equation
    if step > len(written):
        explanation = f"The solution stops before Step {step}, which must compute {want}."
    else:
        parsed = parse_equation(written[step - 1])
        if parsed is None:
            explanation = f"Step {step} states no calculation; it must compute {want}."
        else:
            a, op, b, c = parsed
            operands = [o.value for o in expected.operands]
            same_operands = [a, b] == operands or (op in "+*" and [b, a] == operands)
            if op == expected.op and same_operands:
                explanation = f"{a} {op} {b} is {expected.result}, not {c}: the arithmetic in Step {step} is wrong."
            else:
                sources = []
                for operand in expected.operands:
                    if operand.step is None:
                        sources.append(f"{operand.value} from the question")
                    else:
                        sources.append(f"{operand.value} from Step {operand.step}")
                explanation = (
                    f"Step {step} computes {a} {op} {b} = {c}, but it must compute {want}, using "
                    f"{' and '.join(sources)}."
                )
    corrected = corrected_from_step(gold_steps, step, problem.answer)
    return ReferenceResult(correction_output(step, explanation, corrected))
