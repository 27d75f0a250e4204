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

from heapd import convert, deps, errors, options
from heapd.errors import ClientClosed, InvalidArgument, TaskCancelled
from heapd.results import Settled
from heapd.runtime.limits import Limits

DEFAULT_ADDRESS = "127.0.0.1:7070"
MAP_BATCH = 1000  # tasks per SubmitStream message in `map`
CALL_TIMEOUT_S = 30.0  # deadline of one unary call (get, cancel, list, status)
CLOSE_WAIT_S = 5.0  # how long close() lets in-flight work (watcher, background cancels) finish
# Acknowledgements wait this long for a submission to ride on before going alone, and close()
# gives its last ones this long to reach the cell.
ACK_DELAY_S = 0.05
ACK_CLOSE_TIMEOUT_S = 1.0

RetryOn = Sequence[type[BaseException] | str]
After = Iterable[deps.AnyFuture | int] | None  # `after=`: futures and task ids, mixed


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
WATCH_IDS = Limits.max_ids_per_request  # task ids per WatchTasks or adopt request


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
        self,
        address: str,
        session: str | None = None,
        retry: RetryPolicy | None = None,
        trace_every: int = 0,
    ) -> None:
        """`trace_every=N`: every Nth task submitted is traced (`heapd.shm.trace`); 0: none."""
        if not isinstance(address, str) or not address:
            raise InvalidArgument(f"the address is HOST:PORT, not {address!r}")
        if not isinstance(trace_every, int) or isinstance(trace_every, bool) or trace_every < 0:
            raise InvalidArgument(f"trace_every must be an integer >= 0, not {trace_every!r}")
        self.trace_every = trace_every
        self._untraced = 0  # tasks submitted since the last traced one
        self.address = address
        self.session = session or uuid.uuid4().hex
        self.retry = retry or RetryPolicy()
        self.router: ResultRouter[F] = ResultRouter()
        self._acks: list[int] = []
        self._acks_lock = threading.Lock()

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
        cpus: int | None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        key: str | None = None,
        after: After = None,
    ) -> convert.SubmitRequest:
        """One call fn(*args, **kwargs), checked; the futures among its arguments become
        dependencies (`heapd.deps.extract`), as do those of `after`."""
        checked = options.task_options(priority, retries, timeout, cpus, resources, labels)
        args, kwargs, found = deps.extract(tuple(args), kwargs)
        waits_on = options.dependency_ids([*deps.after_ids(after), *found])
        spec = convert.python_spec(fn, args, kwargs, retry_on)
        return self._request([spec], checked, [options.idempotency_key(key)], [waits_on])

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
        cpus: int | None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        key: str | None = None,
        after: After = None,
    ) -> convert.SubmitRequest:
        """One command, checked, run once the tasks of `after` succeeded."""
        checked = options.task_options(priority, retries, timeout, cpus, resources, labels)
        waits_on = options.dependency_ids(deps.after_ids(after))
        spec = convert.command_spec(argv, env, cwd, stdin)
        return self._request([spec], checked, [options.idempotency_key(key)], [waits_on])

    def builtin_request(
        self,
        name: str,
        params: Mapping[str, float],
        *,
        priority: int | str,
        retries: int,
        timeout: float | None,
        cpus: int | None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        key: str | None = None,
        after: After = None,
    ) -> convert.SubmitRequest:
        """One builtin task, checked, run once the tasks of `after` succeeded."""
        checked = options.task_options(priority, retries, timeout, cpus, resources, labels)
        waits_on = options.dependency_ids(deps.after_ids(after))
        spec = convert.builtin_spec(name, params)
        return self._request([spec], checked, [options.idempotency_key(key)], [waits_on])

    def map_requests(
        self,
        fn: Callable[..., Any] | str,
        iterable: Iterable[Any],
        *,
        priority: int | str,
        retries: int,
        timeout: float | None,
        retry_on: RetryOn,
        cpus: int | None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        batch_size: int,
        keys: Sequence[str] | None = None,
        after: After = None,
    ) -> Iterator[convert.SubmitRequest]:
        """fn(item) for every item, `batch_size` tasks per request; `keys`, one per item, are
        their idempotency keys. Every task waits on the tasks of `after`, and each on the
        futures inside its own item. Everything is checked before this returns (a failed future
        raises here); each batch is built when the previous one has been sent."""
        checked = options.task_options(priority, retries, timeout, cpus, resources, labels)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be an integer >= 1, not {batch_size!r}")
        options.retry_on_names(retry_on)  # checked now, not at the first batch
        items = list(iterable)
        if keys is None:
            checked_keys = [""] * len(items)
        elif isinstance(keys, str) or len(keys) != len(items):
            raise InvalidArgument("keys must be a sequence with one key per item")
        else:
            checked_keys = [options.idempotency_key(k) for k in keys]
        common = options.dependency_ids(deps.after_ids(after))
        arg_tuples, waits_on = [], []
        for item in items:
            arg_tuple, _, found = deps.extract((item,), {})
            arg_tuples.append(arg_tuple)
            waits_on.append(options.dependency_ids([*common, *found]) if found else common)
        return self._batches(fn, arg_tuples, checked, retry_on, batch_size, checked_keys, waits_on)

    def watch_request(self) -> tuple[convert.WatchRequest, list[convert.SubmitRequest]]:
        """The request that opens (or reopens) this session's result stream, and the adopt
        requests to send once it is open: a request names at most the PLM's
        `max_ids_per_request` awaited tasks, the rest are adopted in chunks of as many."""
        awaited = list(self.router.awaited())
        first, rest = awaited[:WATCH_IDS], awaited[WATCH_IDS:]
        adopts = [
            convert.submit_request(self.session, [], [], rest[i : i + WATCH_IDS])
            for i in range(0, len(rest), WATCH_IDS)
        ]
        return convert.watch_request(self.session, first), adopts

    def track(self, futures: Sequence[F]) -> None:
        """Await the results of newly submitted tasks; settle those already here."""
        early = self.router.add(futures)
        for future, settled in early:
            settle(future, settled)
        self._acknowledge([settled.task_id for _, settled in early])

    def deliver(self, reply: convert.WatchReply) -> bool:
        """Settle the futures of the results in one message of the result stream; True when
        acknowledgements are now waiting to be sent."""
        delivered = []
        for settled in convert.settled_from_watch(reply):
            future = self.router.route(settled)
            if future is not None:
                settle(future, settled)
                delivered.append(settled.task_id)
        return self._acknowledge(delivered)

    def adopt_request(self, task_ids: Sequence[int]) -> convert.SubmitRequest:
        """Ask for the results of earlier tasks (by id) on this session's stream."""
        for task_id in task_ids:
            convert.get_request(task_id)  # checks the id
        return convert.submit_request(self.session, [], self.take_acks(), task_ids)

    def ack_request(self) -> convert.SubmitRequest | None:
        """A request carrying only the waiting acknowledgements; None if there are none."""
        acks = self.take_acks()
        return convert.submit_request(self.session, [], acks) if acks else None

    def take_acks(self) -> list[int]:
        """The results this client has handed to its futures and not yet acknowledged: the cell
        releases them (and deletes them from its journal) when it receives them. An
        acknowledgement lost with a failed request only lets its result live to the TTL."""
        with self._acks_lock:
            acks, self._acks = self._acks, []
        return acks

    def _acknowledge(self, task_ids: list[int]) -> bool:
        with self._acks_lock:
            self._acks += task_ids
            return bool(self._acks)

    def close(self) -> None:
        """No more results: fail every future still waiting with `ClientClosed`."""
        for future in self.router.close():
            fail_closed(future)

    def _batches(
        self,
        fn: Callable[..., Any] | str,
        arg_tuples: list[tuple[Any, ...]],
        checked: options.TaskOptions,
        retry_on: RetryOn,
        size: int,
        keys: list[str],
        waits_on: list[list[int]],
    ) -> Iterator[convert.SubmitRequest]:
        for start in range(0, len(arg_tuples), size):
            end = start + size
            specs = convert.python_specs(fn, arg_tuples[start:end], retry_on)
            yield self._request(specs, checked, keys[start:end], waits_on[start:end])

    def _mark_traced(self, submissions: Sequence[Any]) -> None:
        """Trace every `trace_every`th task, counting across requests."""
        at = self.trace_every - 1 - self._untraced
        for index in range(at, len(submissions), self.trace_every):
            submissions[index].options.trace = True
        self._untraced = (self._untraced + len(submissions)) % self.trace_every

    def _request(
        self,
        specs: Sequence[Any],
        checked: options.TaskOptions,
        keys: Sequence[str],
        waits_on: Sequence[Sequence[int]],
    ) -> convert.SubmitRequest:
        """Submissions of `specs` with these options, keys and dependencies (one each);
        waiting acknowledgements ride along (no message of their own on a busy client)."""
        plain = convert.options_to_proto(checked)
        submissions = [
            convert.submission(
                spec, convert.options_to_proto(checked, key, after) if key or after else plain
            )
            for spec, key, after in zip(specs, keys, waits_on, strict=True)
        ]
        if self.trace_every:
            self._mark_traced(submissions)
        return convert.submit_request(self.session, submissions, self.take_acks())
