"""The client's public surface is explicit and pinned."""

from __future__ import annotations

import concurrent.futures

import heapd

EXPECTED = {
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
}


def test_exported_members_are_pinned() -> None:
    assert set(heapd.__all__) == EXPECTED
    for name in heapd.__all__:
        assert getattr(heapd, name) is not None


def test_future_is_a_concurrent_future() -> None:
    assert issubclass(heapd.TaskFuture, concurrent.futures.Future)
    assert issubclass(heapd.TaskCancelled, concurrent.futures.CancelledError)
