"""What `Client` and `AsyncClient` share, with no IO: `ClientCore`.

A client is this core plus a transport: the core checks arguments (option bounds from
`heapd.options`) and builds the requests, holds the session name, routes each result of the
session's WatchTasks stream to the future awaiting it, and states the retry policy as data. The
sync client adds blocking calls and a watcher thread; the async one awaits. Neither reads or
builds a protobuf message: `heapd.convert` does.

Every future ends settled: by its result, or, when its client closes first, by `ClientClosed`
(`fail_closed`). A result that arrives before the submission's answer (the stream can be faster
than the submit reply) waits in the router until its future is added.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc

from heapd import convert, errors, options
from heapd.errors import ClientClosed, InvalidArgument, TaskCancelled
from heapd.results import Settled

DEFAULT_ADDRESS = "127.0.0.1:7070"
MAP_BATCH = 1000  # tasks per SubmitStream message in `map`
CALL_TIMEOUT_S = 30.0  # deadline of one unary call (get, cancel, list, status)
CLOSE_WAIT_S = 5.0  # how long close() lets in-flight work (watcher, background cancels) finish

RetryOn = Sequence[type[BaseException] | str]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Waits between tries while the PLM cannot be reached (it may be restarting).

    A call (submit, get, cancel, ...) that fails UNAVAILABLE is retried once per step of
    `backoff_s`, then fails with `Unavailable`; any other failure is not retried. The result
    stream is reopened for as long as the client is open, at the last step's pace.
    """

    backoff_s: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

    def call_delay(self, attempt: int, error: grpc.RpcError) -> float | None:
        """Seconds to wait before retrying a call that failed on `attempt` (0 = the first try);
        None: do not retry, raise."""
        if not errors.is_unavailable(error) or attempt >= len(self.backoff_s):
            return None
        return self.backoff_s[attempt]

    def reconnect_delay(self, attempt: int) -> float:
        """Seconds to wait before reopening the result stream after `attempt` failed opens."""
        return self.backoff_s[min(attempt, len(self.backoff_s) - 1)]


class Settleable(Protocol):
    """What the router and `settle` need of a future (`TaskFuture`, `AsyncTaskFuture`)."""

    task_id: int

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...
    def settle_cancelled(self) -> bool: ...


F = TypeVar("F", bound=Settleable)


def settle(future: Settleable, settled: Settled) -> None:
    """Give the future its task's value, or what the task failed with; a future already done
    (cancelled by its user meanwhile) is left as it is."""
    if future.done():
        return
    try:
        value = convert.result_value(settled)
    except TaskCancelled:
        future.settle_cancelled()
    except BaseException as exc:  # the task's own exception, whatever it is: SystemExit too
        _set(future.set_exception, exc)
    else:
        _set(future.set_result, value)


def fail_closed(future: Settleable) -> None:
    """Fail a future whose result will never arrive because its client closed."""
    if not future.done():
        error = ClientClosed(
            f"the client was closed before the result of task {future.task_id} arrived"
            " (the task may still run in the cell; look it up by its id)"
        )
        _set(future.set_exception, error)


