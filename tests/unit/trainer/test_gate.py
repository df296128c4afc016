"""The promotion gate's rule (lema.trainer.gate): paired per-problem outcomes, non-inferiority within a margin, and
"too small to decide" when the problems cannot see the margin. Outcomes are built with known counts, so every
number below can be checked by hand."""

from __future__ import annotations

import pytest

from lema.trainer.evaluate import EvalResult, eval_problems
from lema.trainer.gate import (
    CHOSEN_ON,
    NO_OUTCOMES,
    NOT_SHOWN,
    PROMOTE,
    TOO_SMALL,
    GateError,
    Outcomes,
    check,
    gate,
)
from lema.trainer.recipe import EvalSettings


def paired(n: int, both: int, only_candidate: int, only_reference: int, prefix: str = "p") -> tuple[Outcomes, Outcomes]:
    """Candidate and reference outcomes on n problems: `both` right for both, then problems only the candidate gets
    right, then problems only the reference gets right; the rest wrong for both."""
    ids = tuple(f"{prefix}{i}" for i in range(n))
    candidate = [i < both + only_candidate for i in range(n)]
    reference = [i < both or both + only_candidate <= i < both + only_candidate + only_reference for i in range(n)]
    return Outcomes(ids, tuple(candidate)), Outcomes(ids, tuple(reference))


def test_one_problem_ahead_on_50_problems_is_refused_as_too_small_to_decide():
    # The case: 3/50 against the base model's 2/50 was promoted by the point-estimate gate.
    candidate, base = paired(50, both=2, only_candidate=1, only_reference=0)
    result = check("cot", candidate, "the base model", base)
    assert (candidate.accuracy, base.accuracy) == (0.06, 0.04)
    assert result.decision == TOO_SMALL and not result.passed
    assert result.n == 50 and result.diff == pytest.approx(0.02) and result.mde_80 > result.margin == 0.01
    assert result.problems_needed > 50  # says how many problems the margin needs
    assert "too small to decide" in result.sentence() and "problems would be needed" in result.sentence()
    # Discordant both ways (3/50 against 2/50 on different problems): refused too.
    candidate, base = paired(50, both=0, only_candidate=3, only_reference=2)
    assert check("cot", candidate, "the base model", base).decision == TOO_SMALL


def test_agreeing_on_a_few_problems_is_not_decisive():
    # Zero discordance measures zero variance; the rule of three keeps 50 agreeing problems from deciding.
    candidate, base = paired(50, both=30, only_candidate=0, only_reference=0)
    result = check("same", candidate, "the base model", base)
    assert result.decision == TOO_SMALL and result.mde_80 > 0.01
    candidate, base = paired(600, both=300, only_candidate=0, only_reference=0)
    assert check("same", candidate, "the base model", base).decision == PROMOTE


def test_a_clearly_better_candidate_is_promoted_where_the_problems_can_see_the_margin():
    # Measured on lema-tiny: an adapter and the base model answer about 20% of validation problems differently.
    # 2,500 problems, +6 points (13% only the candidate right, 7% only the base model right).
    candidate, base = paired(2500, both=1200, only_candidate=325, only_reference=175)
    promoted = check("cot", candidate, "the base model", base, margin=0.03)
    assert promoted.decision == PROMOTE and promoted.passed
    assert promoted.diff == pytest.approx(0.06) and promoted.ci95[0] > 0.03 and promoted.mde_80 < 0.03
    assert promoted.discordance == pytest.approx(0.2)
    # The same outcomes cannot see a one-point margin: refused, with the problems that would (about 15,000).
    strict = check("cot", candidate, "the base model", base, margin=0.01)
    assert strict.decision == TOO_SMALL and 12_000 < strict.problems_needed < 18_000


def test_a_candidate_slightly_worse_within_noise_is_refused():
    # −0.4 points on 2,500 problems: the interval's lower end is above −3 points, but the mean is below 0.
    candidate, base = paired(2500, both=1200, only_candidate=245, only_reference=255)
    result = check("lema", candidate, "the serving cot", base, margin=0.03)
    assert result.diff == pytest.approx(-0.004) and result.ci95[0] > -0.03 and result.mde_80 < 0.03
    assert result.decision == NOT_SHOWN and "not shown non-inferior" in result.sentence()


