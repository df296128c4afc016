"""Final-answer extraction and numeric normalisation (pure Python, no sympy: cheap and predictable).

Extraction finds *which* string is a solution's final answer; equivalence of two answers is decided in
`lema.core.verification` (numeric fast path, then math-verify). Every function here runs in linear time
in its input, so huge or adversarial texts cannot stall the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum


class DatasetKind(str, Enum):
    GSM8K = "gsm8k"
    MATH = "math"
    SYNTHETIC = "synthetic"


class ExtractionMethod(str, Enum):
    NONE = "none"
    ANSWER_IS = "answer_is"
    HASHES = "hashes"
    BOXED = "boxed"
    LAST_NUMBER = "last_number"
    VERBATIM = "verbatim"
    LAST_EXPRESSION = "last_expression"


@dataclass(frozen=True, slots=True)
class Extraction:
    answer: str | None
    method: ExtractionMethod

    @property
    def found(self) -> bool:
        return self.answer is not None and self.answer != ""


_ANSWER_IS_RE = re.compile(r"(?:the\s+)?final\s+answer\s+is|the\s+answer\s+is", re.IGNORECASE)
_HASHES_RE = re.compile(r"####")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
# A number: optional sign, digits with optional thousands separators, optional decimals; or .5
_NUMBER_RE = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-−]?\.\d+")


def _last_braced(text: str, open_at: int) -> str | None:
    """Contents of the brace group starting at text[open_at] == '{', nested braces allowed."""
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None  # unbalanced


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...} (nested braces allowed; `\\boxed 5` too)."""
    matches = list(_BOXED_RE.finditer(text))
    for m in reversed(matches):
        end = m.end()
        if end < len(text) and text[end] == "{":
            content = _last_braced(text, end)
            if content is not None:
                return content.strip()
        else:  # `\boxed 5` form: the next token
            token = re.match(r"[^\s$.,;]+", text[end:])
            if token:
                return token.group(0)
    return None


def _rest_of_line(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start : end if end != -1 else len(text)]


def _clean_tail(answer: str) -> str:
    answer = answer.strip().lstrip(":").strip()
    # Markdown emphasis and a trailing sentence period ("The answer is 3.5." -> "3.5").
    answer = answer.strip("*_ ").rstrip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$" and answer.count("$") == 2:
        answer = answer[1:-1].strip()
        if answer.endswith(".") and not answer.endswith(".."):  # "$52_8.$"
            answer = answer[:-1].rstrip()
    return answer


def extract_answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = _rest_of_line(text, matches[-1].end())
    boxed = extract_boxed(rest)
    answer = boxed if boxed is not None else _clean_tail(rest)
    return answer or None


_ANSWER_IS_INTEGER_RE = re.compile(r"answer is\s*\$?\s*(-?\d+)", re.IGNORECASE)


def answer_is_integer(text: str) -> int | None:
    """The integer N of the last "The answer is N" (thousands separators dropped): a synthetic problem's answer, as
    the reference corrector's step checker reads it (exact integers, no verifier needed). Accuracy is the
    verifier's call (it also falls back to the last number when no such line is there)."""
    found = _ANSWER_IS_INTEGER_RE.findall(text.replace(",", ""))
    return int(found[-1]) if found else None


def extract_hashes(text: str) -> str | None:
    matches = list(_HASHES_RE.finditer(text))
    if not matches:
        return None
    answer = _clean_tail(_rest_of_line(text, matches[-1].end()))
    return answer or None


# A math span, the way math-verify's LaTeX extraction reads one: $$...$$, \[...\], \(...\), $...$ (an escaped
# \$ is a dollar sign, not a delimiter). Lazy bodies without nested quantifiers keep the scan linear.
_MATH_SPAN_RE = re.compile(
    r"(?<!\\)\$\$((?:[^$\\]|\\.)+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$((?:[^$\\]|\\.)+?)\$",
    re.DOTALL,
)
def _final_equation_rhs(text: str) -> str | None:
    """The right-hand side when the last line ends in "x = <LaTeX or number>" ("..., so x = \\frac{1}{2}")."""
    line = text.rstrip().rsplit("\n", 1)[-1].strip().rstrip(".")
    left, sep, right = line.rpartition("=")
    left = left.rstrip()
    if not sep or not left or not left[-1].isalpha() or (len(left) > 1 and left[-2] not in " ,;:"):
        return None  # "x =" must be a one-letter variable
    right = right.strip()
    return right if right and any(c.isdigit() or c == "\\" for c in right) else None


