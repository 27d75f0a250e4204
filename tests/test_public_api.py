"""The client's public surface is explicit and pinned."""

from __future__ import annotations

import concurrent.futures

import client

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
    assert set(client.__all__) == EXPECTED
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_future_is_a_concurrent_future() -> None:
    assert issubclass(client.TaskFuture, concurrent.futures.Future)
    assert issubclass(client.TaskCancelled, concurrent.futures.CancelledError)
