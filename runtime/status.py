"""Domain exceptions → gRPC status codes, in one place for every servicer.

Servicer methods are wrapped with `unary` (unary responses) or `streaming` (server streams);
an exception listed in the table aborts the call with its code and the exception's message.
Only heapd's own types are listed (the shared-memory errors and `heapd.errors`' RPC errors,
which a role raises for a request it refuses): anything else, builtins such as a stray
`KeyError` included, is a bug, logged with its traceback and reported as INTERNAL without
killing the daemon.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from heapd import errors, shm

log = logging.getLogger(__name__)

R = TypeVar("R")

STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (shm.TaskNotFound, grpc.StatusCode.NOT_FOUND),
    (shm.WorkerNotFound, grpc.StatusCode.NOT_FOUND),
    (shm.StaleEpoch, grpc.StatusCode.FAILED_PRECONDITION),
    (shm.BlobTooLarge, grpc.StatusCode.INVALID_ARGUMENT),
    (shm.ResourceNamesFull, grpc.StatusCode.INVALID_ARGUMENT),
    (shm.TableFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (shm.ArenaFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code a domain exception maps to, None if it is not a domain error."""
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return None


def message_for(exc: BaseException) -> str:
    """The message sent to the client: the exception's text (KeyError's repr quotes stripped)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code = code_for(exc)
    if code is None:
        log.exception("unexpected error in servicer", exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        )
    await context.abort(code, message_for(exc))


def unary(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Map domain errors raised by a unary servicer method to status codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    return wrapper


def streaming(
    method: Callable[..., AsyncIterator[R]],
) -> Callable[..., AsyncIterator[R]]:
    """Map domain errors raised by a server-streaming servicer method to status codes."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[R]:
        try:
            async for item in method(self, request, context):
                yield item
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return wrapper
