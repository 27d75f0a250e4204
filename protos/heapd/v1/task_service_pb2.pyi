from heapd.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskSubmission(_message.Message):
    __slots__ = ("spec", "options")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    spec: _task_pb2.TaskSpec
    options: _task_pb2.TaskOptions
    def __init__(self, spec: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ..., options: _Optional[_Union[_task_pb2.TaskOptions, _Mapping]] = ...) -> None: ...

class SubmitTaskRequest(_message.Message):
    __slots__ = ("spec", "options", "session")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    spec: _task_pb2.TaskSpec
    options: _task_pb2.TaskOptions
    session: str
    def __init__(self, spec: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ..., options: _Optional[_Union[_task_pb2.TaskOptions, _Mapping]] = ..., session: _Optional[str] = ...) -> None: ...

class SubmitTaskResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class SubmitTasksRequest(_message.Message):
    __slots__ = ("tasks", "session", "acks", "adopt")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    ADOPT_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSubmission]
    session: str
    acks: _containers.RepeatedScalarFieldContainer[int]
    adopt: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSubmission, _Mapping]]] = ..., session: _Optional[str] = ..., acks: _Optional[_Iterable[int]] = ..., adopt: _Optional[_Iterable[int]] = ...) -> None: ...

class SubmitTasksResponse(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, task_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SubmitStreamResponse(_message.Message):
    __slots__ = ("task_ids", "error_code", "error_message")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[int]
    error_code: int
    error_message: str
    def __init__(self, task_ids: _Optional[_Iterable[int]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "state", "priority", "attempt", "worker_id", "submitted_at", "dispatched_at", "finished_at", "outcome", "unschedulable", "resources", "labels", "after")
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
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    DISPATCHED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    state: _task_pb2.TaskState
    priority: int
    attempt: int
    worker_id: int
    submitted_at: float
    dispatched_at: float
    finished_at: float
    outcome: bytes
    unschedulable: str
    resources: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    after: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, task_id: _Optional[int] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., priority: _Optional[int] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[int] = ..., submitted_at: _Optional[float] = ..., dispatched_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., outcome: _Optional[bytes] = ..., unschedulable: _Optional[str] = ..., resources: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ..., after: _Optional[_Iterable[int]] = ...) -> None: ...

class WatchTasksRequest(_message.Message):
    __slots__ = ("session", "task_ids")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    session: str
    task_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session: _Optional[str] = ..., task_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "state", "attempt", "outcome")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    state: _task_pb2.TaskState
    attempt: int
    outcome: bytes
    def __init__(self, task_id: _Optional[int] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., attempt: _Optional[int] = ..., outcome: _Optional[bytes] = ...) -> None: ...

class WatchTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _task_pb2.TaskState
    def __init__(self, state: _Optional[_Union[_task_pb2.TaskState, str]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("states", "limit")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_task_pb2.TaskState]
    limit: int
    def __init__(self, states: _Optional[_Iterable[_Union[_task_pb2.TaskState, str]]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "epoch", "address", "hostname", "pid", "slots", "in_flight", "state", "last_heartbeat", "tasks_done", "resources", "resources_free", "labels")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ResourcesFreeEntry(_message.Message):
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
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FREE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    epoch: int
    address: str
    hostname: str
    pid: int
    slots: int
    in_flight: int
    state: str
    last_heartbeat: float
    tasks_done: int
    resources: _containers.ScalarMap[str, float]
    resources_free: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, worker_id: _Optional[int] = ..., epoch: _Optional[int] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., slots: _Optional[int] = ..., in_flight: _Optional[int] = ..., state: _Optional[str] = ..., last_heartbeat: _Optional[float] = ..., tasks_done: _Optional[int] = ..., resources: _Optional[_Mapping[str, float]] = ..., resources_free: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("cell", "workers", "queued", "running", "pending", "submitted_total", "succeeded_total", "failed_total", "cancelled_total", "held_results", "task_capacity", "policy", "aging_s", "unschedulable")
    CELL_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    HELD_RESULTS_FIELD_NUMBER: _ClassVar[int]
    TASK_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AGING_S_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_FIELD_NUMBER: _ClassVar[int]
    cell: str
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    queued: int
    running: int
    pending: int
    submitted_total: int
    succeeded_total: int
    failed_total: int
    cancelled_total: int
    held_results: int
    task_capacity: int
    policy: str
    aging_s: float
    unschedulable: int
    def __init__(self, cell: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., pending: _Optional[int] = ..., submitted_total: _Optional[int] = ..., succeeded_total: _Optional[int] = ..., failed_total: _Optional[int] = ..., cancelled_total: _Optional[int] = ..., held_results: _Optional[int] = ..., task_capacity: _Optional[int] = ..., policy: _Optional[str] = ..., aging_s: _Optional[float] = ..., unschedulable: _Optional[int] = ...) -> None: ...
