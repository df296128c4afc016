"""Answer equivalence: extraction, a numeric fast path, then the math-verify library.

`verify_item` is pure and may take unbounded time on adversarial input (sympy on 10^{10^{10^{10}}}), so
services never call it on their event loop: `lema.services.verifier.pool` runs it in worker processes with a
hard per-item timeout. math-verify's own timeouts are signal-based and unreliable off the main thread
(its issues #11, #50, #55), so they are switched off here and the pool enforces the limit instead.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from decimal import Decimal

from lema.core.answers import (
    DatasetKind,
    Extraction,
    ExtractionMethod,
    extract_answer,
    extract_last_expression,
    gold_answer,
    normalize_numeric,
    strip_units,
)
from lema.core.records import Verdict, VerdictReason

# math-verify warns on every call that its own timeout is disabled: that is deliberate here.
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_NORMALIZED_CHARS = 2_000  # verdicts echo normalised forms; keep messages small
_LOOKED_FOR = {
    DatasetKind.GSM8K: '"#### N", "The answer is N", \\boxed{N}, or any number',
    DatasetKind.SYNTHETIC: '"The answer is N", "#### N", \\boxed{N}, or any number',
    DatasetKind.MATH: '\\boxed{...}, "The answer is ...", "#### ...", or any number',
}


def _as_latex(answer: str) -> str:
    if "$" in answer or "\\(" in answer or "\\[" in answer:
        return answer
    return f"${answer}$"


_BASE_NUMBER_RE = re.compile(r"^\s*([0-9A-Za-z]+)_\{?(\d+)\}?\s*$")
_TEXT_ANSWER_RE = re.compile(r"^\s*\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*[A-Za-z][^{}]*\}\s*$")


def _loose_text(answer: str, drop_parens: bool = False) -> str:
    """Whitespace- and wrapper-insensitive form for answers sympy cannot parse (e.g. names)."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", answer)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("$", "")
    if drop_parens:
        s = s.strip().strip("()").rstrip(".")
    return re.sub(r"\s+", "", s).lower()


def clip(text: str) -> str:
    return text if len(text) <= MAX_NORMALIZED_CHARS else text[:MAX_NORMALIZED_CHARS] + "..."


def _timer(start: float) -> Callable[..., Verdict]:
    """A verdict builder that stamps the time elapsed since `start`."""

    def done(correct: bool, reason: VerdictReason, **fields) -> Verdict:
        return Verdict(correct=correct, reason=reason, elapsed_ms=(time.perf_counter() - start) * 1000, **fields)

    return done


def extraction_of(kind: DatasetKind, candidate: str, candidate_is_answer: bool) -> Extraction:
    if candidate_is_answer:
        return Extraction(candidate.strip() or None, ExtractionMethod.VERBATIM)
    return extract_answer(candidate, kind)


