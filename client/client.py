"""`Client`: the blocking Python client of a heapd cell.

One channel to the PLM, one WatchTasks stream (on a background thread) delivering every result
of this client's session; each submission returns a `TaskFuture`. The stream reconnects with
backoff, naming the tasks still awaited, so a restarted PLM still delivers them.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from heapd import calls, convert, errors
from heapd.calls import Options
from heapd.futures import TaskFuture
from heapd.runtime.channels import CHANNEL_OPTIONS
from heapd.submit_stream import SubmitLane
from heapd.v1 import task_service_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:7070"
MAP_BATCH = 1000
CALL_TIMEOUT_S = 30.0
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

T = TypeVar("T")


class Client:
    """Submit Python calls and commands to a heapd cell and get futures back."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, session: str | None = None) -> None:
        self.address = address
        self.session = session or calls.new_session()
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = task_service_pb2_grpc.TaskServiceStub(self._channel)
        self._lane = SubmitLane(self._stub)
        self._lock = threading.Lock()
        self._futures: dict[int, TaskFuture] = {}
        self._early: dict[int, Any] = {}
        self._closed = threading.Event()
        self._call: Any = None
        self._watcher = threading.Thread(target=self._watch, name="heapd-watch", daemon=True)
        self._watcher.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the result stream and close the channel (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._lane.close()
        call = self._call
        if call is not None:
            call.cancel()
        self._watcher.join(timeout=5)
        self._channel.close()

    # --- submitting

    def submit(
        self,
        fn: Callable[..., Any] | str,
        *args: Any,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        retry_on: Sequence[type[BaseException] | str] = (),
        cpus: int = 1,
        **kwargs: Any,
    ) -> TaskFuture:
        """Run fn(*args, **kwargs) in the cell; fn is a callable or a "module:function" string."""
        options = Options(priority, retries, timeout, tuple(retry_on), cpus)  # type: ignore[arg-type]
        return self._submit([calls.python_submission(fn, args, kwargs, options)])[0]

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
    ) -> TaskFuture:
        """Run a command; the result has returncode, stdout and stderr."""
        options = Options(priority, retries, timeout)  # type: ignore[arg-type]
        return self._submit([calls.command_submission(argv, env, cwd, stdin, options)])[0]

    def submit_builtin(
        self, name: str, *, priority: int | str = 0, timeout: float | None = None, **params: float
    ) -> TaskFuture:
        """Run a builtin task: "sleep" (seconds=) or "cpu" (steps=, size=)."""
        options = Options(priority, 0, timeout)  # type: ignore[arg-type]
        return self._submit([calls.builtin_submission(name, params, options)])[0]

    def map(
        self,
        fn: Callable[..., Any] | str,
        iterable: Iterable[Any],
        *,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        batch_size: int = MAP_BATCH,
    ) -> list[TaskFuture]:
        """fn(item) for every item, submitted in batches; futures in input order."""
        options = Options(priority, retries, timeout)  # type: ignore[arg-type]
        futures: list[TaskFuture] = []
        for chunk in calls.batches(list(iterable), batch_size):
            futures.extend(self._submit(calls.map_submissions(fn, chunk, options)))
        return futures

    # --- waiting

    def gather(
        self, futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None
    ) -> list[T]:
        """Results in order; raises the first task exception met."""
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

    def get_task(self, task_id: int) -> convert.TaskStatus:
        """The task's state (and outcome, while held)."""
        reply = self._unary(
            lambda: self._stub.GetTask(convert.get_request(task_id), timeout=CALL_TIMEOUT_S)
        )
        return convert.status_from_proto(reply)

    def list_tasks(self, states: Sequence[str] = (), limit: int = 100) -> list[convert.TaskStatus]:
        """Tasks in the cell by state name (QUEUED, RUNNING, ...), oldest first."""
        request = convert.list_request(states, limit)
        reply = self._unary(lambda: self._stub.ListTasks(request, timeout=CALL_TIMEOUT_S))
        return [convert.status_from_proto(t) for t in reply.tasks]

    def cluster_status(self) -> convert.ClusterStatus:
        """Workers, queue depth and totals of the cell."""
        reply = self._unary(
            lambda: self._stub.GetClusterStatus(convert.cluster_request(), timeout=CALL_TIMEOUT_S)
        )
        return convert.cluster_from_proto(reply)

    # --- internals

    def _submit(self, submissions: list[Any]) -> list[TaskFuture]:
        request = convert.submit_request(self.session, submissions)
        ids = self._unary(lambda: self._lane.submit(request))
        futures = [TaskFuture(task_id, self._cancel_id) for task_id in ids]
        with self._lock:
            for future in futures:
                self._futures[future.task_id] = future
            early = [(f, self._early.pop(f.task_id)) for f in futures if f.task_id in self._early]
        for future, result in early:
            self._resolve(future, result)
        return futures

    def _cancel_id(self, task_id: int) -> bool:
        reply = self._unary(
            lambda: self._stub.CancelTask(convert.cancel_request(task_id), timeout=CALL_TIMEOUT_S)
        )
        return convert.is_cancelled(reply.state)

    def _unary(self, call: Callable[[], T]) -> T:
        """Run a unary call, retrying while the PLM is unreachable (it may be restarting)."""
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                if not errors.is_unavailable(exc) or attempt >= len(RETRY_BACKOFF_S):
                    raise errors.from_rpc_error(exc) from None
            time.sleep(RETRY_BACKOFF_S[attempt])
            attempt += 1

    def _watch(self) -> None:
        """The result stream; reopened with backoff until the client closes."""
        attempt = 0
        while not self._closed.is_set():
            with self._lock:
                awaited = list(self._futures)
            self._call = self._stub.WatchTasks(convert.watch_request(self.session, awaited))
            try:
                for reply in self._call:
                    attempt = 0
                    for result in reply.results:
                        self._deliver(result)
            except grpc.RpcError:
                pass
            if self._closed.wait(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]):
                return
            attempt += 1

    def _deliver(self, result: Any) -> None:
        with self._lock:
            future = self._futures.pop(result.task_id, None)
            if future is None:
                self._early[result.task_id] = result
                return
        self._resolve(future, result)

    def _resolve(self, future: TaskFuture, result: Any) -> None:
        if future.done():
            return
        try:
            value = convert.result_value(result)
        except errors.TaskCancelled:
            future.settle_cancelled()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)
