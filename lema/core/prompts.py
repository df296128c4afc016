"""Versioned correction prompts: an instruction plus 4 annotated mistake-correction examples.

One prompt for GSM8K-style word problems (also used for lema's synthetic problems) and one for MATH-style
problems. The structure follows the LEMA paper (question, original solution as numbered steps in braces,
"Incorrect Step: Step k.", "Explanation: ...", "Correct Solution:" in braces with earlier unchanged steps
elided as "..."); the text and the examples are our own. Every correction carries the prompt's id and a
content hash, so a change of wording is always visible in the data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property

from lema.core.answers import DatasetKind
from lema.core.engines.base import ChatMessage
from lema.core.formats import CORRECT_INSTRUCTION, correction_input, correction_output


@dataclass(frozen=True)
class CorrectionExample:
    question: str
    wrong_solution: str
    incorrect_step: int
    explanation: str
    corrected_solution: str


@dataclass(frozen=True)
class CorrectionPrompt:
    id: str
    instruction: str
    examples: tuple[CorrectionExample, ...]

    @cached_property
    def version(self) -> str:
        """Content hash of everything that reaches the upstream model (first 12 hex digits of sha256)."""
        payload = json.dumps({"instruction": self.instruction, "examples": [asdict(e) for e in self.examples]},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def messages(self, question: str, wrong_solution: str) -> list[ChatMessage]:
        """Chat form: the instruction as system message, each example as a user/assistant turn."""
        messages: list[ChatMessage] = [{"role": "system", "content": self.instruction}]
        for ex in self.examples:
            messages.append({"role": "user", "content": correction_input(ex.question, ex.wrong_solution)})
            messages.append(
                {"role": "assistant", "content": correction_output(ex.incorrect_step, ex.explanation,
                                                                   ex.corrected_solution).lstrip()}
            )
        messages.append({"role": "user", "content": correction_input(question, wrong_solution)})
        return messages

    def text(self, question: str, wrong_solution: str) -> str:
        """Completion form (for base models without a chat template)."""
        parts = [self.instruction, ""]
        for ex in self.examples:
            parts.append(correction_input(ex.question, ex.wrong_solution)
                         + correction_output(ex.incorrect_step, ex.explanation, ex.corrected_solution))
            parts.append("")
        parts.append(correction_input(question, wrong_solution))
        return "\n".join(parts)


GSM8K_PROMPT = CorrectionPrompt(
    id="lema-correct-gsm8k-v1",
    instruction=CORRECT_INSTRUCTION
    + " Answer in exactly this form: \"Step k.\" on the first line, then \"Explanation: ...\", then "
    "\"Correct Solution: {...}\" with the steps from the incorrect one on, ending with \"The answer is N.\"",
    examples=(
        CorrectionExample(
            question="A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30 of them. "
            "How many muffins are left?",
            wrong_solution="Step 1: She makes 24 + 18 = 32 muffins.\nStep 2: She has 32 - 30 = 2 muffins left.\n"
            "The answer is 2.",
            incorrect_step=1,
            explanation="24 + 18 is 42, not 32. The addition is wrong, and Step 2 inherits the error.",
            corrected_solution="Step 1: She makes 24 + 18 = 42 muffins.\n"
            "Step 2: She has 42 - 30 = 12 muffins left.\nThe answer is 12.",
        ),
        CorrectionExample(
            question="Liam reads 15 pages a day for 6 days and then 20 pages on the seventh day. "
            "How many pages does he read in total?",
            wrong_solution="Step 1: In 6 days he reads 15 * 6 = 90 pages.\n"
            "Step 2: In total he reads 90 * 20 = 1800 pages.\nThe answer is 1800.",
            incorrect_step=2,
            explanation="The 20 pages of the seventh day must be added to the 90 pages, not multiplied: "
            "Step 2 uses the wrong operation.",
            corrected_solution="...\nStep 2: In total he reads 90 + 20 = 110 pages.\nThe answer is 110.",
        ),
        CorrectionExample(
            question="Maya has $50. She buys 3 notebooks at $7 each and a pen for $4. "
            "How much money does she have left?",
            wrong_solution="Step 1: The notebooks cost 3 * 7 = 21 dollars.\n"
            "Step 2: The notebooks and the pen cost 21 + 4 = 25 dollars.\n"
            "Step 3: She has 50 - 21 = 29 dollars left.\nThe answer is 29.",
            incorrect_step=3,
            explanation="Step 3 subtracts only the notebooks and forgets the pen; it must subtract the total of "
            "25 dollars found in Step 2.",
            corrected_solution="...\nStep 3: She has 50 - 25 = 25 dollars left.\nThe answer is 25.",
        ),
        CorrectionExample(
            question="A farmer packs 96 eggs into cartons of 12. He sells each carton for $3. "
            "How much money does he make?",
            wrong_solution="Step 1: He fills 96 / 12 = 8 cartons.\nStep 2: He makes 8 * 4 = 32 dollars.\n"
            "The answer is 32.",
            incorrect_step=2,
            explanation="Each carton sells for $3, not $4: Step 2 uses a number that is not in the question.",
            corrected_solution="...\nStep 2: He makes 8 * 3 = 24 dollars.\nThe answer is 24.",
        ),
    ),
)

MATH_PROMPT = CorrectionPrompt(
    id="lema-correct-math-v1",
    instruction=CORRECT_INSTRUCTION
    + " Answer in exactly this form: \"Step k.\" on the first line, then \"Explanation: ...\", then "
    "\"Correct Solution: {...}\" with the steps from the incorrect one on, ending with "
    "\"The answer is $\\boxed{...}$.\"",
    examples=(
        CorrectionExample(
            question="What is the value of $x$ if $3x + 7 = 22$?",
            wrong_solution="Step 1: Subtract 7 from both sides: $3x = 22 + 7 = 29$.\n"
            "Step 2: Divide by 3: $x = \\frac{29}{3}$.\nThe answer is $\\boxed{\\frac{29}{3}}$.",
            incorrect_step=1,
            explanation="Subtracting 7 from both sides gives $3x = 22 - 7 = 15$; the step adds 7 instead.",
            corrected_solution="Step 1: Subtract 7 from both sides: $3x = 22 - 7 = 15$.\n"
            "Step 2: Divide by 3: $x = 5$.\nThe answer is $\\boxed{5}$.",
        ),
        CorrectionExample(
            question="Compute $\\binom{6}{2}$.",
            wrong_solution="Step 1: $\\binom{6}{2} = \\frac{6!}{2!\\,4!}$.\n"
            "Step 2: This is $\\frac{720}{2 \\cdot 24} = \\frac{720}{48} = 30$.\nThe answer is $\\boxed{30}$.",
            incorrect_step=2,
            explanation="$720 / 48 = 15$, not $30$: the division in Step 2 is wrong.",
            corrected_solution="...\nStep 2: This is $\\frac{720}{2 \\cdot 24} = \\frac{720}{48} = 15$.\n"
            "The answer is $\\boxed{15}$.",
        ),
        CorrectionExample(
            question="Find the sum of the roots of $x^2 - 5x + 6 = 0$.",
            wrong_solution="Step 1: Factor: $(x-2)(x-3) = 0$.\nStep 2: The roots are $x = -2$ and $x = -3$.\n"
            "Step 3: Their sum is $-5$.\nThe answer is $\\boxed{-5}$.",
            incorrect_step=2,
            explanation="$(x-2)(x-3) = 0$ gives $x = 2$ or $x = 3$; Step 2 flips the signs of the roots.",
            corrected_solution="...\nStep 2: The roots are $x = 2$ and $x = 3$.\nStep 3: Their sum is $5$.\n"
            "The answer is $\\boxed{5}$.",
        ),
        CorrectionExample(
            question="What is the area of a circle with diameter 10?",
            wrong_solution="Step 1: The area is $\\pi r^2$ with $r = 10$.\nStep 2: So the area is $100\\pi$.\n"
            "The answer is $\\boxed{100\\pi}$.",
            incorrect_step=1,
            explanation="The radius is half the diameter, $r = 5$; Step 1 uses the diameter as the radius.",
            corrected_solution="Step 1: The area is $\\pi r^2$ with $r = \\frac{10}{2} = 5$.\n"
            "Step 2: So the area is $25\\pi$.\nThe answer is $\\boxed{25\\pi}$.",
        ),
    ),
)

PROMPTS = {p.id: p for p in (GSM8K_PROMPT, MATH_PROMPT)}


def prompt_for(kind: DatasetKind) -> CorrectionPrompt:
    return MATH_PROMPT if kind is DatasetKind.MATH else GSM8K_PROMPT
