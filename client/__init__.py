"""heapd's Python client: the whole public API is listed in `__all__` (pinned by a test)."""

from client.aio import AsyncClient, AsyncTaskFuture
from client.client import Client
from client.errors import (
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
from client.futures import TaskFuture
from client.results import CommandResult

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