def test_a_clearly_worse_candidate_is_refused():
    candidate, base = paired(2500, both=1200, only_candidate=150, only_reference=350)
    result = check("worse", candidate, "the base model", base, margin=0.03)
    assert result.diff == pytest.approx(-0.08) and result.ci95[1] < 0 and result.decision == NOT_SHOWN


def test_outcomes_pair_on_the_problems_both_answered():
    candidate = Outcomes(("a", "b", "c", "d"), (True, True, False, True))
    reference = Outcomes(("d", "c", "b", "x"), (False, False, True, True))  # another order, one other problem
    mine, theirs = candidate.paired_with(reference)
    assert (mine, theirs) == ([True, False, True], [True, False, False])  # b, c, d in the candidate's order
    assert check("c", candidate, "r", reference).n == 3


def test_a_candidate_chosen_on_its_gate_problems_is_refused():
    candidate, base = paired(2500, both=1200, only_candidate=325, only_reference=175)
    chosen = Outcomes(candidate.ids, candidate.correct, chosen_on=True)
    refused = check("best-of-six", chosen, "the base model", base, margin=0.03)
    assert refused.decision == CHOSEN_ON and "eval.gate_problems" in refused.sentence()


def test_missing_outcomes_are_refused():
    _, base = paired(100, both=50, only_candidate=0, only_reference=0)
    assert check("old", None, "the base model", base).decision == NO_OUTCOMES
    other = Outcomes(("elsewhere",), (True,))
    assert check("moved", other, "the base model", base).decision == NO_OUTCOMES  # no problem in common


def test_every_reference_must_pass_and_the_refusing_check_is_reported():
    candidate, base = paired(2500, both=1200, only_candidate=325, only_reference=175)
    # The serving adapter is ahead of the candidate by 8 points on the same problems.
    serving = Outcomes(candidate.ids, tuple(c or i % 5 == 0 for i, c in enumerate(candidate.correct)))
    decided = gate("cot", candidate, [("the serving old", serving), ("the base model", base)], margin=0.03)
    assert not decided.passed and decided.decision == NOT_SHOWN
    report = decided.to_json()
    assert set(report) >= {"candidate", "reference", "n", "diff", "ci95", "mde_80", "margin", "decision", "forced"}
    assert report["reference"] == "the serving old" and [c["decision"] for c in report["checks"]] == [NOT_SHOWN,
                                                                                                       PROMOTE]
    alone = gate("cot", candidate, [("the base model", base)], margin=0.03)
    assert alone.passed and alone.to_json()["decision"] == PROMOTE


def test_outcomes_round_trip_and_bad_ones_name_the_field():
    outcomes = Outcomes(("a", "b"), (True, False), chosen_on=True)
    assert Outcomes.from_json(outcomes.to_json()) == outcomes
    assert Outcomes.from_json({}) is None and Outcomes.from_json(None) is None
    with pytest.raises(GateError, match="gate_outcomes.ids"):
        Outcomes.from_json({"ids": "a", "correct": [1]})
    with pytest.raises(GateError, match="gate_outcomes.correct"):
        Outcomes.from_json({"ids": ["a"], "correct": ["yes"]})
    with pytest.raises(GateError, match="correct"):
        Outcomes(("a", "b"), (True,))
    with pytest.raises(GateError, match="ids"):
        Outcomes(("a", "a"), (True, False))
    with pytest.raises(GateError, match="margin"):
        check("c", outcomes, "r", outcomes, margin=1.5)
    with pytest.raises(GateError, match="ids"):  # an evaluation without ids cannot be paired
        Outcomes.of(EvalResult(correct=1, n=1, outcomes=[True]))


def test_the_gate_problems_are_disjoint_from_the_problems_a_choice_is_made_on():
    settings = EvalSettings(validation_problems=40, gate_problems=60)
    chosen_on = [p.id for p in eval_problems(settings, "validation")]
    gated_on = [p.id for p in eval_problems(settings, "gate")]
    assert len(chosen_on) == 40 and len(gated_on) == 60 and not set(chosen_on) & set(gated_on)
    # The gate's problems come from the same validation stream (never training or test problems).
    assert all(i.startswith("syn-validation-") for i in gated_on)
    # Without gate problems the gate reads the validation problems themselves.
    same = EvalSettings(validation_problems=40)
    assert [p.id for p in eval_problems(same, "gate")] == chosen_on
