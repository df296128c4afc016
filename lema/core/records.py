"""Typed records shared by every service (the boundary types; gRPC messages convert to and from these)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class VerifyItem:
    """One answer to check against a gold answer: what every verifier (in-process or remote) takes."""

    kind: DatasetKind
    gold: str
    candidate: str
    candidate_is_answer: bool = False  # the candidate is a bare answer, not a solution to extract one from
    id: str = ""  # echoed by the verifier service (batch calls)