def _set(setter: Callable[[Any], None], value: Any) -> None:
    # A TaskFuture can be cancelled by its user from another thread between done() and here.
    with contextlib.suppress(concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        setter(value)


class ResultRouter(Generic[F]):
    """Task id → the future awaiting its result; results that arrive before their future are
    kept until it is added. Thread-safe: the sync client's watcher thread and its callers share
    it (the lock is never held while a future runs its callbacks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._awaiting: dict[int, F] = {}
        self._early: dict[int, Settled] = {}
        self._closed = False

    def add(self, futures: Iterable[F]) -> list[tuple[F, Settled]]:
        """Await these futures' results; returns those that already arrived, to settle.
        Raises ClientClosed once the router is closed."""
        early = []
        with self._lock:
            if self._closed:
                raise ClientClosed("the client was closed during the submission")
            for future in futures:
                settled = self._early.pop(future.task_id, None)
                if settled is None:
                    self._awaiting[future.task_id] = future
                else:
                    early.append((future, settled))
        return early

    def route(self, settled: Settled) -> F | None:
        """The future awaiting this result, no longer awaited; None if there is none yet (the
        result is kept for it) or the router is closed (the result is dropped)."""
        with self._lock:
            future = self._awaiting.pop(settled.task_id, None)
            if future is None and not self._closed:
                self._early[settled.task_id] = settled
            return future

    def awaited(self) -> list[int]:
        """Ids of the tasks whose futures still wait (named again when the stream reopens)."""
        with self._lock:
            return list(self._awaiting)

    def close(self) -> list[F]:
        """Stop routing: returns the futures still waiting, which no result will settle now."""
        with self._lock:
            self._closed = True
            pending = list(self._awaiting.values())
            self._awaiting.clear()
            self._early.clear()
        return pending


class ClientCore(Generic[F]):
    """The IO-free half of a client: its session, its requests, its result router."""

    def __init__(
        self, address: str, session: str | None = None, retry: RetryPolicy | None = None
    ) -> None:
        if not isinstance(address, str) or not address:
            raise InvalidArgument(f"the address is HOST:PORT, not {address!r}")
        self.address = address
        self.session = session or uuid.uuid4().hex
        self.retry = retry or RetryPolicy()
        self.router: ResultRouter[F] = ResultRouter()

    def python_request(
        self,
        fn: Callable[..., Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        priority: int | str,
        retries: int,
        timeout: float | None,
        retry_on: RetryOn,
        cpus: int,
    ) -> convert.SubmitRequest:
        """One call fn(*args, **kwargs), checked."""
        checked = options.task_options(priority, retries, timeout, cpus)
        spec = convert.python_spec(fn, tuple(args), kwargs, retry_on)
        return self._request([spec], checked)

    def command_request(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdin: bytes | str | None,
        priority: int | str,
        retries: int,
        timeout: float | None,
        cpus: int,
    ) -> convert.SubmitRequest:
        """One command, checked."""
        checked = options.task_options(priority, retries, timeout, cpus)
        return self._request([convert.command_spec(argv, env, cwd, stdin)], checked)

    def builtin_request(
        self,
        name: str,
        params: Mapping[str, float],
        *,
        priority: int | str,
        retries: int,
        timeout: float | None,
        cpus: int,
    ) -> convert.SubmitRequest:
        """One builtin task, checked."""
        checked = options.task_options(priority, retries, timeout, cpus)
        return self._request([convert.builtin_spec(name, params)], checked)

    def map_requests(
        self,
        fn: Callable[..., Any] | str,
        iterable: Iterable[Any],
        *,
        priority: int | str,
        retries: int,
        timeout: float | None,
        retry_on: RetryOn,
        cpus: int,
        batch_size: int,
    ) -> Iterator[convert.SubmitRequest]:
        """fn(item) for every item, `batch_size` tasks per request. The options are checked
        before this returns; each batch is built when the previous one has been sent."""
        checked = options.task_options(priority, retries, timeout, cpus)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be an integer >= 1, not {batch_size!r}")
        options.retry_on_names(retry_on)  # checked now, not at the first batch
        return self._batches(fn, list(iterable), checked, retry_on, batch_size)

    def watch_request(self) -> convert.WatchRequest:
        """The request that opens (or reopens) this session's result stream."""
        return convert.watch_request(self.session, self.router.awaited())

    def track(self, futures: Sequence[F]) -> None:
        """Await the results of newly submitted tasks; settle those already here."""
        for future, settled in self.router.add(futures):
            settle(future, settled)

    def deliver(self, reply: convert.WatchReply) -> None:
        """Settle the futures of the results in one message of the result stream."""
        for settled in convert.settled_from_watch(reply):
            future = self.router.route(settled)
            if future is not None:
                settle(future, settled)

    def close(self) -> None:
        """No more results: fail every future still waiting with `ClientClosed`."""
        for future in self.router.close():
            fail_closed(future)

    def _batches(
        self,
        fn: Callable[..., Any] | str,
        items: list[Any],
        checked: options.TaskOptions,
        retry_on: RetryOn,
        size: int,
    ) -> Iterator[convert.SubmitRequest]:
        for start in range(0, len(items), size):
            chunk = [(item,) for item in items[start : start + size]]
            specs = convert.python_specs(fn, chunk, retry_on)
            yield self._request(specs, checked)

    def _request(self, specs: Sequence[Any], checked: options.TaskOptions) -> convert.SubmitRequest:
        wire_options = convert.options_to_proto(checked)
        return convert.submit_request(
            self.session, [convert.submission(spec, wire_options) for spec in specs]
        )