def quick_verdict(
    kind: DatasetKind, gold: str, candidate: str, candidate_is_answer: bool = False
) -> Verdict | None:
    """A verdict that needs no sympy (no answer, two plain numbers, word answers), else None.

    Linear-time and safe on any input, so callers run it in-process before paying for a worker.
    """
    start = time.perf_counter()
    done = _timer(start)

    gold_text = gold_answer(gold, kind)
    extraction = extraction_of(kind, candidate, candidate_is_answer)
    if not extraction.found:
        return done(
            False,
            VerdictReason.NO_ANSWER_FOUND,
            extraction_method=ExtractionMethod.NONE,
            detail=f"no final answer found; looked for {_LOOKED_FOR[kind]}",
        )
    answer = extraction.answer or ""
    common = dict(extracted_answer=clip(answer), extraction_method=extraction.method)

    # Fast path: two plain numbers (all of GSM8K and synthetic, much of MATH) need no sympy.
    num_gold, num_cand = normalize_numeric(gold_text), normalize_numeric(answer)
    if num_gold is not None and num_cand is not None:
        equal = Decimal(num_gold) == Decimal(num_cand)
        return done(
            equal,
            VerdictReason.MATCHED if equal else VerdictReason.MISMATCH,
            normalized_gold=num_gold,
            normalized_candidate=num_cand,
            detail="numeric comparison",
            **common,
        )

    base_gold = _BASE_NUMBER_RE.match(gold_text)
    if base_gold:
        # A number in another base (MATH's "52_8"): math-verify drops the subscript, so 52_8 would
        # equal 52_9. Compare digits and base; a bare "52" is accepted as the same digits.
        base_cand = _BASE_NUMBER_RE.match(answer)
        gold_key = (base_gold.group(1).lower(), base_gold.group(2))
        cand_key = (base_cand.group(1).lower(), base_cand.group(2)) if base_cand else (answer.strip().lower(), gold_key[1])
        equal = gold_key == cand_key
        return done(
            equal,
            VerdictReason.MATCHED if equal else VerdictReason.MISMATCH,
            normalized_gold="_".join(gold_key),
            normalized_candidate=clip("_".join(cand_key)),
            detail="base-n number comparison",
            **common,
        )

    if _TEXT_ANSWER_RE.match(gold_text):
        # A word answer (\text{Evelyn}, \text{(C)}): sympy would read it as a product of symbols, so
        # "Evelyn" would equal "Evelny". Compare as text instead.
        loose_gold, loose_cand = _loose_text(gold_text, True), _loose_text(answer, True)
        equal = loose_gold == loose_cand
        return done(
            equal,
            VerdictReason.MATCHED if equal else VerdictReason.MISMATCH,
            normalized_gold=clip(loose_gold),
            normalized_candidate=clip(loose_cand),
            detail="text comparison (word answer)",
            **common,
        )
    return None


def verify_item(kind: DatasetKind, gold: str, candidate: str, candidate_is_answer: bool = False) -> Verdict:
    """The full check: the quick path, then math-verify. Unbounded time: run it in a worker."""
    quick = quick_verdict(kind, gold, candidate, candidate_is_answer)
    if quick is not None:
        return quick
    start = time.perf_counter()
    done = _timer(start)
    gold_text = strip_units(gold_answer(gold, kind))
    extraction = extraction_of(kind, candidate, candidate_is_answer)
    answer = strip_units(extraction.answer or "")
    if "=" in gold_text and "=" not in answer and not candidate_is_answer:
        # The gold answer is an equation (x^2 + y^2 = 13): compare the candidate's last equation whole, not the
        # right-hand side the locator keeps for ordinary answers.
        answer = extract_last_expression(candidate, keep_equation=True) or answer
    common = dict(extracted_answer=clip(answer), extraction_method=extraction.method)
    num_gold, num_cand = normalize_numeric(gold_text), normalize_numeric(answer)

    from math_verify import parse, verify  # heavy import; preloaded in worker processes

    parsed_gold = parse(_as_latex(num_gold or gold_text), parsing_timeout=None)
    parsed_cand = parse(_as_latex(num_cand or answer), parsing_timeout=None)
    if not parsed_gold or not parsed_cand:
        # sympy could not read one side (names, text answers): fall back to a loose string match.
        loose_gold, loose_cand = _loose_text(gold_text), _loose_text(answer)
        if loose_gold and loose_gold == loose_cand:
            return done(
                True,
                VerdictReason.MATCHED,
                normalized_gold=clip(loose_gold),
                normalized_candidate=clip(loose_cand),
                detail="text comparison (not parseable as math)",
                **common,
            )
        side = "gold answer" if not parsed_gold else "candidate answer"
        return done(
            False,
            VerdictReason.PARSE_ERROR,
            normalized_gold=clip(str(parsed_gold[0]) if parsed_gold else loose_gold),
            normalized_candidate=clip(str(parsed_cand[0]) if parsed_cand else loose_cand),
            detail=f"math-verify could not parse the {side}",
            **common,
        )
    equal = verify(parsed_gold, parsed_cand, timeout_seconds=None)
    return done(
        bool(equal),
        VerdictReason.MATCHED if equal else VerdictReason.MISMATCH,
        normalized_gold=clip(str(parsed_gold[0])),
        normalized_candidate=clip(str(parsed_cand[0])),
        detail="math-verify",
        **common,
    )
