from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    PENDING: _ClassVar[TaskState]
    QUEUED: _ClassVar[TaskState]
    DISPATCHED: _ClassVar[TaskState]
    RUNNING: _ClassVar[TaskState]
    SUCCEEDED: _ClassVar[TaskState]
    FAILED: _ClassVar[TaskState]
    CANCELLED: _ClassVar[TaskState]

class FailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_KIND_UNSPECIFIED: _ClassVar[FailureKind]
    EXCEPTION: _ClassVar[FailureKind]
    TIMEOUT: _ClassVar[FailureKind]
    CRASHED: _ClassVar[FailureKind]
    BAD_TASK: _ClassVar[FailureKind]
    BAD_RESULT: _ClassVar[FailureKind]
    CANCELLED_BY_USER: _ClassVar[FailureKind]
    WORKER_LOST: _ClassVar[FailureKind]
    DEPENDENCY_FAILED: _ClassVar[FailureKind]
TASK_STATE_UNSPECIFIED: TaskState
PENDING: TaskState
QUEUED: TaskState
DISPATCHED: TaskState
RUNNING: TaskState
SUCCEEDED: TaskState
FAILED: TaskState
CANCELLED: TaskState
FAILURE_KIND_UNSPECIFIED: FailureKind
EXCEPTION: FailureKind
TIMEOUT: FailureKind
CRASHED: FailureKind
BAD_TASK: FailureKind
BAD_RESULT: FailureKind
CANCELLED_BY_USER: FailureKind
WORKER_LOST: FailureKind
DEPENDENCY_FAILED: FailureKind

class PythonCall(_message.Message):
    __slots__ = ("ref", "pickled_callable", "pickled_args")
    REF_FIELD_NUMBER: _ClassVar[int]
    PICKLED_CALLABLE_FIELD_NUMBER: _ClassVar[int]
    PICKLED_ARGS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    pickled_callable: bytes
    pickled_args: bytes
    def __init__(self, ref: _Optional[str] = ..., pickled_callable: _Optional[bytes] = ..., pickled_args: _Optional[bytes] = ...) -> None: ...

class CommandCall(_message.Message):
    __slots__ = ("argv", "env", "cwd", "stdin")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    stdin: bytes
    def __init__(self, argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., stdin: _Optional[bytes] = ...) -> None: ...

class BuiltinCall(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("python", "command", "builtin", "retry_on", "inputs")
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    python: PythonCall
    command: CommandCall
    builtin: BuiltinCall
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    inputs: _containers.RepeatedCompositeFieldContainer[DependencyResult]
    def __init__(self, python: _Optional[_Union[PythonCall, _Mapping]] = ..., command: _Optional[_Union[CommandCall, _Mapping]] = ..., builtin: _Optional[_Union[BuiltinCall, _Mapping]] = ..., retry_on: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Iterable[_Union[DependencyResult, _Mapping]]] = ...) -> None: ...

class DependencyResult(_message.Message):
    __slots__ = ("task_id", "outcome")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    outcome: bytes
    def __init__(self, task_id: _Optional[int] = ..., outcome: _Optional[bytes] = ...) -> None: ...

class TaskOptions(_message.Message):
    __slots__ = ("priority", "retries", "timeout_s", "cpus", "key", "resources", "labels", "after", "trace")
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
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    priority: int
    retries: int
    timeout_s: float
    cpus: int
    key: str
    resources: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    after: _containers.RepeatedScalarFieldContainer[int]
    trace: bool
    def __init__(self, priority: _Optional[int] = ..., retries: _Optional[int] = ..., timeout_s: _Optional[float] = ..., cpus: _Optional[int] = ..., key: _Optional[str] = ..., resources: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ..., after: _Optional[_Iterable[int]] = ..., trace: _Optional[bool] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("kind", "type", "message", "traceback", "pickled_exception", "dependency_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    PICKLED_EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_ID_FIELD_NUMBER: _ClassVar[int]
    kind: FailureKind
    type: str
    message: str
    traceback: str
    pickled_exception: bytes
    dependency_id: int
    def __init__(self, kind: _Optional[_Union[FailureKind, str]] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., pickled_exception: _Optional[bytes] = ..., dependency_id: _Optional[int] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("returncode", "stdout", "stderr")
    RETURNCODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    returncode: int
    stdout: bytes
    stderr: bytes
    def __init__(self, returncode: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ...) -> None: ...

class TaskOutcome(_message.Message):
    __slots__ = ("pickled_value", "command", "failure", "started_at", "finished_at", "earlier_failures")
    PICKLED_VALUE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EARLIER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    pickled_value: bytes
    command: CommandResult
    failure: Failure
    started_at: float
    finished_at: float
    earlier_failures: _containers.RepeatedCompositeFieldContainer[Failure]
    def __init__(self, pickled_value: _Optional[bytes] = ..., command: _Optional[_Union[CommandResult, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., earlier_failures: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ...) -> None: ...
