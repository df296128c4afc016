"""lema's one solution format and the paper's two training input/output formats.

A solution is a list of steps followed by a final-answer line:

    Step 1: Tom buys 3 boxes of 12 pens, so he has 3 * 12 = 36 pens.
    Step 2: He gives away 5 pens, so he has 36 - 5 = 31 pens left.
    The answer is 31.

Every producer (synthetic gold chains, the reasoner's prompts, the corrector's output) and every consumer
(verifier extraction, step location for corrections, exports) goes through this module, so the format is
defined exactly once.
"""

from __future__ import annotations

import re

SOLVE_INSTRUCTION = "Solve the following math problem step by step."
ANSWER_PREFIX = "The answer is"

_STEP_RE = re.compile(r"^\s*(?:\*\*)?\s*Step\s+(\d+)\s*[:.)]\s*(?:\*\*)?\s*(.*)$", re.IGNORECASE)


def cot_prompt(question: str) -> str:
    """The paper's CoT input: an instruction, the question, and a step-by-step lead."""
    return f"{SOLVE_INSTRUCTION}\nQuestion: {question.strip()}\nAnswer: Let's think step by step.\n"


def cot_messages(question: str) -> list[dict[str, str]]:
    """The CoT input as a chat: one user turn (what every engine, the reasoner and the evaluator send)."""
    return [{"role": "user", "content": cot_prompt(question)}]


def render_solution(steps: list[str], answer: str) -> str:
    """Render steps and a final answer in lema's solution format."""
    lines = [f"Step {i}: {s.strip()}" for i, s in enumerate(steps, start=1)]
    lines.append(f"{ANSWER_PREFIX} {answer}.")
    return "\n".join(lines)


def split_steps(solution: str) -> list[str]:
    """Return the step bodies of a solution (without the "Step k:" prefix or the answer line).

    Text that does not use the Step format falls back to one step per non-empty line, so that a
    mistake can still be located by line in free-form solutions.
    """
    stepped = [m.group(2).strip() for line in solution.splitlines() if (m := _STEP_RE.match(line))]
    if stepped:
        return stepped
    lines = [ln.strip() for ln in solution.splitlines() if ln.strip()]
    return [ln for ln in lines if not ln.lower().startswith(ANSWER_PREFIX.lower())]


# --- the correction format (the paper's second input/output format) ------------------------------------

CORRECT_INSTRUCTION = (
    "For the question and its original solution below, find the first incorrect step, explain why it is "
    "incorrect, and write the correct solution from that step on."
)
INCORRECT_STEP_LABEL = "Incorrect Step:"


def numbered_solution(solution: str) -> str:
    """A solution as numbered steps plus its answer line (free-form text gets one step per line)."""
    steps = split_steps(solution)
    answer_lines = [ln.strip() for ln in solution.splitlines() if ln.strip().lower().startswith(ANSWER_PREFIX.lower())]
    lines = [f"Step {i}: {s}" for i, s in enumerate(steps, start=1)]
    if answer_lines:
        lines.append(answer_lines[-1])
    return "\n".join(lines)


def correction_input(question: str, wrong_solution: str, through_step: int | None = None) -> str:
    """The paper's correction input: instruction, question, the wrong solution as numbered steps in braces,
    ending with the "Incorrect Step:" label that the output continues.

    `through_step` shortens a long original solution: it stops at that step (the incorrect one) and the rest is
    elided as "...", the paper's own elision mark; what the output needs (the wrong step) stays visible."""
    original = numbered_solution(wrong_solution)
    if through_step is not None:
        lines = original.splitlines()
        if through_step < len(lines):
            original = "\n".join(lines[:through_step] + ["..."])
    return (
        f"{CORRECT_INSTRUCTION}\nQuestion: {question.strip()}\n"
        f"Original Solution: {{\n{original}\n}}\n{INCORRECT_STEP_LABEL}"
    )


def correction_output(incorrect_step: int, explanation: str, corrected_solution: str) -> str:
    """The paper's correction output: the step number, the explanation, the corrected solution in braces.
    Earlier, unchanged steps are elided as "..." at the top of the corrected solution."""
    return (
        f" Step {incorrect_step}.\nExplanation: {explanation.strip()}\n"
        f"Correct Solution: {{\n{corrected_solution.strip()}\n}}"
    )


def corrected_from_step(steps: list[str], start: int, answer: str) -> str:
    """Render a corrected solution that continues from step `start` (1-based): "...", then the steps."""
    lines = ["..."] if start > 1 else []
    lines += [f"Step {i}: {s.strip()}" for i, s in enumerate(steps[start - 1 :], start=start)]
    lines.append(f"{ANSWER_PREFIX} {answer}.")
    return "\n".join(lines)


def full_corrected_solution(wrong_solution: str, incorrect_step: int, corrected_solution: str) -> str:
    """A whole correct solution from a correction: the original steps before the incorrect one, then the corrected
    steps (the corrected solution without its leading "..." elision), renumbered as one solution."""
    kept = split_steps(wrong_solution)[: max(incorrect_step - 1, 0)]
    corrected_lines = [ln.strip() for ln in corrected_solution.strip().splitlines() if ln.strip() and ln.strip() != "..."]
    steps = kept + [m.group(2).strip() for ln in corrected_lines if (m := _STEP_RE.match(ln))]
    answer = [ln for ln in corrected_lines if ln.lower().startswith(ANSWER_PREFIX.lower())]
    lines = [f"Step {i}: {s}" for i, s in enumerate(steps, start=1)]
    return "\n".join(lines + answer[-1:])


def step_correction(wrong_solution: str, incorrect_step: int, corrected_solution: str) -> tuple[str, str]:
    """The step-level correction format: (context, target). The context is the model's own steps before the
    incorrect one, which were right (given to the model, not trained); the target is the corrected solution from the
    incorrect step on. Under the CoT prompt, the model learns to write the right step exactly where it went wrong,
    in the words it already reads, instead of the paper's correction text."""
    whole = full_corrected_solution(wrong_solution, incorrect_step, corrected_solution).splitlines()
    keep = max(incorrect_step - 1, 0)
    context = "".join(line + "\n" for line in whole[:keep])
    return context, "\n".join(whole[keep:])


def step_preference(wrong_solution: str, incorrect_step: int, corrected_solution: str) -> tuple[str, str, str] | None:
    """A step-level preference pair from a correction: (context, chosen, rejected). The context is the model's own
    steps before its mistake; chosen is the corrected solution from the incorrect step to its end, rejected is the
    model's own solution from the same step to its end. None when the two do not differ."""
    context, chosen = step_correction(wrong_solution, incorrect_step, corrected_solution)
    own = numbered_solution(wrong_solution).splitlines()
    rejected = "\n".join(own[max(incorrect_step - 1, 0):])
    if not rejected.strip() or rejected.strip() == chosen.strip():
        return None
    return context, chosen, rejected
