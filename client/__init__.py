"""heapd: a task scheduler for Python. The whole public API is listed in `__all__` (pinned by a
test); the daemons live in the subpackages (`heapd.plm`, `heapd.worker`, ...)."""

__version__ = "0.2.0"

from heapd.aio import AsyncClient
from heapd.client import Client
from heapd.errors import (
    BadResult,
    BadTask,
    ClientClosed,
    DependencyFailed,
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
from heapd.futures import AsyncTaskFuture, TaskFuture
from heapd.results import CommandResult
from heapd.security import Security
from heapd.status import ClusterStatus, TaskStatus, WorkerStatus

__all__ = [
    "AsyncClient",
    "AsyncTaskFuture",
    "BadResult",
    "BadTask",
    "Client",
    "ClientClosed",
    "ClusterStatus",
    "CommandResult",
    "DependencyFailed",
    "HeapdError",
    "InvalidArgument",
    "NotFound",
    "RemoteError",
    "ResourceExhausted",
    "RpcFailed",
    "Security",
    "TaskCancelled",
    "TaskCrashed",
    "TaskFailed",
    "TaskFuture",
    "TaskLost",
    "TaskStatus",
    "TaskTimeout",
    "Unauthenticated",
    "Unavailable",
    "WorkerLost",
    "WorkerStatus",
]
