"""Conversions between lema's typed records and the v1 wire messages."""

from __future__ import annotations

from lema.core.answers import DatasetKind, ExtractionMethod
from lema.core.records import Verdict, VerdictReason
from lema.v1 import common_pb2 as pb

KIND_TO_PB = {
    DatasetKind.GSM8K: pb.DATASET_KIND_GSM8K,
    DatasetKind.MATH: pb.DATASET_KIND_MATH,
    DatasetKind.SYNTHETIC: pb.DATASET_KIND_SYNTHETIC,
}
PB_TO_KIND = {v: k for k, v in KIND_TO_PB.items()}

REASON_TO_PB = {
    VerdictReason.MATCHED: pb.VERDICT_REASON_MATCHED,
    VerdictReason.MISMATCH: pb.VERDICT_REASON_MISMATCH,
    VerdictReason.NO_ANSWER_FOUND: pb.VERDICT_REASON_NO_ANSWER_FOUND,
    VerdictReason.TIMEOUT: pb.VERDICT_REASON_TIMEOUT,
    VerdictReason.PARSE_ERROR: pb.VERDICT_REASON_PARSE_ERROR,
}
PB_TO_REASON = {v: k for k, v in REASON_TO_PB.items()}

METHOD_TO_PB = {
    ExtractionMethod.NONE: pb.EXTRACTION_METHOD_NONE,
    ExtractionMethod.ANSWER_IS: pb.EXTRACTION_METHOD_ANSWER_IS,
    ExtractionMethod.HASHES: pb.EXTRACTION_METHOD_HASHES,
    ExtractionMethod.BOXED: pb.EXTRACTION_METHOD_BOXED,
    ExtractionMethod.LAST_NUMBER: pb.EXTRACTION_METHOD_LAST_NUMBER,
    ExtractionMethod.VERBATIM: pb.EXTRACTION_METHOD_VERBATIM,
    ExtractionMethod.LAST_EXPRESSION: pb.EXTRACTION_METHOD_LAST_EXPRESSION,
    ExtractionMethod.EMPHASIS: pb.EXTRACTION_METHOD_EMPHASIS,
    ExtractionMethod.CLOSING: pb.EXTRACTION_METHOD_CLOSING,
    ExtractionMethod.DISPLAY: pb.EXTRACTION_METHOD_DISPLAY,
}
PB_TO_METHOD = {v: k for k, v in METHOD_TO_PB.items()}


def kind_from_pb(value: int) -> DatasetKind | None:
    """None for UNSPECIFIED or a value this server does not know (a newer client)."""
    return PB_TO_KIND.get(value)


def verdict_to_pb(verdict: Verdict) -> pb.Verdict:
    return pb.Verdict(
        correct=verdict.correct,
        reason=REASON_TO_PB[verdict.reason],
        extracted_answer=verdict.extracted_answer,
        extraction_method=METHOD_TO_PB[verdict.extraction_method],
        normalized_candidate=verdict.normalized_candidate,
        normalized_gold=verdict.normalized_gold,
        detail=verdict.detail,
        elapsed_ms=verdict.elapsed_ms,
    )


def verdict_from_pb(message: pb.Verdict) -> Verdict:
    return Verdict(
        correct=message.correct,
        reason=PB_TO_REASON.get(message.reason, VerdictReason.PARSE_ERROR),
        extracted_answer=message.extracted_answer,
        extraction_method=PB_TO_METHOD.get(message.extraction_method, ExtractionMethod.NONE),
        normalized_candidate=message.normalized_candidate,
        normalized_gold=message.normalized_gold,
        detail=message.detail,
        elapsed_ms=message.elapsed_ms,
    )


def synthetic_to_pb(problem, source: str = "synthetic") -> pb.Problem:
    """A lema synthetic problem (with its program) as a wire Problem."""
    return pb.Problem(
        id=problem.id,
        kind=pb.DATASET_KIND_SYNTHETIC,
        question=problem.question,
        gold_answer=problem.answer,
        source=source,
        program_json=problem.program.to_json(),
        metadata={"family": problem.family, "n_steps": str(problem.n_steps), "split": problem.split},
    )
