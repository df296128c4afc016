"""Extraction and numeric normalisation (pure functions, no server)."""

import pytest

from lema.core.answers import (
    DatasetKind,
    ExtractionMethod,
    extract_answer,
    extract_boxed,
    gold_answer,
    normalize_numeric,
)

G, M = DatasetKind.GSM8K, DatasetKind.MATH


@pytest.mark.parametrize(
    "text, kind, answer, method",
    [
        ("Step 1: 3 * 4 = 12.\nThe answer is 12.", G, "12", ExtractionMethod.ANSWER_IS),
        ("She has 48/2 = 24 clips.\n#### 72", G, "72", ExtractionMethod.HASHES),
        ("The answer is 3.5.", G, "3.5", ExtractionMethod.ANSWER_IS),
        ("So the final answer is $18.", G, "$18", ExtractionMethod.ANSWER_IS),
        ("The answer is: **42**", G, "42", ExtractionMethod.ANSWER_IS),
        ("I think it is 7 apples, no wait, 9 apples", G, "9", ExtractionMethod.LAST_NUMBER),
        ("no digits at all", G, None, ExtractionMethod.NONE),
        (r"Thus $x = \boxed{\frac{1}{2}}$.", M, r"\frac{1}{2}", ExtractionMethod.BOXED),
        (r"first \boxed{1} then \fbox{\sqrt{\frac{a}{b}}}", M, r"\sqrt{\frac{a}{b}}", ExtractionMethod.BOXED),
        (r"The answer is $\left( 3, \frac{\pi}{2} \right)$.", M, r"\left( 3, \frac{\pi}{2} \right)", ExtractionMethod.ANSWER_IS),
        (r"so \boxed 5.", M, "5", ExtractionMethod.BOXED),
        (r"unbalanced \boxed{1 + {2} and 3", M, "3", ExtractionMethod.LAST_NUMBER),
    ],
)
def test_extract(text, kind, answer, method):
    got = extract_answer(text, kind)
    assert (got.answer, got.method) == (answer, method)


def test_boxed_deep_nesting_is_linear():
    deep = r"\boxed{" + "{" * 20000 + "1" + "}" * 20000 + "}"
    assert extract_boxed(deep) == "{" * 20000 + "1" + "}" * 20000


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("1,000", "1000"), ("$1,000.50", "1000.5"), (r"\$18", "18"), ("5.00", "5"), ("25%", "25"),
        (r"25\%", "25"), ("12 cm", "12"), (r"5 \text{ dollars}", "5"), ("−3", "-3"), ("1{,}000", "1000"),
        (r"1,\!000", "1000"), ("0.50", "0.5"), (".5", "0.5"), ("-0", "0"), ("1 000 000", "1000000"), ("- 3", "-3"),
    ],
)
def test_normalize_numeric(raw, norm):
    assert normalize_numeric(raw) == norm


@pytest.mark.parametrize("raw", ["1,2", r"\frac{1}{2}", "x = 3", "", "1,00", "12 34", "9" * 100])
def test_normalize_numeric_rejects_non_numbers(raw):
    assert normalize_numeric(raw) is None


def test_gold_answer_accepts_full_solutions():
    assert gold_answer("blah\n#### 1,234", G) == "1,234"
    assert gold_answer(r"so $\boxed{\frac{3}{4}}$.", M) == r"\frac{3}{4}"
    assert gold_answer("  17 ", G) == "17"
