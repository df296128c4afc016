"""The verifier's boundary (services/verifier/validation.py): wire messages to typed values or InvalidInput."""

from __future__ import annotations

import grpc
import pytest

from lema.core.answers import DatasetKind
from lema.core.config import VerifierConfig
from lema.core.errors import InvalidInput
from lema.services.verifier.validation import batch_items, verify_item
from lema.v1 import verifier_pb2 as vpb

CONFIG = VerifierConfig(max_gold_chars=10, max_candidate_chars=20, max_batch_items=3)


def test_a_valid_request_becomes_a_typed_item():
    item = verify_item(vpb.VerifyRequest(kind=1, gold_answer="42", candidate="so 42", id="a"), CONFIG)
    assert (item.kind, item.gold, item.candidate, item.id) == (DatasetKind.GSM8K, "42", "so 42", "a")


@pytest.mark.parametrize("fields, message", [
    (dict(kind=0, gold_answer="1", candidate="1"), "kind must be"),
    (dict(kind=1, gold_answer=" ", candidate="1"), "gold_answer is empty"),
    (dict(kind=1, gold_answer="1", candidate=""), "candidate is empty"),
    (dict(kind=1, gold_answer="1" * 11, candidate="1"), "gold_answer has 11 characters; the limit is 10"),
    (dict(kind=1, gold_answer="1", candidate="1" * 21), "candidate has 21 characters; the limit is 20"),
])
def test_bad_fields_are_named(fields, message):
    with pytest.raises(InvalidInput, match=message) as error:
        verify_item(vpb.VerifyRequest(**fields), CONFIG)
    assert error.value.grpc_status == grpc.StatusCode.INVALID_ARGUMENT and error.value.http_status == 400


def test_a_batch_is_refused_whole_naming_the_bad_index():
    good = vpb.VerifyRequest(kind=1, gold_answer="1", candidate="1")
    with pytest.raises(InvalidInput, match="items is empty"):
        batch_items(vpb.VerifyBatchRequest(), CONFIG)
    with pytest.raises(InvalidInput, match="4 items; the limit is 3"):
        batch_items(vpb.VerifyBatchRequest(items=[good] * 4), CONFIG)
    with pytest.raises(InvalidInput, match=r"items\[1\]: candidate is empty"):
        batch_items(vpb.VerifyBatchRequest(items=[good, vpb.VerifyRequest(kind=1, gold_answer="1")]), CONFIG)
    assert len(batch_items(vpb.VerifyBatchRequest(items=[good] * 3), CONFIG)) == 3
