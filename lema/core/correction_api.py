"""The correction API's wire types (`POST /v1/corrections`, `POST /v1/verifications`): what the endpoint parses and
answers (services/endpoint/corrections.py) and what lema's client returns (lema.client), one definition for both.
Every field is typed, described and has an example: the endpoint's OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

KINDS = ("gsm8k", "math", "synthetic")
Kind = Literal["gsm8k", "math", "synthetic"]
MAX_GOLD_CHARS = 1_000
MAX_PROGRAM_CHARS = 100_000
MAX_ID_CHARS = 200

EXAMPLE_SOLUTION = ("Step 1: Tom has 3 boxes of 4 apples, so he has 3 * 4 = 12 apples.\n"
                    "Step 2: He gives away 5 apples, so he has 12 + 5 = 17 apples.\nThe answer is 17.")
EXAMPLE_ITEM = {"question": "Tom has 3 boxes of 4 apples. He gives away 5 apples. How many apples does he have?",
                "solution": EXAMPLE_SOLUTION, "kind": "gsm8k", "gold_answer": "7", "id": "tom-apples-1"}


# --- protocol types ----------------------------------------------------------------------------------------------

class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(ge=0, le=2, description="temperature of the 2nd..k-th candidates (the first is "
                                                       "greedy)", examples=[0.7])


class CorrectionItem(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_ITEM]})
    question: str = Field(min_length=1, description="the problem statement", examples=[EXAMPLE_ITEM["question"]])
    solution: str = Field(min_length=1, description="the wrong step-by-step solution to correct",
                          examples=[EXAMPLE_SOLUTION])
    kind: Kind = Field(description="gsm8k | math | synthetic: how answers are read and compared", examples=["gsm8k"])
    gold_answer: str | None = Field(default=None, max_length=MAX_GOLD_CHARS,
                                    description="the gold answer: with it, candidates are drawn until one verifies "
                                                "(accepted); without it the correction is unverified",
                                    examples=["7"])
    program_json: str | None = Field(default=None, max_length=MAX_PROGRAM_CHARS,
                                     description="synthetic problems: the problem's program (the reference "
                                                 "corrector needs it)")
    max_candidates: int | None = Field(default=None, ge=1, le=16,
                                       description="candidates drawn until one verifies (default: the corrector's)",
                                       examples=[3])
    sampling: Sampling | None = Field(default=None, description="sampling of the 2nd..k-th candidates")
    id: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="echoed back; yours to choose",
                           examples=["tom-apples-1"])

    @field_validator("question", "solution")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class CorrectionBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [EXAMPLE_ITEM],
                                                                                "stream": False}]})
    items: list[CorrectionItem] = Field(min_length=1, description="the items (at most endpoint.max_correction_items)")
    stream: bool = Field(default=False, description="newline-delimited JSON results as each finishes, with index")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="upstream prompt tokens spent on this correction (0 when cached)")
    completion_tokens: int = Field(description="upstream completion tokens (0 when cached)")
    cost_usd: float = Field(description="at the corrector's configured prices")


class CorrectorInfo(BaseModel):
    upstream_model: str = Field(description="the upstream model that wrote the correction")
    prompt_id: str = Field(description="the correction prompt's id")
    prompt_version: str = Field(description="the prompt's version (a content hash)")


class VerdictInfo(BaseModel):
    correct: bool | None = Field(description="the verifier's verdict on the corrected answer (None: no gold answer)")
    reason: str = Field(description="why, as the verifier says it")
    extracted_answer: str = Field(description="the answer the verifier read")


EXAMPLE_RESULT = {
    "index": 0, "id": "tom-apples-1", "status": "accepted", "incorrect_step": 2,
    "explanation": "He gives away 5 apples, so they are subtracted: 12 - 5 = 7, not 12 + 5 = 17.",
    "corrected_solution": "Step 2: He gives away 5 apples, so he has 12 - 5 = 7 apples.\nThe answer is 7.",
    "corrected_answer": "7", "verified": True,
    "verdict": {"correct": True, "reason": "matched", "extracted_answer": "7"}, "failure_reason": "",
    "corrector": {"upstream_model": "gpt-4", "prompt_id": "lema-correct-gsm8k-v1", "prompt_version": "b009e2f431df"},
    "usage": {"prompt_tokens": 1183, "completion_tokens": 61, "cost_usd": 0.0}, "cached": False}


class CorrectionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_RESULT]})
    index: int = Field(description="the item's position in the request")
    id: str | None = Field(description="the item's id, echoed")
    status: Literal["accepted", "unverified", "rejected", "unparseable", "upstream_error"] = Field(
        description="accepted: verified against the gold answer; unverified: no gold answer; rejected: no candidate "
                    "verified; unparseable: no candidate had the correction format; upstream_error: the upstream "
                    "refused or failed")
    incorrect_step: int = Field(description="the first wrong step (1-based), 0 when none was found")
    explanation: str = Field(description="why that step is wrong")
    corrected_solution: str = Field(description="the solution, corrected from the wrong step on")
    corrected_answer: str = Field(description="the corrected solution's final answer")
    verified: bool = Field(description="the verifier accepted the corrected answer against the gold answer")
    verdict: VerdictInfo | None = Field(description="the verifier's verdict, when there was a gold answer")
    failure_reason: str = Field(description="why a correction was rejected, unparseable or failed")
    corrector: CorrectorInfo
    usage: Usage
    cached: bool = Field(description="answered from the corrector's cache: nothing spent, not billed")


class CorrectionsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"results": [EXAMPLE_RESULT]}]})
    results: list[CorrectionOut]


class VerificationItem(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"kind": "gsm8k", "gold_answer": "7", "solution": "3 * 4 = 12, 12 - 5 = 7. The answer is 7."}]})
    kind: Kind = Field(description="gsm8k | math | synthetic", examples=["gsm8k"])
    gold_answer: str = Field(min_length=1, max_length=MAX_GOLD_CHARS, description="the gold answer, or a reference "
                             "solution ending in '#### N' or \\boxed{...}", examples=["7"])
    solution: str = Field(min_length=1, description="the solution (or bare answer) to check",
                          examples=["The answer is 7."])
    id: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="echoed back")


class VerificationBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[VerificationItem] = Field(min_length=1)
    stream: bool = False


class VerificationOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"index": 0, "id": None, "correct": True, "reason": "matched", "extracted_answer": "7",
         "extraction_method": "answer_is"}]})
    index: int = Field(description="the item's position in the request")
    id: str | None = Field(description="the item's id, echoed")
    correct: bool = Field(description="the solution's final answer equals the gold answer")
    reason: str = Field(description="matched, mismatch, no_answer, timeout, ...")
    extracted_answer: str = Field(description="the final answer read from the solution")
    extraction_method: str = Field(description="how it was read (boxed, answer_is, hashes, last_number, ...)")


class VerificationsOut(BaseModel):
    results: list[VerificationOut]
