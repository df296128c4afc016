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
