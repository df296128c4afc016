"""A tolerant parser for correction outputs: the incorrect step, the explanation, the corrected solution.

Upstream models drift: extra whitespace, markdown (**Incorrect Step:** / ```), missing or doubled braces,
"Step 2" vs "2" vs "step two is wrong". The parser accepts that drift but rejects, with a reason, any output
that lacks a step number or a final answer, since neither can be trained on or verified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lema.core.answers import DatasetKind, ExtractionMethod, extract_answer
from lema.core.formats import INCORRECT_STEP_LABEL

_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_NUM = r"(\d+|" + "|".join(_WORDS) + r")"
_STEP_PATTERNS = [
    re.compile(r"incorrect\s+step\s*(?:is|:|：)?\s*[*_`]*\s*(?:step\s*)?#?\s*" + _NUM, re.IGNORECASE),
    re.compile(r"^\s*[*_`]*\s*step\s*#?\s*" + _NUM + r"\b", re.IGNORECASE),  # output that starts "Step 2."
    re.compile(r"first\s+(?:incorrect|wrong)\s+step\s+is\s+(?:step\s*)?" + _NUM, re.IGNORECASE),
    re.compile(r"step\s*" + _NUM + r"\s+is\s+(?:incorrect|wrong)", re.IGNORECASE),
]
_EXPLANATION_RE = re.compile(
    r"explanation\s*[*_]*\s*[:：]\s*[*_]*(.*?)(?=\n\s*[*_#]*\s*correct(?:ed)?\s+solution|\Z)", re.IGNORECASE | re.DOTALL
)
_CORRECTED_RE = re.compile(r"correct(?:ed)?\s+solution\s*[*_]*\s*[:：]?\s*[*_]*", re.IGNORECASE)
_EXPLICIT_ANSWER = {ExtractionMethod.ANSWER_IS, ExtractionMethod.BOXED, ExtractionMethod.HASHES}


@dataclass(frozen=True)
class ParsedCorrection:
    incorrect_step: int
    explanation: str
    corrected_solution: str
    final_answer: str


@dataclass(frozen=True)
class ParseFailure:
    reason: str


def _step_number(text: str) -> int | None:
    for pattern in _STEP_PATTERNS:
        match = pattern.search(text)
        if match:
            token = match.group(1).lower()
            return int(token) if token.isdigit() else _WORDS[token]
    return None


def _unwrap(block: str) -> str:
    """The corrected solution: inside the first balanced {...} if it starts with a brace, without fences."""
    block = re.sub(r"```[a-zA-Z]*", "", block).strip()
    if block.startswith("{"):
        depth = 0
        for i, ch in enumerate(block):
            if ch == "{" and (i == 0 or block[i - 1] != "\\"):
                depth += 1
            elif ch == "}" and block[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return block[1:i].strip()
        return block[1:].strip()  # unclosed brace: take the rest
    return block.rstrip("}").strip()


def parse_correction(output: str, kind: DatasetKind, n_original_steps: int | None = None) -> ParsedCorrection | ParseFailure:
    """Parse an upstream's correction. `output` may or may not repeat the "Incorrect Step:" label."""
    text = output.strip()
    if not text:
        return ParseFailure("empty output")
    step = _step_number(text if INCORRECT_STEP_LABEL.lower() in text.lower() else f"{INCORRECT_STEP_LABEL} {text}")
    if step is None:
        return ParseFailure("no incorrect step number found")
    if step < 1 or (n_original_steps is not None and step > n_original_steps + 1):
        return ParseFailure(f"incorrect step {step} is outside the original solution's {n_original_steps} steps")

    explanation_match = _EXPLANATION_RE.search(text)
    explanation = explanation_match.group(1).strip().strip("*_ ") if explanation_match else ""
    corrected_match = _CORRECTED_RE.search(text)
    if corrected_match is None:
        return ParseFailure("no corrected solution found (expected 'Correct Solution: {...}')")
    corrected = _unwrap(text[corrected_match.end() :])
    extraction = extract_answer(corrected, kind)
    if not extraction.found or extraction.method not in _EXPLICIT_ANSWER:
        return ParseFailure("the corrected solution has no final answer ('The answer is ...' or \\boxed{})")
    if not explanation:
        explanation = "(no explanation given)"
    return ParsedCorrection(step, explanation, corrected, extraction.answer or "")
