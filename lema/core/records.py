"""Typed records shared by every service (the boundary types; gRPC messages convert to and from these)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from lema.core.answers import DatasetKind, ExtractionMethod

__all__ = ["DatasetKind", "ExtractionMethod", "VerdictReason", "Verdict"]


class VerdictReason(str, Enum):
    MATCHED = "matched"
    MISMATCH = "mismatch"
    NO_ANSWER_FOUND = "no_answer_found"
    TIMEOUT = "timeout"
    PARSE_ERROR = "parse_error"


class Verdict(BaseModel):
    """Is a candidate's final answer equivalent to the gold answer, and why (not)."""

    model_config = ConfigDict(frozen=True)

    correct: bool
    reason: VerdictReason
    extracted_answer: str = ""
    extraction_method: ExtractionMethod = ExtractionMethod.NONE
    normalized_candidate: str = ""
    normalized_gold: str = ""
    detail: str = ""
    elapsed_ms: float = 0.0
