from heapd.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("address", "slots", "pid", "hostname", "resources", "labels")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    address: str
    slots: int
    pid: int
    hostname: str
    resources: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, address: _Optional[str] = ..., slots: _Optional[int] = ..., pid: _Optional[int] = ..., hostname: _Optional[str] = ..., resources: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("worker_id", "epoch", "heartbeat_interval_s", "deadline_s", "secret")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    epoch: int
    heartbeat_interval_s: float
    deadline_s: float
    secret: bytes
    def __init__(self, worker_id: _Optional[int] = ..., epoch: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., deadline_s: _Optional[float] = ..., secret: _Optional[bytes] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    attempt: int
    def __init__(self, task_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class TaskCompletion(_message.Message):
    __slots__ = ("task_id", "attempt", "state", "retryable", "outcome", "trace_ns")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TRACE_NS_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    attempt: int
    state: _task_pb2.TaskState
    retryable: bool
    outcome: bytes
    trace_ns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, task_id: _Optional[int] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., retryable: _Optional[bool] = ..., outcome: _Optional[bytes] = ..., trace_ns: _Optional[_Iterable[int]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "epoch", "started", "completions", "running", "draining", "secret", "defer_ack")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    DEFER_ACK_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    epoch: int
    started: _containers.RepeatedCompositeFieldContainer[TaskRef]
    completions: _containers.RepeatedCompositeFieldContainer[TaskCompletion]
    running: int
    draining: bool
    secret: bytes
    defer_ack: bool
    def __init__(self, worker_id: _Optional[int] = ..., epoch: _Optional[int] = ..., started: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ..., completions: _Optional[_Iterable[_Union[TaskCompletion, _Mapping]]] = ..., running: _Optional[int] = ..., draining: _Optional[bool] = ..., secret: _Optional[bytes] = ..., defer_ack: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("accepted", "stale", "cancel", "acks")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    stale: int
    cancel: _containers.RepeatedCompositeFieldContainer[TaskRef]
    acks: int
    def __init__(self, accepted: _Optional[int] = ..., stale: _Optional[int] = ..., cancel: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ..., acks: _Optional[int] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("worker_id", "epoch", "secret")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    epoch: int
    secret: bytes
    def __init__(self, worker_id: _Optional[int] = ..., epoch: _Optional[int] = ..., secret: _Optional[bytes] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ("requeued",)
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    requeued: int
    def __init__(self, requeued: _Optional[int] = ...) -> None: ...
