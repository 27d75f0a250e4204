"""Every error heapd raises to its users, in one hierarchy::

    HeapdError                   anything heapd itself raises
    ├── ClientClosed             the client was closed: its futures still pending fail with it,
    │                            and it takes no more calls (the tasks may still run in the cell)
    ├── RpcFailed                a call to the cell failed; .code (gRPC status name), .details
    │   ├── InvalidArgument      the request was refused as malformed (also a ValueError)
    │   ├── NotFound             no such task (also a LookupError)
    │   ├── ResourceExhausted    the cell is full (queue, arena): retry later
    │   ├── Unavailable          the cell cannot be reached (also a ConnectionError)
    │   └── Unauthenticated      missing or wrong credentials
    └── TaskFailed               a task settled without a value; .remote_traceback
        ├── RemoteError          it raised, and the exception could not be rebuilt here;
        │                        .type_name, .message carry what it was
        ├── TaskTimeout          it ran past its timeout and was killed
        ├── TaskCrashed          its process died (signal, os._exit)
        ├── TaskCancelled        it was cancelled (also a concurrent.futures.CancelledError)
        ├── TaskLost             the cell no longer knows it (result expired or not kept)
        ├── WorkerLost           its worker was lost and no retry was left
        ├── BadTask              the worker could not load it (unknown function, bad input)
        ├── BadResult            its result could not be pickled, or not unpickled here
        └── DependencyFailed     a task it depends on failed, was cancelled or was lost;
                                 .dependency_id names it (also raised at submit for a
                                 future passed already failed)

An exception raised by the task itself comes back as its *original type* whenever it unpickles
on the client, with the remote traceback attached as `__cause__` (a `RemoteTraceback` whose str
is the traceback text, as concurrent.futures.ProcessPoolExecutor does) and as a note.
`from_failure` is the client half of the pair whose worker half is `worker.failure.to_failure`.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import grpc


class HeapdError(Exception):
    """Base of every error heapd raises."""


class ClientClosed(HeapdError):
    """The client was closed before this result arrived, or a call was made after it closed.

    Closing stops the client listening for results; it does not cancel the tasks, which may
    still run in the cell: look one up by its future's `task_id` (`get_task`) from another client.
    """


class RpcFailed(HeapdError):
    """A call to the cell failed; `code` is the gRPC status name, `details` the server's text."""

    def __init__(self, details: str, code: str = "UNKNOWN") -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class InvalidArgument(RpcFailed, ValueError):
    """The request was refused as malformed; nothing was queued."""


class NotFound(RpcFailed, LookupError):
    """The cell knows no task with that id."""


class ResourceExhausted(RpcFailed):
    """The cell is full (task queue or payload arena); retry later."""


class Unavailable(RpcFailed, ConnectionError):
    """The cell cannot be reached."""


class Unauthenticated(RpcFailed):
    """The cell refused the credentials (or their absence)."""


