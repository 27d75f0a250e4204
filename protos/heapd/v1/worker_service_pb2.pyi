from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Assignment(_message.Message):
    __slots__ = ("task_id", "attempt", "spec", "timeout_s", "priority", "trace")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    attempt: int
    spec: bytes
    timeout_s: float
    priority: int
    trace: bool
    def __init__(self, task_id: _Optional[int] = ..., attempt: _Optional[int] = ..., spec: _Optional[bytes] = ..., timeout_s: _Optional[float] = ..., priority: _Optional[int] = ..., trace: _Optional[bool] = ...) -> None: ...

class AssignmentRef(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    attempt: int
    def __init__(self, task_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class AssignTasksRequest(_message.Message):
    __slots__ = ("worker_id", "epoch", "tasks", "revoke", "defer_answer")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    DEFER_ANSWER_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    epoch: int
    tasks: _containers.RepeatedCompositeFieldContainer[Assignment]
    revoke: _containers.RepeatedCompositeFieldContainer[AssignmentRef]
    defer_answer: bool
    def __init__(self, worker_id: _Optional[int] = ..., epoch: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., revoke: _Optional[_Iterable[_Union[AssignmentRef, _Mapping]]] = ..., defer_answer: _Optional[bool] = ...) -> None: ...

class AssignTasksResponse(_message.Message):
    __slots__ = ("accepted", "refused", "revoked", "answers")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    refused: str
    revoked: _containers.RepeatedCompositeFieldContainer[AssignmentRef]
    answers: int
    def __init__(self, accepted: _Optional[int] = ..., refused: _Optional[str] = ..., revoked: _Optional[_Iterable[_Union[AssignmentRef, _Mapping]]] = ..., answers: _Optional[int] = ...) -> None: ...

class WorkerCancelRequest(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    attempt: int
    def __init__(self, task_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class WorkerCancelResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("running",)
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    running: int
    def __init__(self, running: _Optional[int] = ...) -> None: ...