def extract_last_expression(text: str) -> str | None:
    """The last math expression (the right-hand side when it is an equation), e.g. "$\\frac{2\\sqrt{3}}{3}$." ->
    "\\frac{2\\sqrt{3}}{3}", where the last bare number would be "3"."""
    last = None
    for last in _MATH_SPAN_RE.finditer(text):
        pass
    if last is not None:
        expression = next(group for group in last.groups() if group is not None)
    else:
        expression = _final_equation_rhs(text)
        if expression is None:
            return None
    expression = expression.strip().rstrip(".,;").strip()
    if "=" in expression:
        expression = expression.rsplit("=", 1)[1].strip()
    return expression or None


def extract_last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return last.group(0) if last else None


_ORDER = {
    # Word problems: GSM8K's own "####", lema's "The answer is", then a boxed answer.
    DatasetKind.GSM8K: (ExtractionMethod.HASHES, ExtractionMethod.ANSWER_IS, ExtractionMethod.BOXED),
    DatasetKind.SYNTHETIC: (ExtractionMethod.HASHES, ExtractionMethod.ANSWER_IS, ExtractionMethod.BOXED),
    # Competition math: the boxed answer is the convention; then, as math-verify does, the last expression.
    DatasetKind.MATH: (ExtractionMethod.BOXED, ExtractionMethod.ANSWER_IS, ExtractionMethod.HASHES,
                       ExtractionMethod.LAST_EXPRESSION),
}
_EXTRACTORS = {
    ExtractionMethod.HASHES: extract_hashes,
    ExtractionMethod.ANSWER_IS: extract_answer_is,
    ExtractionMethod.BOXED: extract_boxed,
    ExtractionMethod.LAST_EXPRESSION: extract_last_expression,
}


def extract_answer(text: str, kind: DatasetKind) -> Extraction:
    """Find a solution's final answer; the method says how (a last-number fallback is reported as such)."""
    for method in _ORDER[kind]:
        answer = _EXTRACTORS[method](text)
        if answer:
            return Extraction(answer, method)
    number = extract_last_number(text)
    if number is not None:
        return Extraction(number, ExtractionMethod.LAST_NUMBER)
    return Extraction(None, ExtractionMethod.NONE)


def gold_answer(gold: str, kind: DatasetKind) -> str:
    """Accept a bare gold answer or a full reference solution ("... #### 72" / "... \\boxed{72}")."""
    gold = gold.strip()
    if "####" in gold:
        return extract_hashes(gold) or gold
    if "\\boxed" in gold or "\\fbox" in gold:
        return extract_boxed(gold) or gold
    return gold


# --- numeric normalisation ---------------------------------------------------------------------------

_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_UNIT_WORD_RE = re.compile(r"^([-+]?[\d.,]+)\s*([a-zA-Z][a-zA-Z .]*)$")
_SPACED_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")


def normalize_numeric(answer: str) -> str | None:
    """Canonical decimal form of a numeric answer, or None when it is not a plain number.

    Handles $ and \\$, %, thousands separators (1,000 / 1{,}000 / 1,\\!000), units ("5 cm",
    "5 \\text{ dollars}"), trailing zeros (5.00 -> 5) and the unicode minus. "1,2" is *not* a number
    (it is a set in MATH answers), so commas only count in groups of three digits.
    """
    s = answer.strip()
    if not s or len(s) > 64:  # long answers are never plain numbers; keep this cheap
        return None
    s = s.replace("−", "-").replace("\\!", "").replace("{,}", ",").replace("\\,", "")
    s = _TEXT_WRAPPER_RE.sub(lambda m: " " + m.group(1) + " ", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\left", "").replace("\\right", "").strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    unit = _UNIT_WORD_RE.match(s)
    if unit:
        s = unit.group(1)
    s = re.sub(r"^([-+])\s+", r"\1", s.strip())  # "- 3"
    if _SPACED_THOUSANDS_RE.match(s):  # "1 000 000" (SI style); "12 34" stays invalid
        s = s.replace(" ", "")
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    if not _PLAIN_NUMBER_RE.match(s):
        return None
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    return format_decimal(value)


def format_decimal(value: Decimal) -> str:
    """1000 -> "1000", 5.00 -> "5", 0.50 -> "0.5", -0 -> "0" (no exponent notation)."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
