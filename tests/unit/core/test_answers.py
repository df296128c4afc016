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
        # MATH without a boxed answer: the last expression, as math-verify reads it (issue 17), not its last number
        (r"So the ratio is $\frac{2\sqrt{3}}{3}$.", M, r"\frac{2\sqrt{3}}{3}", ExtractionMethod.LAST_EXPRESSION),
        (r"We get \[x = 6+9i.\]", M, "6+9i", ExtractionMethod.LAST_EXPRESSION),
        (r"hence \(11\sqrt2\), which costs \$15 and \$20 in all", M, r"11\sqrt2", ExtractionMethod.LAST_EXPRESSION),
        ("Finally, x = \\frac{1}{2}", M, r"\frac{1}{2}", ExtractionMethod.LAST_EXPRESSION),
        ("there are $9$ divisors of 196.", M, "9", ExtractionMethod.LAST_EXPRESSION),
        ("I think 7, no wait, 9", M, "9", ExtractionMethod.LAST_NUMBER),
        (r"He pays $15 and $20 in all.", G, "20", ExtractionMethod.LAST_NUMBER),  # dollars in word problems
    ],
)
def test_extract(text, kind, answer, method):
    got = extract_answer(text, kind)
    assert (got.answer, got.method) == (answer, method)


def test_last_expression_on_adversarial_text():
    """Unclosed delimiters and long lines: an answer or none, without a catastrophic regex backtrack (the suite's
    timeout is the guard; speed is measured in bench/, not asserted here)."""
    assert extract_answer("$" + "\\" * 100_000, M).method == ExtractionMethod.NONE
    assert extract_answer("x = " + "a " * 100_000, M).method == ExtractionMethod.NONE
    assert extract_answer("$a" * 50_000, M).answer == "a"
    assert extract_answer("\\[" + "x" * 200_000 + " 7", M).answer == "7"


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


@pytest.mark.parametrize("text, expected", [
    ("Step 1: 2 + 3 = 5.\nThe answer is 5.", 5),
    ("the answer is $1,250", 1250),
    ("The answer is -3. Wait, the answer is 4", 4),
    ("The answer is five", None),
    ("no answer here 42", None),
])
def test_answer_is_integer_is_the_one_reading_of_synthetic_answers(text, expected):
    from lema.core.answers import answer_is_integer
    from lema.core.synthetic import final_answer

    assert answer_is_integer(text) == expected == final_answer(text)
    # The evaluator (trainer.evaluate.evaluate_engine: the verifier's synthetic reading) reads the same integer off
    # "The answer is N", and reads no integer there when there is none (a text without that line falls back to its
    # last number, reported as such).
    extraction = extract_answer(text, DatasetKind.SYNTHETIC)
    read = normalize_numeric(extraction.answer) if extraction.found else None
    if expected is not None:
        assert extraction.method == ExtractionMethod.ANSWER_IS and read == str(expected)
    else:
        assert extraction.method != ExtractionMethod.ANSWER_IS or read is None, extraction
