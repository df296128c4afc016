from lema.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddProblemsRequest(_message.Message):
    __slots__ = ("problems",)
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedCompositeFieldContainer[_common_pb2.Problem]
    def __init__(self, problems: _Optional[_Iterable[_Union[_common_pb2.Problem, _Mapping]]] = ...) -> None: ...

class Rejected(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class AddProblemsResponse(_message.Message):
    __slots__ = ("valid", "added", "queued", "rejected", "problem_ids")
    VALID_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_IDS_FIELD_NUMBER: _ClassVar[int]
    valid: int
    added: int
    queued: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejected]
    problem_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, valid: _Optional[int] = ..., added: _Optional[int] = ..., queued: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejected, _Mapping]]] = ..., problem_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectorStats(_message.Message):
    __slots__ = ("problems", "attempts", "mistakes", "corrections", "corrections_accepted", "augmentations", "intake_pending", "intake_done", "intake_failed")
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MISTAKES_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATIONS_FIELD_NUMBER: _ClassVar[int]
    INTAKE_PENDING_FIELD_NUMBER: _ClassVar[int]
    INTAKE_DONE_FIELD_NUMBER: _ClassVar[int]
    INTAKE_FAILED_FIELD_NUMBER: _ClassVar[int]
    problems: int
    attempts: int
    mistakes: int
    corrections: int
    corrections_accepted: int
    augmentations: int
    intake_pending: int
    intake_done: int
    intake_failed: int
    def __init__(self, problems: _Optional[int] = ..., attempts: _Optional[int] = ..., mistakes: _Optional[int] = ..., corrections: _Optional[int] = ..., corrections_accepted: _Optional[int] = ..., augmentations: _Optional[int] = ..., intake_pending: _Optional[int] = ..., intake_done: _Optional[int] = ..., intake_failed: _Optional[int] = ...) -> None: ...
