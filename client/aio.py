"""`AsyncClient`: the asyncio client of a heapd cell, with the same surface as `Client`.

Request building and result decoding are shared with `Client` (`client.calls`, `client.convert`);
this module only awaits. Futures are asyncio futures carrying their task id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from heapd import calls, convert, errors
from heapd.calls import Options
from heapd.client import CALL_TIMEOUT_S, DEFAULT_ADDRESS, MAP_BATCH, RETRY_BACKOFF_S
from heapd.runtime.channels import CHANNEL_OPTIONS
from heapd.submit_stream import AsyncSubmitLane
from heapd.v1 import task_service_pb2_grpc

T = TypeVar("T")


class AsyncTaskFuture(asyncio.Future[Any]):
    """An asyncio future for one task; cancelling it also cancels the task in the cell."""

    def __init__(self, task_id: int, client: AsyncClient) -> None:
        super().__init__()
        self.task_id = task_id
        self._client = client

    def cancel(self, msg: Any = None) -> bool:
        """Cancel locally at once and ask the cell to cancel the task."""
        if self.done():
            return False
        self._client.cancel_in_background(self.task_id)
        return super().cancel(msg)


class AsyncClient:
    """Submit tasks from asyncio code: `async with AsyncClient(address) as client: ...`."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, session: str | None = None) -> None:
        self.address = address
        self.session = session or calls.new_session()
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = task_service_pb2_grpc.TaskServiceStub(self._channel)
        self._lane = AsyncSubmitLane(self._stub)
        self._futures: dict[int, AsyncTaskFuture] = {}
        self._early: dict[int, Any] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        self._watcher = asyncio.create_task(self._watch(), name="heapd-watch")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the result stream and close the channel (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._lane.close()
        if self._watcher is not None:
            self._watcher.cancel()
        await self._channel.close()

    async def submit(
        self,
        fn: Callable[..., Any] | str,
        *args: Any,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        retry_on: Sequence[type[BaseException] | str] = (),
        cpus: int = 1,
        **kwargs: Any,
    ) -> AsyncTaskFuture:
        """Run fn(*args, **kwargs) in the cell; await the returned future for its result."""
        options = Options(priority, retries, timeout, tuple(retry_on), cpus)  # type: ignore[arg-type]
        return (await self._submit([calls.python_submission(fn, args, kwargs, options)]))[0]

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
    ) -> AsyncTaskFuture:
        """Run a command; the result has returncode, stdout and stderr."""
        options = Options(priority, retries, timeout)  # type: ignore[arg-type]
        return (await self._submit([calls.command_submission(argv, env, cwd, stdin, options)]))[0]

    async def map(
        self,
        fn: Callable[..., Any] | str,
        iterable: Iterable[Any],
        *,
        priority: int | str = 0,
        retries: int = 0,
        timeout: float | None = None,
        batch_size: int = MAP_BATCH,
    ) -> list[AsyncTaskFuture]:
        """fn(item) for every item, submitted in batches; futures in input order."""
        options = Options(priority, retries, timeout)  # type: ignore[arg-type]
        futures: list[AsyncTaskFuture] = []
        for chunk in calls.batches(list(iterable), batch_size):
            futures.extend(await self._submit(calls.map_submissions(fn, chunk, options)))
        return futures

    async def gather(self, futures: Iterable[Awaitable[T]]) -> list[T]:
        """Results in order; raises the first task exception met."""
        return list(await asyncio.gather(*futures))

    def as_completed(
        self, futures: Iterable[Awaitable[T]], timeout: float | None = None
    ) -> Iterator[Awaitable[T]]:
        """Awaitables in the order they finish."""
        return asyncio.as_completed(list(futures), timeout=timeout)

    async def cancel(self, task: AsyncTaskFuture | int) -> bool:
        """Cancel a task by future or id; True if it ended CANCELLED."""
        task_id = task.task_id if isinstance(task, AsyncTaskFuture) else task
        reply = await self._unary(
            lambda: self._stub.CancelTask(convert.cancel_request(task_id), timeout=CALL_TIMEOUT_S)
        )
        cancelled = convert.is_cancelled(reply.state)
        if cancelled and isinstance(task, AsyncTaskFuture) and not task.done():
            asyncio.Future.cancel(task)
        return cancelled

    async def cluster_status(self) -> convert.ClusterStatus:
        """Workers, queue depth and totals of the cell."""
        reply = await self._unary(
            lambda: self._stub.GetClusterStatus(convert.cluster_request(), timeout=CALL_TIMEOUT_S)
        )
        return convert.cluster_from_proto(reply)

    def cancel_in_background(self, task_id: int) -> None:
        """Fire a CancelTask for a future cancelled locally."""
        job = asyncio.ensure_future(self.cancel(task_id))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _submit(self, submissions: list[Any]) -> list[AsyncTaskFuture]:
        request = convert.submit_request(self.session, submissions)
        ids = await self._unary(lambda: self._lane.submit(request))
        futures = [AsyncTaskFuture(task_id, self) for task_id in ids]
        for future in futures:
            self._futures[future.task_id] = future
            if future.task_id in self._early:
                self._resolve(future, self._early.pop(future.task_id))
        return futures

    async def _unary(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await call()
            except grpc.RpcError as exc:
                if not errors.is_unavailable(exc) or attempt >= len(RETRY_BACKOFF_S):
                    raise errors.from_rpc_error(exc) from None
            await asyncio.sleep(RETRY_BACKOFF_S[attempt])
            attempt += 1

    async def _watch(self) -> None:
        attempt = 0
        while not self._closed:
            call = self._stub.WatchTasks(convert.watch_request(self.session, list(self._futures)))
            try:
                async for reply in call:
                    attempt = 0
                    for result in reply.results:
                        self._deliver(result)
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
            attempt += 1

    def _deliver(self, result: Any) -> None:
        future = self._futures.pop(result.task_id, None)
        if future is None:
            self._early[result.task_id] = result
        else:
            self._resolve(future, result)

    @staticmethod
    def _resolve(future: AsyncTaskFuture, result: Any) -> None:
        if future.done():
            return
        try:
            value = convert.result_value(result)
        except errors.TaskCancelled:
            asyncio.Future.cancel(future)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)
