"""`AsyncClient`: the asyncio client of a heapd cell, with the same surface as `Client`.

Checking arguments, building requests and routing results is the shared `ClientCore`'s work
(`heapd.core`); this module only awaits. The client connects on first use, inside the running
loop: the channel, the submit lane and the task reading the result stream start together, so a
client used without `async with` still gets its results. Futures are `AsyncTaskFuture`s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
from heapd.futures import AsyncTaskFuture
from heapd.runtime.channels import CHANNEL_OPTIONS
from heapd.security import Security
from heapd.status import ClusterStatus, TaskStatus
from heapd.submit_stream import AsyncSubmitLane

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Connection:
    """What an AsyncClient opens on first use."""

    channel: grpc.aio.Channel
    stub: convert.TaskStub
    lane: AsyncSubmitLane
    watcher: asyncio.Task[None]


class AsyncClient:
    """Submit tasks from asyncio code: `async with AsyncClient(address) as client: ...`.

    `close()` (or leaving `async with`) fails the futures still pending with `ClientClosed`; it
    does not cancel their tasks.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        session: str | None = None,
        security: Security | None = None,
        trace_every: int = 0,
    ) -> None:
        self._core: ClientCore[AsyncTaskFuture] = ClientCore(
            address, session, trace_every=trace_every
        )
        self._security = security or Security.from_env()
        self._connection: _Connection | None = None
        self._background: set[asyncio.Task[Any]] = set()  # CancelTask calls, acknowledgements
        self._ack_timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def address(self) -> str:
        """The PLM's HOST:PORT."""
        return self._core.address

    @property
    def session(self) -> str:
        """The session name the results of this client's tasks are streamed to."""
        return self._core.session

    async def __aenter__(self) -> AsyncClient:
        self._connected()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the result stream, let the cell hear of cancelled futures (up to CLOSE_WAIT_S),
        close the channel, and fail every future still pending with `ClientClosed`
        (idempotent). The tasks themselves are not cancelled."""
        if self._closed:
            return
        self._closed = True
        connection = self._connection
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if connection is not None:
            connection.lane.close()
            connection.watcher.cancel()
            await asyncio.wait([connection.watcher])
            if not connection.watcher.cancelled():
                connection.watcher.exception()  # it ended on its own: retrieved, not re-raised
            await self._finish_background()
            await self._send_last_acks(connection)
            await connection.channel.close()
        self._core.close()

    # --- submitting

    async def submit(
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
        after: Iterable[AsyncTaskFuture | int] | None = None,
        **kwargs: Any,
    ) -> AsyncTaskFuture:
        """Run fn(*args, **kwargs) in the cell; await the returned future for its result.

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
        return (await self._submit(request))[0]

    async def submit_command(
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
        after: Iterable[AsyncTaskFuture | int] | None = None,
    ) -> AsyncTaskFuture:
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
        return (await self._submit(request))[0]

    async def submit_builtin(
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
        after: Iterable[AsyncTaskFuture | int] | None = None,
        **params: float,
    ) -> AsyncTaskFuture:
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
        return (await self._submit(request))[0]

    async def map(
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
        after: Iterable[AsyncTaskFuture | int] | None = None,
    ) -> list[AsyncTaskFuture]:
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
        futures: list[AsyncTaskFuture] = []
        for request in requests:
            futures.extend(await self._submit(request))
        return futures

    async def future(self, task_id: int) -> AsyncTaskFuture:
        """A future for a task submitted earlier, by this or another client, before or after a
        restart of the cell; it resolves as any other (`TaskLost` if the cell no longer holds
        the task: its result was acknowledged, or expired). Its results now come to this
        client."""
        request = self._core.adopt_request([task_id])
        lane = self._connected().lane
        future = AsyncTaskFuture(task_id, self._cancel_soon)
        self._core.track([future])
        await self._unary(lambda: lane.submit(request))
        return future

    # --- waiting

    async def gather(
        self, futures: Iterable[Awaitable[T]], timeout: float | None = None
    ) -> list[T]:
        """Results in input order; raises the first task exception met in that order, or
        TimeoutError when they are not all in within `timeout` seconds. Giving up (a timeout,
        or the caller being cancelled) leaves the tasks running, as `Client.gather` does."""
        pending = [asyncio.ensure_future(f) for f in futures]
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        results: list[T] = []
        for future in pending:
            if not future.done():
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait([future], timeout=left)
                if not future.done():
                    raise TimeoutError(f"not every result arrived within {timeout} seconds")
            results.append(future.result())
        return results

    def as_completed(
        self, futures: Iterable[Awaitable[T]], timeout: float | None = None
    ) -> Iterator[Awaitable[T]]:
        """Awaitables in the order they finish."""
        return asyncio.as_completed(list(futures), timeout=timeout)

    # --- the task service

    async def cancel(self, task: AsyncTaskFuture | int) -> bool:
        """Cancel a task by future or id; True if it ended CANCELLED."""
        task_id = task.task_id if isinstance(task, AsyncTaskFuture) else task
        cancelled = await self._cancel_id(self._connected(), task_id)
        if cancelled and isinstance(task, AsyncTaskFuture):
            task.settle_cancelled()
        return cancelled

    async def get_task(self, task_id: int) -> TaskStatus:
        """The task's state (and outcome, while the PLM holds it)."""
        request = convert.get_request(task_id)
        stub = self._connected().stub
        reply = await self._unary(lambda: stub.GetTask(request, timeout=CALL_TIMEOUT_S))
        return convert.status_from_proto(reply)

    async def list_tasks(self, states: Sequence[str] = (), limit: int = 100) -> list[TaskStatus]:
        """Tasks in the cell by state name (QUEUED, RUNNING, ...), oldest first."""
        request = convert.list_request(states, limit)
        stub = self._connected().stub
        reply = await self._unary(lambda: stub.ListTasks(request, timeout=CALL_TIMEOUT_S))
        return convert.statuses_from_list(reply)

    async def cluster_status(self) -> ClusterStatus:
        """Workers, queue depth and totals of the cell."""
        request = convert.cluster_request()
        stub = self._connected().stub
        reply = await self._unary(lambda: stub.GetClusterStatus(request, timeout=CALL_TIMEOUT_S))
        return convert.cluster_from_proto(reply)

    # --- internals

    def _connected(self) -> _Connection:
        """The connection, opened on first use (the watcher starts with it)."""
        if self._closed:
            raise ClientClosed("the client is closed")
        if self._connection is None:
            channel = self._security.aio_channel(self.address, CHANNEL_OPTIONS)
            stub = convert.task_stub(channel)
            watcher = asyncio.get_running_loop().create_task(self._watch(stub), name="heapd-watch")
            self._connection = _Connection(channel, stub, AsyncSubmitLane(stub), watcher)
        return self._connection

    async def _submit(self, request: convert.SubmitRequest) -> list[AsyncTaskFuture]:
        lane = self._connected().lane
        ids = await self._unary(lambda: lane.submit(request))
        futures = [AsyncTaskFuture(task_id, self._cancel_soon) for task_id in ids]
        self._core.track(futures)
        return futures

    async def _cancel_id(self, connection: _Connection, task_id: int) -> bool:
        request = convert.cancel_request(task_id)
        stub = connection.stub
        reply = await self._unary(lambda: stub.CancelTask(request, timeout=CALL_TIMEOUT_S))
        return convert.cancelled_from_reply(reply)

    def _cancel_soon(self, task_id: int) -> None:
        """Ask the cell to cancel the task of a future cancelled locally; close() waits for it."""
        connection = self._connection
        if connection is None or self._closed:
            return
        job = asyncio.get_running_loop().create_task(self._cancel_id(connection, task_id))
        self._background.add(job)
        job.add_done_callback(self._forget)

    def _forget(self, job: asyncio.Task[Any]) -> None:
        self._background.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved: nobody awaits it (the task may have settled meanwhile)

    async def _finish_background(self) -> None:
        """Wait a while for pending CancelTask calls, then cancel the rest and await them."""
        jobs = list(self._background)
        if not jobs:
            return
        _, late = await asyncio.wait(jobs, timeout=CLOSE_WAIT_S)
        for job in late:
            job.cancel()
        if late:
            await asyncio.wait(late)

    async def _unary(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a call, retrying as the core's policy says while the PLM cannot be reached."""
        attempt = 0
        while True:
            try:
                return await call()
            except grpc.RpcError as exc:
                delay = self._core.retry.call_delay(attempt, exc)
                if delay is None:
                    raise self._error(exc) from None
            await asyncio.sleep(delay)
            if self._closed:
                raise ClientClosed("the client was closed while the call was retried")
            attempt += 1

    def _error(self, exc: grpc.RpcError) -> HeapdError:
        if self._closed:  # close() cut the call (CANCELLED)
            return ClientClosed("the client was closed during the call")
        return errors.from_rpc_error(exc)

    async def _watch(self, stub: convert.TaskStub) -> None:
        """The result stream; reopened with backoff until the client closes."""
        attempt = 0
        while not self._closed:
            request, adopts = self._core.watch_request()
            call = stub.WatchTasks(request)
            try:
                for adopt in adopts:  # more awaited tasks than one request may name
                    await stub.SubmitTasks(adopt, timeout=CALL_TIMEOUT_S)
                async for reply in call:
                    attempt = 0
                    if self._core.deliver(reply) and self._ack_timer is None:
                        loop = asyncio.get_running_loop()
                        self._ack_timer = loop.call_later(ACK_DELAY_S, self._ack_soon)
            except grpc.RpcError:
                pass
            await asyncio.sleep(self._core.retry.reconnect_delay(attempt))
            attempt += 1

    def _ack_soon(self) -> None:
        """Send the acknowledgements no submission carried within ACK_DELAY_S."""
        self._ack_timer = None
        request = self._core.ack_request()
        connection = self._connection
        if request is None or connection is None or self._closed:
            return
        job = asyncio.get_running_loop().create_task(connection.lane.submit(request))
        self._background.add(job)
        job.add_done_callback(self._forget)  # a lost acknowledgement: the TTL frees the result

    async def _send_last_acks(self, connection: _Connection) -> None:
        """On close: one bounded call with what is still unacknowledged."""
        request = self._core.ack_request()
        if request is not None:
            with contextlib.suppress(grpc.RpcError):
                await connection.stub.SubmitTasks(request, timeout=ACK_CLOSE_TIMEOUT_S)
