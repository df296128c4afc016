from lema.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SolveRequest(_message.Message):
    __slots__ = ("problems", "sampling", "adapter", "verify")
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedCompositeFieldContainer[_common_pb2.Problem]
    sampling: _common_pb2.SamplingParams
    adapter: str
    verify: bool
    def __init__(self, problems: _Optional[_Iterable[_Union[_common_pb2.Problem, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., adapter: _Optional[str] = ..., verify: _Optional[bool] = ...) -> None: ...

class SolveResponse(_message.Message):
    __slots__ = ("path", "problem_index")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    path: _common_pb2.ReasoningPath
    problem_index: int
    def __init__(self, path: _Optional[_Union[_common_pb2.ReasoningPath, _Mapping]] = ..., problem_index: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("base_model", "engine", "adapters", "max_samples_per_problem")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_PER_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    engine: str
    adapters: _containers.RepeatedScalarFieldContainer[str]
    max_samples_per_problem: int
    def __init__(self, base_model: _Optional[str] = ..., engine: _Optional[str] = ..., adapters: _Optional[_Iterable[str]] = ..., max_samples_per_problem: _Optional[int] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...
