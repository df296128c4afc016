"""The corrector's boundary (services/corrector/validation.py)."""

from __future__ import annotations

import pytest

from lema.core.config import CorrectorConfig
from lema.core.errors import InvalidInput
from lema.services.corrector.validation import augmentation_job, batch_jobs, correction_job
from lema.v1 import common_pb2 as pb
from lema.v1 import corrector_pb2 as cpb

CONFIG = CorrectorConfig(max_question_chars=50, max_solution_chars=80, max_batch_items=2)
PROBLEM = pb.Problem(kind=1, question="Tom has 3 apples and buys 2. How many?", gold_answer="5")
WRONG = "Step 1: 3 + 2 = 6.\nThe answer is 6."


def test_a_valid_request_becomes_a_job():
    job = correction_job(cpb.CorrectRequest(problem=PROBLEM, wrong_solution=WRONG), CONFIG)
    assert (job.question, job.gold_answer) == (PROBLEM.question, "5")


@pytest.mark.parametrize("request_fields, message", [
    (dict(problem=pb.Problem(kind=9, question="q"), wrong_solution=WRONG), "problem.kind must be"),
    (dict(problem=pb.Problem(kind=1, question=" "), wrong_solution=WRONG), "problem.question is empty"),
    (dict(problem=pb.Problem(kind=1, question="q" * 51), wrong_solution=WRONG), "51 characters; the limit is 50"),
    (dict(problem=PROBLEM, wrong_solution=""), "wrong_solution is empty"),
    (dict(problem=PROBLEM, wrong_solution="x" * 81), "wrong_solution has 81 characters"),
    (dict(problem=PROBLEM, wrong_solution=WRONG, max_candidates=17), "max_candidates must be in 0..16"),
])
def test_bad_fields_are_named(request_fields, message):
    with pytest.raises(InvalidInput, match=message):
        correction_job(cpb.CorrectRequest(**request_fields), CONFIG)


def test_batches_and_augmentation():
    good = cpb.CorrectRequest(problem=PROBLEM, wrong_solution=WRONG)
    with pytest.raises(InvalidInput, match="items is empty"):
        batch_jobs(cpb.CorrectBatchRequest(), CONFIG)
    with pytest.raises(InvalidInput, match="3 items; the limit is 2"):
        batch_jobs(cpb.CorrectBatchRequest(items=[good] * 3), CONFIG)
    with pytest.raises(InvalidInput, match=r"items\[1\]: wrong_solution is empty"):
        batch_jobs(cpb.CorrectBatchRequest(items=[good, cpb.CorrectRequest(problem=PROBLEM)]), CONFIG)
    with pytest.raises(InvalidInput, match="num_solutions must be in 1..16"):
        augmentation_job(cpb.AugmentRequest(problem=PROBLEM, num_solutions=0))
    assert augmentation_job(cpb.AugmentRequest(problem=PROBLEM, num_solutions=2))[1] == 2
