"""heapd.runtime.status: heapd's own errors become their status codes, anything else INTERNAL.

The wrappers are called directly with a fake servicer context that records the abort, as
grpc.aio's does (it raises AbortError): a pure mapping test, no server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from heapd import errors, shm
from heapd.runtime import status


class FakeContext:
    """Records the status a servicer aborted with."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


def unary_status(error: Exception) -> FakeContext:
    """The status a unary servicer method raising `error` ends with."""

    @status.unary
    async def method(self: object, request: object, context: object) -> str:
        raise error

    async def call(context: FakeContext) -> None:
        await method(None, None, context)

    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(call(context))
    return context


def streaming_status(error: Exception) -> tuple[list[int], FakeContext]:
    """What a streaming servicer method that yields once, then raises `error`, sends."""

    @status.streaming
    async def method(self: object, request: object, context: object) -> AsyncIterator[int]:
        yield 1
        raise error

    async def consume(context: FakeContext) -> list[int]:
        sent: list[int] = []
        with pytest.raises(grpc.aio.AbortError):
            async for item in method(None, None, context):
                sent.append(item)
        return sent

    context = FakeContext()
    return asyncio.run(consume(context)), context


DOMAIN_ERRORS = [
    (shm.TaskNotFound(7), grpc.StatusCode.NOT_FOUND),
    (shm.WorkerNotFound(3), grpc.StatusCode.NOT_FOUND),
    (shm.StaleEpoch(3, 2, "declared dead"), grpc.StatusCode.FAILED_PRECONDITION),
    (shm.BlobTooLarge(2_000_000, 1_000_000), grpc.StatusCode.INVALID_ARGUMENT),
    (shm.TableFull("tasks", 1024), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (shm.ArenaFull(4096, 100), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidArgument("priority must be within ±32767"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("task 9 not found"), grpc.StatusCode.NOT_FOUND),
    (errors.ResourceExhausted("the task queue is full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def case_id(value: object) -> str:
    return value.name if isinstance(value, grpc.StatusCode) else type(value).__name__


@pytest.mark.parametrize(("error", "code"), DOMAIN_ERRORS, ids=case_id)
def test_heapd_errors_become_their_status_code_with_their_message(
    error: Exception, code: grpc.StatusCode
) -> None:
    context = unary_status(error)
    assert (context.code, context.details) == (code, str(error))


@pytest.mark.parametrize(("error", "code"), DOMAIN_ERRORS, ids=case_id)
def test_a_stream_ends_with_the_same_code_after_what_it_sent(
    error: Exception, code: grpc.StatusCode
) -> None:
    sent, context = streaming_status(error)
    assert sent == [1]
    assert (context.code, context.details) == (code, str(error))


def test_an_unexpected_error_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    error = RuntimeError("bug")
    with caplog.at_level(logging.ERROR, logger=status.__name__):
        context = unary_status(error)
    assert context.code is grpc.StatusCode.INTERNAL
    assert context.details == "internal error: RuntimeError: bug"
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [error]


@pytest.mark.parametrize(
    "error",
    [KeyError("slot"), ValueError("bad int"), IndexError("pop from empty deque")],
    ids=lambda e: type(e).__name__,
)
def test_builtin_errors_inside_a_role_are_internal_not_the_clients_fault(
    error: Exception,
) -> None:
    assert unary_status(error).code is grpc.StatusCode.INTERNAL
