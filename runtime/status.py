"""Domain exceptions → gRPC status codes, in one place for every servicer.

Servicer methods are wrapped with `unary` (unary responses) or `streaming` (server streams);
an exception listed in the table aborts the call with its code and the exception's message.
Only heapd's own types are listed (the shared-memory errors and `heapd.errors`' RPC errors,
which a role raises for a request it refuses): anything else, builtins such as a stray
`KeyError` included, is a bug, logged with its traceback and reported as INTERNAL without
killing the daemon.

A request that does not parse never reaches a servicer: `DecodeGuard`, a server interceptor,
gives every handler a deserializer that returns an `Undecodable` instead of raising (gRPC
itself would log a traceback per message and answer UNKNOWN), and refuses it as
INVALID_ARGUMENT, with one log line per `GARBAGE_LOG_INTERVAL_S` however many arrive.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
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


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[R]) -> AsyncIterator[AsyncIterator[R]]:
    """`stream`, closed on leaving the block when it can be (an async generator): its
    `finally` blocks run then, not whenever the garbage collector gets to it."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def streaming(
    method: Callable[..., AsyncIterator[R]],
) -> Callable[..., AsyncIterator[R]]:
    """Map domain errors raised by a server-streaming servicer method to status codes."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[R]:
        try:
            # Closed here, not left to the garbage collector, when the call ends midway: its
            # `finally` blocks (a watch stream's bookkeeping) run at once.
            async with closing(method(self, request, context)) as items:
                async for item in items:
                    yield item
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return wrapper


# --- requests that do not parse

GARBAGE_LOG_INTERVAL_S = 60.0


class Undecodable:
    """What a guarded deserializer returns for bytes that are not its message."""

    __slots__ = ("error", "size")

    def __init__(self, size: int, error: Exception) -> None:
        self.size = size
        self.error = error


class LogEvery:
    """Lets a repeated event be logged at most once per `interval_s`, counting the others."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")
        self._count = 0

    def due(self) -> int:
        """Count one event: how many to report now (this one and those held back since the
        last report), or 0 while the interval runs."""
        self._count += 1
        now = self._clock()
        if now < self._next:
            return 0
        self._next = now + self._interval_s
        count, self._count = self._count, 0
        return count


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every handler of the server, unary or streaming, gets a deserializer that never raises.
    A unary request that did not parse is refused as INVALID_ARGUMENT before its servicer
    runs; in a stream of requests, the servicer sees the stream end at the first that did not
    parse, and the call ends INVALID_ARGUMENT once the servicer is done. (A servicer reading
    with `context.read()` rather than iterating would see the `Undecodable`; heapd's iterate.)"""

    def __init__(self, log_every: LogEvery | None = None) -> None:
        self._log_every = log_every or LogEvery(GARBAGE_LOG_INTERVAL_S)
        # method -> (its registered handler, the guarded one): built once, not per call
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method, or a handler that takes raw bytes
        cached = self._guarded.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = self._guard(details.method, handler)
        self._guarded[details.method] = (handler, guarded)
        return guarded

    def _guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` with a deserializer that never raises, refusing what does not parse."""
        refuse = functools.partial(self._refuse, method)
        options = {
            "request_deserializer": _never_raising(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _stream_stream(handler.stream_stream, refuse), **options
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                _stream_unary(handler.stream_unary, refuse), **options
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _unary_stream(handler.unary_stream, refuse), **options
            )
        return grpc.unary_unary_rpc_method_handler(
            _unary_unary(handler.unary_unary, refuse), **options
        )

    async def _refuse(
        self, method: str, garbage: Undecodable, context: grpc.aio.ServicerContext
    ) -> None:
        count = self._log_every.due()
        if count:
            log.warning(
                "refused requests that do not parse",
                extra={
                    "fields": {
                        "count": count,
                        "method": method,
                        "size": garbage.size,
                        "error": str(garbage.error),
                    }
                },
            )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request ({garbage.size} bytes) is not a valid {method} message: {garbage.error}",
        )


Refuse = Callable[[Undecodable, grpc.aio.ServicerContext], Awaitable[None]]
Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


def _never_raising(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or whatever a deserializer raises
            return Undecodable(len(data), exc)

    return decode


def _unary_unary(behavior: Behavior, refuse: Refuse) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await refuse(request, context)
        return await _result(behavior(request, context))

    return call


def _unary_stream(behavior: Behavior, refuse: Refuse) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, Undecodable):
            await refuse(request, context)
        await _write_all(behavior(request, context), context)

    return call


def _stream_unary(behavior: Behavior, refuse: Refuse) -> Behavior:
    async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        parsed = _Parsed(requests)
        response = await _result(behavior(parsed, context))
        if parsed.garbage is not None:
            await refuse(parsed.garbage, context)
        return response

    return call


def _stream_stream(behavior: Behavior, refuse: Refuse) -> Behavior:
    async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        parsed = _Parsed(requests)
        await _write_all(behavior(parsed, context), context)
        if parsed.garbage is not None:
            await refuse(parsed.garbage, context)

    return call


class _Parsed:
    """A stream of requests that ends at the first one that did not parse (kept in
    `garbage`)."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self._reader: AsyncIterator[Any] | None = None  # made at the first read
        self.garbage: Undecodable | None = None

    def __aiter__(self) -> _Parsed:
        return self

    async def __anext__(self) -> Any:
        if self.garbage is not None:
            raise StopAsyncIteration
        if self._reader is None:
            self._reader = aiter(self._requests)
        request = await anext(self._reader)
        if isinstance(request, Undecodable):
            self.garbage = request
            # Read no further; gRPC's reader is an async generator, closed now rather than
            # by the garbage collector after the loop has gone.
            aclose = getattr(self._reader, "aclose", None)
            if aclose is not None:
                await aclose()
            raise StopAsyncIteration
        return request


async def _write_all(responses: Any, context: grpc.aio.ServicerContext) -> None:
    """Write what a streaming handler produced: an async generator's items (as a coroutine,
    the call ending midway closes the generator at once rather than when it is collected), a
    plain iterable's, or nothing (a coroutine handler that wrote its own)."""
    responses = await _result(responses)
    if responses is None:
        return
    if not hasattr(responses, "__aiter__"):
        for response in responses:
            await context.write(response)
        return
    async with closing(responses) as stream:
        async for response in stream:
            await context.write(response)


async def _result(value: Any) -> Any:
    """`value`, awaited if it is awaitable (a coroutine handler's result)."""
    return await value if inspect.isawaitable(value) else value
