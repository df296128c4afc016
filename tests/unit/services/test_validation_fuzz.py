"""Property-based tests of every validation module at a gRPC boundary (issue 28): any wire message, built from the
message's own descriptor (odd Unicode, huge strings, out-of-range enums and numbers, empty and oversized repeated
fields), becomes a typed value or an InvalidInput naming the field: never another exception (which gRPC answers as
UNKNOWN)."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")
from google.protobuf.descriptor import FieldDescriptor  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lema.core.config import CorrectorConfig, ReasonerConfig, VerifierConfig  # noqa: E402
from lema.core.errors import InvalidInput  # noqa: E402
from lema.v1 import common_pb2 as pb  # noqa: E402
from lema.v1 import corrector_pb2 as cpb  # noqa: E402
from lema.v1 import reasoner_pb2 as rpb  # noqa: E402
from lema.v1 import verifier_pb2 as vpb  # noqa: E402

TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "42", "\\boxed{7}", "x" * 70_000, "[" * 3_000,
                                                        "é\u200b\ufeff", "Step 1: 2+2=4\nStep 2: 4*2=8"]))
NUMBER = {FieldDescriptor.TYPE_FLOAT: st.floats(allow_nan=True, allow_infinity=True, width=32),
          FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
          FieldDescriptor.TYPE_INT32: st.integers(-2**31, 2**31 - 1), FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
          FieldDescriptor.TYPE_INT64: st.integers(-2**63, 2**63 - 1), FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
          FieldDescriptor.TYPE_BOOL: st.booleans(), FieldDescriptor.TYPE_ENUM: st.integers(-3, 40)}


def message(cls, depth: int = 0) -> st.SearchStrategy:
    """Any instance of a generated protobuf message class, field by field from its descriptor."""
    fields = {}
    for field in cls.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                value = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3)
            elif depth >= 2:
                continue
            else:
                value = message(field.message_type._concrete_class, depth + 1)
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            value = TEXT if field.type == FieldDescriptor.TYPE_STRING else st.binary(max_size=20)
        else:
            value = NUMBER.get(field.type, st.integers(0, 10))
        repeated = field.is_repeated and not (
            field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry)
        fields[field.name] = st.lists(value, max_size=4) if repeated else value

    def build(values: dict):
        instance = cls()
        for name, value in values.items():
            target = getattr(instance, name)
            if isinstance(value, list):
                target.extend(value) if not value or not hasattr(value[0], "DESCRIPTOR") else \
                    [target.add().CopyFrom(v) for v in value]
            elif isinstance(value, dict):
                target.update(value)
            elif hasattr(value, "DESCRIPTOR"):
                target.CopyFrom(value)
            else:
                setattr(instance, name, value)
        return instance

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _typed_or_invalid(call) -> None:
    try:
        call()
    except InvalidInput as exc:
        assert str(exc) and len(exc.public_message()) <= 1_100


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])


@FUZZ
@given(message(vpb.VerifyBatchRequest))
def test_verifier_boundary(request):
    from lema.services.verifier.validation import batch_items, verify_item

    config = VerifierConfig()
    _typed_or_invalid(lambda: batch_items(request, config))
    for item in request.items:
        _typed_or_invalid(lambda item=item: verify_item(item, config))


@FUZZ
@given(message(cpb.CorrectBatchRequest), message(cpb.AugmentRequest))
def test_corrector_boundary(batch, augment):
    from lema.services.corrector.validation import augmentation_job, batch_jobs, correction_job

    config = CorrectorConfig()
    _typed_or_invalid(lambda: batch_jobs(batch, config))
    for item in batch.items:
        _typed_or_invalid(lambda item=item: correction_job(item, config))
    _typed_or_invalid(lambda: augmentation_job(augment))


@FUZZ
@given(message(rpb.SolveRequest))
def test_reasoner_boundary(request):
    from lema.services.reasoner.validation import sampling, solve_request

    config = ReasonerConfig()
    _typed_or_invalid(lambda: solve_request(request, config))
    _typed_or_invalid(lambda: sampling(request.sampling, config))


@FUZZ
@given(message(pb.Problem))
def test_collector_intake_boundary(problem):
    from lema.services.collector.intake_servicer import problem_from_pb

    validated, reason = problem_from_pb(problem)
    assert (validated is None) == bool(reason)
