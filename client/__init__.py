"""heapd: a task scheduler for Python. The whole public API is listed in `__all__` (pinned by a
test); the daemons live in the subpackages (`heapd.plm`, `heapd.worker`, ...)."""

__version__ = "0.2.0"

from heapd.aio import AsyncClient, AsyncTaskFuture
from heapd.client import Client
from heapd.errors import (
    BadResult,
    BadTask,
    HeapdError,
    InvalidArgument,
    NotFound,
    RemoteError,
    ResourceExhausted,
    RpcFailed,
    TaskCancelled,
    TaskCrashed,
    TaskFailed,
    TaskLost,
    TaskTimeout,
    Unauthenticated,
    Unavailable,
    WorkerLost,
)
from heapd.futures import TaskFuture
from heapd.results import CommandResult

__all__ = [
    "AsyncClient",
    "AsyncTaskFuture",
    "BadResult",
    "BadTask",
    "Client",
    "CommandResult",
    "HeapdError",
    "InvalidArgument",
    "NotFound",
    "RemoteError",
    "ResourceExhausted",
    "RpcFailed",
    "TaskCancelled",
    "TaskCrashed",
    "TaskFailed",
    "TaskFuture",
    "TaskLost",
    "TaskTimeout",
    "Unauthenticated",
    "Unavailable",
    "WorkerLost",
]
