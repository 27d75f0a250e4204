"""`Client`: the blocking Python client of a heapd cell.

One channel to the PLM: submissions go over one long-lived SubmitStream (`SubmitLane`), and one
WatchTasks stream, read on a background thread, delivers every result of this client's session
to its `TaskFuture`. The stream reconnects with backoff, naming the tasks still awaited, so a
restarted PLM still delivers them. Checking arguments, building requests and routing results is
the shared `ClientCore`'s work; this module only blocks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from heapd import convert, errors
from heapd.core import (
    ACK_CLOSE_TIMEOUT_S,
    ACK_DELAY_S,
    CALL_TIMEOUT_S,
    CLOSE_WAIT_S,
    DEFAULT_ADDRESS,
    MAP_BATCH,
    ClientCore,
    RetryOn,
)
from heapd.errors import ClientClosed, HeapdError
from heapd.futures import TaskFuture
from heapd.runtime.channels import CHANNEL_OPTIONS
from heapd.security import Security
from heapd.status import ClusterStatus, TaskStatus
from heapd.submit_stream import SubmitLane

T = TypeVar("T")


class Client:
    """Submit Python calls and commands to a heapd cell and get futures back.

    `close()` (or leaving `with`) fails the futures still pending with `ClientClosed`; it does
    not cancel their tasks. `security` is the cell's token and TLS files (`heapd.Security`);
    without it they are found in the environment (`Security.from_env`). `trace_every=N`
    traces every Nth task submitted (the cell records its per-hop timestamps, as `heapd bench
    --trace` reads them); 0, the default, traces none.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        session: str | None = None,
        security: Security | None = None,
        trace_every: int = 0,
    ) -> None:
        self._core: ClientCore[TaskFuture] = ClientCore(address, session, trace_every=trace_every)
        self._security = security or Security.from_env()
        self._channel = self._security.channel(address, CHANNEL_OPTIONS)
        self._stub = convert.task_stub(self._channel)
        self._lane = SubmitLane(self._stub)
        self._lock = threading.Lock()  # orders close() against the watcher opening a stream
        self._closed = threading.Event()
        self._call: Any = None
        self._watcher = threading.Thread(target=self._watch, name="heapd-watch", daemon=True)
        self._watcher.start()
        self._ack_wake = threading.Event()
        self._acker = threading.Thread(target=self._ack_loop, name="heapd-ack", daemon=True)
        self._acker.start()

    @property
    def address(self) -> str:
        """The PLM's HOST:PORT."""
        return self._core.address

    @property
    def session(self) -> str:
        """The session name the results of this client's tasks are streamed to."""
        return self._core.session

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the result stream, close the channel, and fail every future still pending with
        `ClientClosed` (idempotent). The tasks themselves are not cancelled."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            call = self._call
        self._ack_wake.set()
        self._lane.close()
        if call is not None:
            call.cancel()
        if threading.current_thread() not in (self._watcher, self._acker):  # from a callback
            self._watcher.join(timeout=CLOSE_WAIT_S)
            self._acker.join(timeout=CLOSE_WAIT_S)
        self._send_last_acks()
        self._channel.close()
        self._core.close()

    # --- submitting

    def submit(
        self,
        fn: Callable[..., Any] | str,
        *args: Any,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        retry_on: RetryOn = (),
        cpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        key: str | None = None,
        after: Iterable[TaskFuture | int] | None = None,
        **kwargs: Any,
    ) -> TaskFuture:
        """Run fn(*args, **kwargs) in the cell; fn is a callable or a "module:function" string.

        It runs once the tasks of `after` (futures or task ids) have succeeded; a future among
        the arguments (also inside lists, tuples and dict values) is replaced by its task's
        value, and waited on too. A dependency that does not succeed fails this task with
        `DependencyFailed`; a future already failed raises it here."""
        request = self._core.python_request(
            fn,
            args,
            kwargs,
            priority=priority,
            retries=retries,
            timeout=timeout,
            retry_on=retry_on,
            cpus=cpus,
            resources=resources,
            labels=labels,
            key=key,
            after=after,
        )
        return self._submit(request)[0]

    def submit_command(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        cpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        key: str | None = None,
        after: Iterable[TaskFuture | int] | None = None,
    ) -> TaskFuture:
        """Run a command (once the tasks of `after` have succeeded); the result is a
        `CommandResult` (returncode, stdout, stderr)."""
        request = self._core.command_request(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            priority=priority,
            retries=retries,
            timeout=timeout,
            cpus=cpus,
            resources=resources,
            labels=labels,
            key=key,
            after=after,
        )
        return self._submit(request)[0]

    def submit_builtin(
        self,
        name: str,
        *,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        cpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        key: str | None = None,
        after: Iterable[TaskFuture | int] | None = None,
        **params: float,
    ) -> TaskFuture:
        """Run a builtin task: "sleep" (seconds=) or "cpu" (steps=, size=); once the tasks of
        `after` have succeeded."""
        request = self._core.builtin_request(
            name,
            params,
            priority=priority,
            retries=retries,
            timeout=timeout,
            cpus=cpus,
            resources=resources,
            labels=labels,
            key=key,
            after=after,
        )
        return self._submit(request)[0]

    def map(
        self,
        fn: Callable[..., Any] | str,
        iterable: Iterable[Any],
        *,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        retry_on: RetryOn = (),
        cpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        batch_size: int = MAP_BATCH,
        keys: Sequence[str] | None = None,
        after: Iterable[TaskFuture | int] | None = None,
    ) -> list[TaskFuture]:
        """fn(item) for every item, submitted in batches; futures in input order. Every task
        waits on the tasks of `after`, and each on the futures inside its own item."""
        requests = self._core.map_requests(
            fn,
            iterable,
            priority=priority,
            retries=retries,
            timeout=timeout,
            retry_on=retry_on,
            cpus=cpus,
            resources=resources,
            labels=labels,
            batch_size=batch_size,
            keys=keys,
            after=after,
        )
        futures: list[TaskFuture] = []
        for request in requests:
            futures.extend(self._submit(request))
        return futures

    def future(self, task_id: int) -> TaskFuture:
        """A future for a task submitted earlier, by this or another client, before or after a
        restart of the cell; it resolves as any other (`TaskLost` if the cell no longer holds
        the task: its result was acknowledged, or expired). Its results now come to this
        client."""
        request = self._core.adopt_request([task_id])
        future = TaskFuture(task_id, self._cancel_id)
        self._core.track([future])
        self._unary(lambda: self._lane.submit(request))
        return future

    # --- waiting

    def gather(
        self, futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None
    ) -> list[T]:
        """Results in input order; raises the first task exception met in that order, or
        TimeoutError when they are not all in within `timeout` seconds (the tasks go on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [
            f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
            for f in futures
        ]

    def as_completed(
        self, futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future[T]]:
        """Futures as they finish."""
        return concurrent.futures.as_completed(list(futures), timeout=timeout)

    # --- the task service

    def cancel(self, task: TaskFuture | int) -> bool:
        """Cancel a task by future or id; True if it ended CANCELLED."""
        if isinstance(task, TaskFuture):
            return task.cancel()
        return self._cancel_id(task)

    def get_task(self, task_id: int) -> TaskStatus:
        """The task's state (and outcome, while the PLM holds it)."""
        request = convert.get_request(task_id)
        reply = self._unary(lambda: self._stub.GetTask(request, timeout=CALL_TIMEOUT_S))
        return convert.status_from_proto(reply)

    def list_tasks(self, states: Sequence[str] = (), limit: int = 100) -> list[TaskStatus]:
        """Tasks in the cell by state name (QUEUED, RUNNING, ...), oldest first."""
        request = convert.list_request(states, limit)
        reply = self._unary(lambda: self._stub.ListTasks(request, timeout=CALL_TIMEOUT_S))
        return convert.statuses_from_list(reply)

    def cluster_status(self) -> ClusterStatus:
        """Workers, queue depth and totals of the cell."""
        request = convert.cluster_request()
        reply = self._unary(lambda: self._stub.GetClusterStatus(request, timeout=CALL_TIMEOUT_S))
        return convert.cluster_from_proto(reply)

    # --- internals

    def _submit(self, request: convert.SubmitRequest) -> list[TaskFuture]:
        ids = self._unary(lambda: self._lane.submit(request))
        futures = [TaskFuture(task_id, self._cancel_id) for task_id in ids]
        self._core.track(futures)
        return futures

    def _cancel_id(self, task_id: int) -> bool:
        request = convert.cancel_request(task_id)
        reply = self._unary(lambda: self._stub.CancelTask(request, timeout=CALL_TIMEOUT_S))
        return convert.cancelled_from_reply(reply)

    def _unary(self, call: Callable[[], T]) -> T:
        """Run a call, retrying as the core's policy says while the PLM cannot be reached."""
        attempt = 0
        while True:
            if self._closed.is_set():
                raise ClientClosed("the client is closed")
            try:
                return call()
            except grpc.RpcError as exc:
                delay = self._core.retry.call_delay(attempt, exc)
                if delay is None:
                    raise self._error(exc) from None
            if self._closed.wait(delay):
                raise ClientClosed("the client was closed while the call was retried")
            attempt += 1

    def _error(self, exc: grpc.RpcError) -> HeapdError:
        if self._closed.is_set():  # close() cut the call (CANCELLED)
            return ClientClosed("the client was closed during the call")
        return errors.from_rpc_error(exc)

    def _watch(self) -> None:
        """The result stream, on its own thread; reopened with backoff until the client closes."""
        attempt = 0
        while True:
            with self._lock:
                if self._closed.is_set():
                    return
                request, adopts = self._core.watch_request()
                self._call = call = self._stub.WatchTasks(request)
            try:
                for adopt in adopts:  # more awaited tasks than one request may name
                    self._stub.SubmitTasks(adopt, timeout=CALL_TIMEOUT_S)
                for reply in call:
                    attempt = 0
                    if self._core.deliver(reply):
                        self._ack_wake.set()
            except grpc.RpcError:
                pass
            if self._closed.wait(self._core.retry.reconnect_delay(attempt)):
                return
            attempt += 1

    def _ack_loop(self) -> None:
        """Sends acknowledgements no submission carried within ACK_DELAY_S (own thread)."""
        while True:
            self._ack_wake.wait()
            if self._closed.wait(ACK_DELAY_S):
                return
            self._ack_wake.clear()
            request = self._core.ack_request()
            if request is not None:
                with contextlib.suppress(grpc.RpcError, HeapdError):  # lost: the TTL frees them
                    self._lane.submit(request)

    def _send_last_acks(self) -> None:
        """On close: one bounded call with what is still unacknowledged."""
        request = self._core.ack_request()
        if request is not None:
            with contextlib.suppress(grpc.RpcError):
                self._stub.SubmitTasks(request, timeout=ACK_CLOSE_TIMEOUT_S)
