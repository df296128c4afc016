"""The reasoner's boundary (services/reasoner/validation.py)."""

from __future__ import annotations

import pytest

from lema.core.config import ReasonerConfig
from lema.core.errors import InvalidInput
from lema.services.reasoner.validation import sampling, solve_request
from lema.v1 import common_pb2 as pb
from lema.v1 import reasoner_pb2 as rpb

CONFIG = ReasonerConfig(max_samples=4, max_problems=2, max_question_chars=40, max_tokens_limit=100)
PROBLEM = pb.Problem(kind=3, question="What is 2 + 3?", gold_answer="5")


def test_a_valid_request_becomes_problems_and_sampling():
    problems, params = solve_request(rpb.SolveRequest(problems=[PROBLEM], sampling=pb.SamplingParams(n=2)), CONFIG)
    assert len(problems) == 1 and params.n == 2 and params.max_tokens == CONFIG.default_max_tokens


@pytest.mark.parametrize("fields, message", [
    (dict(n=0), "sampling.n must be >= 1"),
    (dict(n=5), "at most 4 samples"),
    (dict(n=1, max_tokens=101), r"sampling.max_tokens must be in 1..100"),
    (dict(n=1, temperature=float("nan")), "sampling.temperature"),
])
def test_sampling_bounds_name_the_field(fields, message):
    with pytest.raises(InvalidInput, match=message):
        sampling(pb.SamplingParams(**fields), CONFIG)


@pytest.mark.parametrize("problems, verify, message", [
    ([], False, "problems is empty"),
    ([PROBLEM] * 3, False, "batch has 3 problems; the limit is 2"),
    ([pb.Problem(kind=3, question=" ")], False, r"problems\[0\].question is empty"),
    ([pb.Problem(kind=3, question="q" * 41)], False, "41 characters; the limit is 40"),
    ([pb.Problem(kind=0, question="q")], False, r"problems\[0\].kind must be"),
    ([PROBLEM, pb.Problem(kind=3, question="q")], True, r"problems\[1\].gold_answer is empty"),
])
def test_problems_are_checked_before_any_work(problems, verify, message):
    with pytest.raises(InvalidInput, match=message):
        solve_request(rpb.SolveRequest(problems=problems, verify=verify, sampling=pb.SamplingParams(n=1)), CONFIG)
