"""The verifier's boundary: wire messages in, typed values out, or InvalidInput naming the field (the gRPC
interceptor answers INVALID_ARGUMENT with the message)."""

from __future__ import annotations

from lema.core.config import VerifierConfig
from lema.core.errors import InvalidInput
from lema.core.proto_convert import kind_from_pb
from lema.core.records import VerifyItem
from lema.core.validation import check_batch
from lema.v1 import verifier_pb2 as vpb

_KINDS = "gsm8k (1), math (2) or synthetic (3)"


def verify_item(request: vpb.VerifyRequest, config: VerifierConfig, where: str = "") -> VerifyItem:
    kind = kind_from_pb(request.kind)
    if kind is None:
        raise InvalidInput(f"{where}kind must be {_KINDS}; got {request.kind}")
    for field, limit in (("gold_answer", config.max_gold_chars), ("candidate", config.max_candidate_chars)):
        value = getattr(request, field)
        if not value.strip():
            raise InvalidInput(f"{where}{field} is empty")
        if len(value) > limit:
            raise InvalidInput(f"{where}{field} has {len(value)} characters; the limit is {limit}")
    return VerifyItem(kind, request.gold_answer, request.candidate, request.candidate_is_answer, request.id)


def batch_items(request: vpb.VerifyBatchRequest, config: VerifierConfig) -> list[VerifyItem]:
    """Every item, validated before any work starts: one bad item refuses the batch, naming its index."""
    check_batch(request.items, config.max_batch_items)
    return [verify_item(message, config, where=f"items[{i}]: ") for i, message in enumerate(request.items)]
