"""Grades of corrections (lema.core.reviews): history kept, the lowest current grade counts, the export filter,
agreement between reviewers."""

from __future__ import annotations

import pytest

from lema.core import reviews
from lema.core.errors import InvalidInput, NotFound
from lema.core.store.db import open_store
from lema.core.store.models import Attempt, Correction, Problem


@pytest.fixture()
def store(tmp_path):
    sessions = open_store(str(tmp_path / "lema.db"))
    with sessions.begin() as s:
        s.add(Problem(id="p", source="test", kind="synthetic", question="q", gold_answer="1", meta={}))
        s.flush()  # no ORM relationships: the foreign keys' order is ours to keep
        s.add(Attempt(id="p|r|0", problem_id="p", model="m", sampling={}, sample_index=0, text="t", correct=False,
                      verdict={}))
        s.flush()
        for i in range(4):
            s.add(Correction(id=f"c{i}", attempt_id="p|r|0", problem_id="p", upstream_model="u", prompt_id="x",
                             prompt_version="v", status="accepted"))
    return sessions


def test_regrade_and_undo_keep_history_and_restore_the_earlier_grade(store):
    with store.begin() as s:
        reviews.record_grade(s, "c0", "alice", "poor")
        reviews.record_grade(s, "c0", "alice", "excellent", "  on a second reading  ")
        assert reviews.current_grades(s)["c0"]["alice"].grade == "excellent"
        assert reviews.current_grades(s)["c0"]["alice"].note == "on a second reading"
        earlier = reviews.undo_grade(s, "c0", "alice")
        assert earlier is not None and earlier.grade == "poor"
        assert reviews.undo_grade(s, "c0", "alice") is None
        with pytest.raises(NotFound, match="correction_id"):
            reviews.undo_grade(s, "c0", "alice")
        assert reviews.current_grades(s) == {}


def test_bad_input_names_its_field(store):
    with store.begin() as s:
        with pytest.raises(InvalidInput, match="^grade must be one of excellent, good, poor"):
            reviews.record_grade(s, "c0", "alice", "meh")
        with pytest.raises(InvalidInput, match="^reviewer"):
            reviews.record_grade(s, "c0", "<b>x</b>", "good")
        with pytest.raises(InvalidInput, match="^note"):
            reviews.record_grade(s, "c0", "alice", "good", "x" * (reviews.MAX_NOTE_CHARS + 1))
        with pytest.raises(NotFound, match="^correction_id"):
            reviews.record_grade(s, "nope", "alice", "good")
    with pytest.raises(InvalidInput, match="min_grade"):
        reviews.GradeFilter("great")
    with pytest.raises(InvalidInput, match="ungraded"):
        reviews.GradeFilter("good", "maybe")


def test_the_lowest_current_grade_decides_and_the_filter_counts_why(store):
    with store.begin() as s:
        reviews.record_grade(s, "c0", "alice", "excellent")
        reviews.record_grade(s, "c0", "bob", "good")
        reviews.record_grade(s, "c1", "alice", "poor")
        reviews.record_grade(s, "c2", "alice", "good")
    with store() as s:
        graded = reviews.effective_grades(s)
    assert graded == {"c0": "good", "c1": "poor", "c2": "good"}
    keep_good = reviews.GradeFilter("good")
    assert [keep_good.keeps(graded.get(c)) for c in ("c0", "c1", "c2", "c3")] == [
        (True, "graded_good"), (False, "graded_poor"), (True, "graded_good"), (True, "ungraded")]
    strict = reviews.GradeFilter("excellent", "drop")
    assert [strict.keeps(graded.get(c))[0] for c in ("c0", "c1", "c2", "c3")] == [False, False, False, False]
    assert not reviews.GradeFilter().active and reviews.GradeFilter(ungraded="drop").active


def test_agreement_and_kappa():
    # Known values: perfect agreement 1.0; agreement no better than chance 0.0.
    assert reviews.cohen_kappa(["good", "poor", "excellent"], ["good", "poor", "excellent"]) == pytest.approx(1.0)
    assert reviews.cohen_kappa(["good", "poor", "good", "poor"], ["good", "good", "poor", "poor"]) == pytest.approx(0.0)
    assert reviews.cohen_kappa(["good", "good"], ["good", "good"]) is None  # chance agreement is total
    # 3 of 4 alike; marginals a: g,g,g,p  b: g,g,p,p -> po 0.75, pe (3*2 + 1*2)/16 = 0.5 -> kappa 0.5
    assert reviews.cohen_kappa(["good", "good", "good", "poor"], ["good", "good", "poor", "poor"]) == pytest.approx(0.5)


def test_agreement_pairs_reviewers_on_shared_corrections(store):
    with store.begin() as s:
        for cid, a, b in (("c0", "good", "good"), ("c1", "poor", "good"), ("c2", "excellent", "excellent")):
            reviews.record_grade(s, cid, "alice", a)
            reviews.record_grade(s, cid, "bob", b)
        reviews.record_grade(s, "c3", "alice", "good")  # graded by one reviewer: not in the pair
    with store() as s:
        (pair,) = reviews.agreement(s)
    assert pair["reviewers"] == ["alice", "bob"] and pair["n"] == 3
    assert pair["agreement"] == pytest.approx(2 / 3)
