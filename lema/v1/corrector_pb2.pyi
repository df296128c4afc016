from lema.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CorrectionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CORRECTION_STATUS_UNSPECIFIED: _ClassVar[CorrectionStatus]
    CORRECTION_STATUS_ACCEPTED: _ClassVar[CorrectionStatus]
    CORRECTION_STATUS_UNVERIFIED: _ClassVar[CorrectionStatus]
    CORRECTION_STATUS_REJECTED: _ClassVar[CorrectionStatus]
    CORRECTION_STATUS_UNPARSEABLE: _ClassVar[CorrectionStatus]
    CORRECTION_STATUS_UPSTREAM_ERROR: _ClassVar[CorrectionStatus]
CORRECTION_STATUS_UNSPECIFIED: CorrectionStatus
CORRECTION_STATUS_ACCEPTED: CorrectionStatus
CORRECTION_STATUS_UNVERIFIED: CorrectionStatus
CORRECTION_STATUS_REJECTED: CorrectionStatus
CORRECTION_STATUS_UNPARSEABLE: CorrectionStatus
CORRECTION_STATUS_UPSTREAM_ERROR: CorrectionStatus

class CorrectRequest(_message.Message):
    __slots__ = ("problem", "wrong_solution", "max_candidates", "sampling", "id")
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    WRONG_SOLUTION_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    problem: _common_pb2.Problem
    wrong_solution: str
    max_candidates: int
    sampling: _common_pb2.SamplingParams
    id: str
    def __init__(self, problem: _Optional[_Union[_common_pb2.Problem, _Mapping]] = ..., wrong_solution: _Optional[str] = ..., max_candidates: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class CorrectBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CorrectRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[CorrectRequest, _Mapping]]] = ...) -> None: ...

class CorrectResponse(_message.Message):
    __slots__ = ("id", "index", "status", "correction", "failure_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    index: int
    status: CorrectionStatus
    correction: _common_pb2.Correction
    failure_reason: str
    def __init__(self, id: _Optional[str] = ..., index: _Optional[int] = ..., status: _Optional[_Union[CorrectionStatus, str]] = ..., correction: _Optional[_Union[_common_pb2.Correction, _Mapping]] = ..., failure_reason: _Optional[str] = ...) -> None: ...

class AugmentRequest(_message.Message):
    __slots__ = ("problem", "num_solutions", "sampling")
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    NUM_SOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    problem: _common_pb2.Problem
    num_solutions: int
    sampling: _common_pb2.SamplingParams
    def __init__(self, problem: _Optional[_Union[_common_pb2.Problem, _Mapping]] = ..., num_solutions: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class AugmentResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: _common_pb2.ReasoningPath
    def __init__(self, path: _Optional[_Union[_common_pb2.ReasoningPath, _Mapping]] = ...) -> None: ...
