"""The tolerant correction parser and the versioned prompts."""

import pytest

from lema.core.answers import DatasetKind
from lema.core.correction_parser import ParsedCorrection, ParseFailure, parse_correction
from lema.core.formats import correction_input, correction_output
from lema.core.prompts import GSM8K_PROMPT, MATH_PROMPT, PROMPTS

S = DatasetKind.SYNTHETIC


@pytest.mark.parametrize(
    "output",
    [
        " Step 2.\nExplanation: 3 * 4 is 12.\nCorrect Solution: {\n...\nStep 2: 3 * 4 = 12.\nThe answer is 12.\n}",
        "Incorrect Step: Step 2.\nExplanation: 3 * 4 is 12.\nCorrect Solution: {\nStep 2: 3 * 4 = 12.\nThe answer is 12.\n}",
        "**Incorrect Step:** 2\n\n**Explanation:** 3 * 4 is 12.\n\n**Correct Solution:**\n```\nStep 2: 3 * 4 = 12.\nThe answer is 12.\n```",
        "The first incorrect step is step 2. Explanation:   3 * 4 is 12.\nCorrected solution: Step 2: 3 * 4 = 12. The answer is 12.",
        "Step two is wrong.\nExplanation: 3 * 4 is 12.\nCorrect Solution: {\nStep 2: 3 * 4 = 12.\nThe answer is $\\boxed{12}$.",
    ],
)
def test_tolerates_drift(output):
    parsed = parse_correction(output, S, n_original_steps=3)
    assert isinstance(parsed, ParsedCorrection), parsed
    assert parsed.incorrect_step == 2 and parsed.final_answer == "12"
    assert "3 * 4 is 12" in parsed.explanation


@pytest.mark.parametrize(
    "output, reason",
    [
        ("", "empty output"),
        ("Explanation: something.\nCorrect Solution: {The answer is 3.}", "no incorrect step number"),
        ("Step 2.\nExplanation: x.\nCorrect Solution: {\nStep 2: 3 * 4 = 12.\n}", "no final answer"),
        ("Step 2.\nExplanation: x.", "no corrected solution"),
        ("Step 9.\nExplanation: x.\nCorrect Solution: {The answer is 3.}", "outside the original solution"),
    ],
)
def test_rejects_with_reason(output, reason):
    parsed = parse_correction(output, S, n_original_steps=3)
    assert isinstance(parsed, ParseFailure) and reason in parsed.reason


def test_prompts_are_versioned_and_self_consistent():
    assert set(PROMPTS) == {"lema-correct-gsm8k-v1", "lema-correct-math-v1"}
    assert len(GSM8K_PROMPT.examples) == len(MATH_PROMPT.examples) == 4
    assert GSM8K_PROMPT.version != MATH_PROMPT.version and len(GSM8K_PROMPT.version) == 12
    for prompt, kind in ((GSM8K_PROMPT, DatasetKind.GSM8K), (MATH_PROMPT, DatasetKind.MATH)):
        for ex in prompt.examples:  # every example must parse with our own parser
            parsed = parse_correction(correction_output(ex.incorrect_step, ex.explanation, ex.corrected_solution), kind)
            assert isinstance(parsed, ParsedCorrection) and parsed.incorrect_step == ex.incorrect_step
        messages = prompt.messages("Q?", "Step 1: 1 + 1 = 3.\nThe answer is 3.")
        assert messages[0]["role"] == "system" and len(messages) == 1 + 2 * 4 + 1
        assert messages[-1]["content"].endswith("Incorrect Step:")


def test_correction_input_numbers_free_form_solutions():
    text = correction_input("Q?", "first I add\nthen I multiply\nThe answer is 5.")
    assert "Step 1: first I add\nStep 2: then I multiply\nThe answer is 5." in text
