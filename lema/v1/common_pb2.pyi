import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_KIND_UNSPECIFIED: _ClassVar[DatasetKind]
    DATASET_KIND_GSM8K: _ClassVar[DatasetKind]
    DATASET_KIND_MATH: _ClassVar[DatasetKind]
    DATASET_KIND_SYNTHETIC: _ClassVar[DatasetKind]

class VerdictReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_REASON_UNSPECIFIED: _ClassVar[VerdictReason]
    VERDICT_REASON_MATCHED: _ClassVar[VerdictReason]
    VERDICT_REASON_MISMATCH: _ClassVar[VerdictReason]
    VERDICT_REASON_NO_ANSWER_FOUND: _ClassVar[VerdictReason]
    VERDICT_REASON_TIMEOUT: _ClassVar[VerdictReason]
    VERDICT_REASON_PARSE_ERROR: _ClassVar[VerdictReason]

class ExtractionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXTRACTION_METHOD_UNSPECIFIED: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_NONE: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_ANSWER_IS: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_HASHES: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_BOXED: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_LAST_NUMBER: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_VERBATIM: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_LAST_EXPRESSION: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_EMPHASIS: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_CLOSING: _ClassVar[ExtractionMethod]
    EXTRACTION_METHOD_DISPLAY: _ClassVar[ExtractionMethod]
DATASET_KIND_UNSPECIFIED: DatasetKind
DATASET_KIND_GSM8K: DatasetKind
DATASET_KIND_MATH: DatasetKind
DATASET_KIND_SYNTHETIC: DatasetKind
VERDICT_REASON_UNSPECIFIED: VerdictReason
VERDICT_REASON_MATCHED: VerdictReason
VERDICT_REASON_MISMATCH: VerdictReason
VERDICT_REASON_NO_ANSWER_FOUND: VerdictReason
VERDICT_REASON_TIMEOUT: VerdictReason
VERDICT_REASON_PARSE_ERROR: VerdictReason
EXTRACTION_METHOD_UNSPECIFIED: ExtractionMethod
EXTRACTION_METHOD_NONE: ExtractionMethod
EXTRACTION_METHOD_ANSWER_IS: ExtractionMethod
EXTRACTION_METHOD_HASHES: ExtractionMethod
EXTRACTION_METHOD_BOXED: ExtractionMethod
EXTRACTION_METHOD_LAST_NUMBER: ExtractionMethod
EXTRACTION_METHOD_VERBATIM: ExtractionMethod
EXTRACTION_METHOD_LAST_EXPRESSION: ExtractionMethod
EXTRACTION_METHOD_EMPHASIS: ExtractionMethod
EXTRACTION_METHOD_CLOSING: ExtractionMethod
EXTRACTION_METHOD_DISPLAY: ExtractionMethod

class Problem(_message.Message):
    __slots__ = ("id", "kind", "question", "gold_answer", "source", "program_json", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    GOLD_ANSWER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: DatasetKind
    question: str
    gold_answer: str
    source: str
    program_json: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[DatasetKind, str]] = ..., question: _Optional[str] = ..., gold_answer: _Optional[str] = ..., source: _Optional[str] = ..., program_json: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("n", "temperature", "top_p", "max_tokens", "stop", "seed")
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, n: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("model", "adapter")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ...) -> None: ...

class ReasoningPath(_message.Message):
    __slots__ = ("problem_id", "sample_index", "text", "steps", "extracted_answer", "model", "sampling", "usage", "finish_reason", "latency_ms", "verdict")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    sample_index: int
    text: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    extracted_answer: str
    model: ModelRef
    sampling: SamplingParams
    usage: TokenUsage
    finish_reason: str
    latency_ms: float
    verdict: Verdict
    def __init__(self, problem_id: _Optional[str] = ..., sample_index: _Optional[int] = ..., text: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ..., extracted_answer: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., latency_ms: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("correct", "reason", "extracted_answer", "extraction_method", "normalized_candidate", "normalized_gold", "detail", "elapsed_ms")
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    EXTRACTION_METHOD_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_GOLD_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    correct: bool
    reason: VerdictReason
    extracted_answer: str
    extraction_method: ExtractionMethod
    normalized_candidate: str
    normalized_gold: str
    detail: str
    elapsed_ms: float
    def __init__(self, correct: _Optional[bool] = ..., reason: _Optional[_Union[VerdictReason, str]] = ..., extracted_answer: _Optional[str] = ..., extraction_method: _Optional[_Union[ExtractionMethod, str]] = ..., normalized_candidate: _Optional[str] = ..., normalized_gold: _Optional[str] = ..., detail: _Optional[str] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class Correction(_message.Message):
    __slots__ = ("problem_id", "incorrect_step", "explanation", "corrected_solution", "final_answer", "verified", "verdict", "upstream_model", "prompt_id", "prompt_version", "usage", "cost_usd", "attempts", "raw_output", "cached")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    INCORRECT_STEP_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_SOLUTION_FIELD_NUMBER: _ClassVar[int]
    FINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    incorrect_step: int
    explanation: str
    corrected_solution: str
    final_answer: str
    verified: bool
    verdict: Verdict
    upstream_model: str
    prompt_id: str
    prompt_version: str
    usage: TokenUsage
    cost_usd: float
    attempts: int
    raw_output: str
    cached: bool
    def __init__(self, problem_id: _Optional[str] = ..., incorrect_step: _Optional[int] = ..., explanation: _Optional[str] = ..., corrected_solution: _Optional[str] = ..., final_answer: _Optional[str] = ..., verified: _Optional[bool] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., upstream_model: _Optional[str] = ..., prompt_id: _Optional[str] = ..., prompt_version: _Optional[str] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., attempts: _Optional[int] = ..., raw_output: _Optional[str] = ..., cached: _Optional[bool] = ...) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("id", "base_model", "path", "content_hash", "rank", "target_modules", "export_id", "parent_adapter", "metrics", "created_at", "config_yaml")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    id: str
    base_model: str
    path: str
    content_hash: str
    rank: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    export_id: str
    parent_adapter: str
    metrics: _containers.ScalarMap[str, float]
    created_at: _timestamp_pb2.Timestamp
    config_yaml: str
    def __init__(self, id: _Optional[str] = ..., base_model: _Optional[str] = ..., path: _Optional[str] = ..., content_hash: _Optional[str] = ..., rank: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., export_id: _Optional[str] = ..., parent_adapter: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., config_yaml: _Optional[str] = ...) -> None: ...
