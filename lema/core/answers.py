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
    EMPHASIS = "emphasis"  # a bold or emphasised value in the closing sentences
    CLOSING = "closing"  # "... is / are / equals / = / total of X" closing the last sentence
    DISPLAY = "display"  # the last display expression ($$...$$, \[...\])


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


def _brace_pairs(text: str) -> dict[int, int]:
    """Every unescaped "{" position mapped to its closing "}" position, in one pass (unclosed ones are absent)."""
    pairs, stack = {}, []
    for i, ch in enumerate(text):
        if ch in "{}" and (i == 0 or text[i - 1] != "\\"):
            if ch == "{":
                stack.append(i)
            elif stack:
                pairs[stack.pop()] = i
    return pairs


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...} (nested braces allowed; `\\boxed 5` too). Linear:
    the braces are paired once, not rescanned per candidate (50,000 unclosed boxes took minutes that way)."""
    matches = list(_BOXED_RE.finditer(text))
    pairs: dict[int, int] | None = None
    for m in reversed(matches):
        end = m.end()
        if end < len(text) and text[end] == "{":
            if pairs is None:
                pairs = _brace_pairs(text)
            close = pairs.get(end)
            content = text[end + 1:close] if close is not None else None
            if content is not None:
                content = content.strip()
                # A dollar sign mangled into a backslash: \boxed{\15} reads 15 (\$15 stays a dollar amount).
                return content[1:] if re.fullmatch(r"\\\d[\d.,]*", content) else content
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


def extract_last_expression(text: str, keep_equation: bool = False) -> str | None:
    """The last math expression (the right-hand side when it is an equation, unless `keep_equation`), e.g.
    "$\\frac{2\\sqrt{3}}{3}$." -> "\\frac{2\\sqrt{3}}{3}", where the last bare number would be "3"."""
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
    if "=" in expression and not keep_equation:
        expression = expression.rsplit("=", 1)[1].strip()
    return expression or None


_UNIT_TEXT_RE = re.compile(r"(?:\s*(?:\\,|\\;|\\ |~)?\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .^]*\}(?:\^\{?\d\}?)?)+\s*$")


def strip_units(answer: str) -> str:
    """`8\\sqrt{3} \\text{ square inches}` -> `8\\sqrt{3}`: trailing unit words in \\text{} (and ^2, ^3) go, on
    both sides of a comparison; an answer that is only text stays as it is."""
    stripped = _UNIT_TEXT_RE.sub("", answer).strip()
    return stripped if stripped and any(c.isalnum() for c in stripped) else answer


def extract_last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return last.group(0) if last else None


# The closing sentences a grader reads for the answer: the text after the last sentence end that is followed by more
# than a few words (bounded, so the scans below stay linear and cheap).
_CLOSING_CHARS = 400
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$(*])|\n+")
_EMPHASIS_RE = re.compile(r"\*\*([^*\n]{1,80})\*\*|__([^_\n]{1,80})__|\\textbf\{([^{}]{1,80})\}|\\mathbf\{([^{}]{1,80})\}"
                          r"|(?<![*\w])\*([^*\n]{1,40})\*(?![*\w])")
# A value right after a closing cue: a math span, a $-amount or number (with a short unit word), or a LaTeX token.
_VALUE = (r"(\\\(.+?\\\)|\$[^$]{1,200}\$|\\\[.+?\\\]|[-−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?"
          r"|\\frac\{[^{}]{1,40}\}\{[^{}]{1,40}\}|\\sqrt\{[^{}]{1,40}\})")
_CLOSING_RE = re.compile(
    r"(?:\bis\b|\bare\b|\bequals?\b|\bwas\b|\bwere\b|\bwill\s+be\b|\bgives\b|\bget\b|\btotal\s+of\b|=|:)\s*"
    r"(?:(?:exactly|equal\s+to|about|only|just|then|therefore|thus|now)\s+)?" + _VALUE, re.IGNORECASE | re.DOTALL)
_BARE_VALUE_RE = re.compile(_VALUE, re.DOTALL)
_CORRECTION_RE = re.compile(r"\b(?:no\s+wait|wait|actually|i\s+mean|correction|sorry)\b", re.IGNORECASE)


def _closing(text: str) -> str:
    """The last sentence or two (at most _CLOSING_CHARS characters), where a written-out answer sits."""
    tail = text.rstrip()[-_CLOSING_CHARS:]
    parts = [p for p in _SENTENCE_END_RE.split(tail) if p.strip()]
    if not parts:
        return tail
    closing = parts[-1]
    if len(closing.split()) < 3 and len(parts) > 1 and not any(c.isdigit() or c == "\\" for c in closing):
        closing = parts[-2] + " " + closing  # a short "Done." after the answer; a bare value stays alone
    return closing


def _strip_math(value: str) -> str:
    value = value.strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$"), ("$", "$")):
        if value.startswith(left) and value.endswith(right) and len(value) > len(left) + len(right):
            return value[len(left):-len(right)].strip()
    return value


def extract_emphasis(text: str) -> str | None:
    """A bold or emphasised value in the closing sentences ("... is **6**."), when it holds a digit or LaTeX."""
    found = None
    for found in _EMPHASIS_RE.finditer(_closing(text)):
        pass
    if found is None:
        return None
    value = _strip_math(next(g for g in found.groups() if g is not None)).rstrip(".").strip()
    return value if any(c.isdigit() or c == "\\" for c in value) else None


def _is_expression(span: re.Match) -> bool:
    """A math span that could be an answer, not a variable named in passing ("values for \\(n\\)")."""
    body = next(g for g in span.groups() if g is not None).strip()
    return len(body) > 3 or any(c.isdigit() for c in body)


def extract_closing(text: str) -> str | None:
    """The value after the last "is / are / equals / = / total of" in the closing sentence: "the remainder is 0.",
    "2 + 1 = 3 possible values", "a total of 34 hours ... in 4 weeks" -> 0, 3, 34."""
    closing = _closing(text)
    if _BARE_VALUE_RE.fullmatch(closing.strip().rstrip(".").strip()):  # the last line is the value alone
        value = _strip_math(closing.strip().rstrip(".").strip()).rstrip(".,;").strip()
        return (value.rsplit("=", 1)[1].strip() if "=" in value else value) or None
    found = None
    for found in _CLOSING_RE.finditer(closing):
        pass
    if found is None:
        return None
    if _CORRECTION_RE.search(closing, found.end()):  # "it is 7, no wait, 9": the writer corrected the value
        return extract_last_number(closing[found.end():])
    spans = list(_MATH_SPAN_RE.finditer(closing))
    if any(span.end() > found.start(1) and _is_expression(span) for span in spans if span.start() != found.start(1)):
        # An expression follows the stated value, or the cue sits inside one ("$x = 11\\sqrt2$", "this gives us the
        # roots $3, 5, 7$"): the last expression says it better.
        return None
    value = _strip_math(found.group(1)).strip().rstrip(".,;").strip()
    if "=" in value:  # "we get \\[x = 6+9i\\]": the right-hand side
        value = value.rsplit("=", 1)[1].strip().rstrip(".,;").strip()
    return value or None


def extract_display(text: str) -> str | None:
    r"""The last expression when it is a display one ($$...$$ or \[...\]), its right-hand side when it is an
    equation (an inline expression after it wins: that is the last expression's rule)."""
    last = None
    for last in _MATH_SPAN_RE.finditer(text):
        pass
    if last is None or (last.group(1) is None and last.group(2) is None):
        return None
    expression = (last.group(1) or last.group(2)).strip().rstrip(".,;").strip()
    if "=" in expression:
        expression = expression.rsplit("=", 1)[1].strip()
    return expression or None


# Cues ranked as a grader reads a solution: an explicit marker first (GSM8K's "####" and lema's "The answer is" for
# word problems, the box for competition math), then a value emphasised in the closing sentences, then the value a
# closing "is / = / total of" states, then (competition math) the last display expression; the last number last.
_ORDER = {
    DatasetKind.GSM8K: (ExtractionMethod.HASHES, ExtractionMethod.ANSWER_IS, ExtractionMethod.BOXED,
                        ExtractionMethod.EMPHASIS, ExtractionMethod.CLOSING),
    DatasetKind.SYNTHETIC: (ExtractionMethod.HASHES, ExtractionMethod.ANSWER_IS, ExtractionMethod.BOXED,
                            ExtractionMethod.EMPHASIS, ExtractionMethod.CLOSING),
    DatasetKind.MATH: (ExtractionMethod.BOXED, ExtractionMethod.ANSWER_IS, ExtractionMethod.HASHES,
                       ExtractionMethod.EMPHASIS, ExtractionMethod.CLOSING, ExtractionMethod.DISPLAY,
                       ExtractionMethod.LAST_EXPRESSION),
}
_EXTRACTORS = {
    ExtractionMethod.HASHES: extract_hashes,
    ExtractionMethod.ANSWER_IS: extract_answer_is,
    ExtractionMethod.BOXED: extract_boxed,
    ExtractionMethod.LAST_EXPRESSION: extract_last_expression,
    ExtractionMethod.EMPHASIS: extract_emphasis,
    ExtractionMethod.CLOSING: extract_closing,
    ExtractionMethod.DISPLAY: extract_display,
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


_BOXED_OPEN_RE = re.compile(r"\\boxed\s*\{")


def unbox(solution: str) -> tuple[str, str] | None:
    """(the solution with its last \\boxed{X} replaced by X, X), or None when it has no closed boxed answer: the
    same solution as a model that does not box would write it (the benchmarks of unboxed answer reading use it)."""
    start = None
    for start in _BOXED_OPEN_RE.finditer(solution):
        pass
    if start is None:
        return None
    depth, i = 1, start.end()
    while i < len(solution) and depth:
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        i += 1
    if depth:
        return None
    inner = solution[start.end():i - 1]
    return solution[:start.start()] + inner + solution[i:], inner


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