class TaskFailed(HeapdError):
    """A task settled without a value; `remote_traceback` is the worker's text, if any."""

    def __init__(self, message: str, *, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class RemoteError(TaskFailed):
    """The task raised an exception that could not be rebuilt here (unpicklable, unknown class)."""

    def __init__(self, type_name: str, message: str, *, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}", remote_traceback=remote_traceback)
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (args holds the joined text)."""
        return (type(self), (self.type_name, self.message), self.__dict__)


class TaskTimeout(TaskFailed):
    """The task ran past its timeout; its process group was killed."""


class TaskCrashed(TaskFailed):
    """The task's process died under it (a signal, os._exit)."""


class TaskCancelled(TaskFailed, concurrent.futures.CancelledError):
    """The task was cancelled before it settled."""


class TaskLost(TaskFailed):
    """The cell no longer knows the task: its result expired or was not kept."""


class WorkerLost(TaskFailed):
    """The worker running the task was lost, and no retry was left."""


class BadTask(TaskFailed):
    """The worker could not load the task: unknown function reference, unpicklable input."""


class BadResult(TaskFailed):
    """The task's result could not be pickled on the worker, or not unpickled here."""


class DependencyFailed(TaskFailed):
    """A task it depends on (`after=`, or a future among its arguments) did not succeed; the
    task never ran. `dependency_id` is that dependency's task id."""

    def __init__(self, message: str, *, dependency_id: int = 0, remote_traceback: str = "") -> None:
        super().__init__(message, remote_traceback=remote_traceback)
        self.dependency_id = dependency_id


class RemoteTraceback(Exception):
    """Carries a remote traceback as its str; attached as `__cause__` of rebuilt exceptions."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class FailureKind(IntEnum):
    """Why an attempt failed; numbered as `heapd.v1.FailureKind` on the wire."""

    EXCEPTION = 1
    TIMEOUT = 2
    CRASHED = 3
    BAD_TASK = 4
    BAD_RESULT = 5
    CANCELLED_BY_USER = 6
    WORKER_LOST = 7
    DEPENDENCY_FAILED = 8


class FailureLike(Protocol):
    """What `from_failure` reads: the fields of a `heapd.v1.Failure`, in plain form."""

    @property
    def kind(self) -> int: ...
    @property
    def type_name(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def traceback(self) -> str: ...
    @property
    def pickled_exception(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """A failed attempt as it arrived from the cell."""

    kind: int
    type_name: str = ""
    message: str = ""
    traceback: str = ""
    pickled_exception: bytes = b""
    earlier: tuple[FailureInfo, ...] = ()  # why earlier attempts failed, oldest first
    dependency_id: int = 0  # DEPENDENCY_FAILED: the dependency that did not succeed


_BY_KIND: dict[int, type[TaskFailed]] = {
    FailureKind.TIMEOUT: TaskTimeout,
    FailureKind.CRASHED: TaskCrashed,
    FailureKind.BAD_TASK: BadTask,
    FailureKind.BAD_RESULT: BadResult,
    FailureKind.CANCELLED_BY_USER: TaskCancelled,
    FailureKind.WORKER_LOST: WorkerLost,
}

_BY_STATUS: dict[grpc.StatusCode, type[RpcFailed]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def from_failure(failure: FailureLike) -> BaseException:
    """The exception to raise for a failed task: the original one when it can be rebuilt.
    Earlier attempts' reasons (a retried task) are added as a note."""
    if failure.kind == FailureKind.EXCEPTION:
        error = _rebuild(failure)
    elif failure.kind == FailureKind.DEPENDENCY_FAILED:
        dependency_id = int(getattr(failure, "dependency_id", 0))
        text = failure.message or f"dependency {dependency_id} did not succeed"
        failed = DependencyFailed(
            text, dependency_id=dependency_id, remote_traceback=failure.traceback
        )
        error = _attach_traceback(failed, failure.traceback)
    else:
        cls = _BY_KIND.get(failure.kind, TaskFailed)
        text = failure.message or cls.__doc__ or cls.__name__
        error = _attach_traceback(cls(text, remote_traceback=failure.traceback), failure.traceback)
    earlier = getattr(failure, "earlier", ())
    if earlier:
        lines = [
            f"attempt {i}: {e.type_name or 'failed'}: {e.message}" for i, e in enumerate(earlier, 1)
        ]
        error.add_note("Earlier attempts (heapd retries):\n" + "\n".join(lines))
    return error


def from_rpc_error(error: grpc.RpcError) -> HeapdError:
    """heapd's error for a failed gRPC call; raise it `from` the original."""
    details = _call_attr(error, "details")
    return _for_status(_rpc_code(error), details if isinstance(details, str) else "")


def from_status(code: int, details: str) -> HeapdError:
    """heapd's error for a status carried in a message (a SubmitStream answer)."""
    return _for_status(_STATUS_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN), details)


def _rpc_code(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN if it has none)."""
    code = _call_attr(error, "code")
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def is_unavailable(error: grpc.RpcError) -> bool:
    """The PLM could not be reached (or restarted mid-call): worth retrying with backoff."""
    return _rpc_code(error) is grpc.StatusCode.UNAVAILABLE


def _for_status(status: grpc.StatusCode, details: str) -> HeapdError:
    cls = _BY_STATUS.get(status, RpcFailed)
    return cls(details or status.name, code=status.name)


_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _rebuild(failure: FailureLike) -> BaseException:
    """Unpickle the task's exception; a RemoteError carrying its text when that fails."""
    error: BaseException | None = None
    if failure.pickled_exception:
        try:
            loaded = pickle.loads(failure.pickled_exception)
        except Exception:  # its class is missing here, or its __init__ refuses its own args
            loaded = None
        if isinstance(loaded, BaseException):
            error = loaded
    if error is None:
        error = RemoteError(
            failure.type_name or "<unknown>", failure.message, remote_traceback=failure.traceback
        )
    return _attach_traceback(error, failure.traceback)


def _attach_traceback(error: BaseException, text: str) -> BaseException:
    if text:
        error.__cause__ = RemoteTraceback(text)
        error.add_note(f"Remote traceback (heapd task):\n{text.rstrip()}")
    return error


def _call_attr(error: grpc.RpcError, name: str) -> object:
    """error.code() / error.details(): on every real gRPC error, though not on the base class."""
    method = getattr(error, name, None)
    return method() if callable(method) else None
