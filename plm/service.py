"""TaskService servicer: validate → call the Plm → convert back. Errors map in runtime.status;
what a request may ask is bounded by `heapd.runtime.limits` (sizes in `heapd.plm.convert`, open
streams per peer here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from heapd.plm import convert
from heapd.plm.daemon import Plm
from heapd.runtime import status
from heapd.runtime.limits import Limits, PeerStreams
from heapd.runtime.server import Registration
from heapd.v1 import task_service_pb2 as pb
from heapd.v1 import task_service_pb2_grpc

SERVICE_NAME = "heapd.v1.TaskService"


class TaskService(task_service_pb2_grpc.TaskServiceServicer):  # type: ignore[misc]
    """The PLM's public API."""

    def __init__(self, plm: Plm, limits: Limits | None = None) -> None:
        self._plm = plm
        self._limits = limits or Limits()
        self._streams = PeerStreams(self._limits)

    @status.unary
    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTaskResponse:
        (task_id,) = await self._plm.submit(convert.submission_from_proto(request, self._limits))
        return convert.submitted_to_proto(task_id)

    @status.unary
    async def SubmitTasks(
        self, request: pb.SubmitTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTasksResponse:
        intake = convert.submissions_from_proto(request, self._limits)
        return convert.batch_submitted_to_proto(await self._plm.submit(intake))

    @status.streaming
    async def SubmitStream(
        self,
        request_iterator: AsyncIterator[pb.SubmitTasksRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        # Between requests the handler is idle and the PLM's stop may end it (a request cut off
        # that way was not taken; the client sends it again to the next PLM); a request being
        # submitted is always finished and answered first.
        me = asyncio.current_task()
        assert me is not None
        with self._streams.opened(context.peer()):
            while not self._plm.stopping:
                self._plm.idle_streams.add(me)
                try:
                    request = await anext(request_iterator)
                except (StopAsyncIteration, asyncio.CancelledError):
                    return
                finally:
                    self._plm.idle_streams.discard(me)
                yield await self._submit_one(request)

    async def _submit_one(self, request: pb.SubmitTasksRequest) -> pb.SubmitStreamResponse:
        """One request of a SubmitStream: its ids, or its error as a code (a domain error fails
        that request only; anything else is a bug and ends the stream as INTERNAL)."""
        try:
            ids = await self._plm.submit(convert.submissions_from_proto(request, self._limits))
        except Exception as exc:
            code = status.code_for(exc)
            if code is None:
                raise
            return convert.stream_refused_to_proto(code, status.message_for(exc))
        return convert.stream_submitted_to_proto(ids)

    @status.unary
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.TaskStatus:
        info, outcome, unschedulable = self._plm.get(convert.task_id_from_proto(request))
        return convert.status_to_proto(info, outcome, unschedulable)

    @status.streaming
    async def WatchTasks(
        self, request: pb.WatchTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTasksResponse]:
        session, task_ids = convert.watch_from_proto(request, self._limits)
        with self._streams.opened(context.peer()):
            async with status.closing(self._plm.watch(session, task_ids)) as batches:
                async for batch in batches:
                    yield convert.watch_response(batch)

    @status.unary
    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTaskResponse:
        state = await self._plm.cancel(convert.task_id_from_proto(request))
        return convert.cancel_reply(state)

    @status.unary
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        states, limit = convert.list_from_proto(request)
        return convert.tasks_to_proto(self._plm.list_tasks(states, limit))

    @status.unary
    async def GetClusterStatus(
        self, request: pb.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClusterStatus:
        stats, held = self._plm.stats()
        return convert.cluster_to_proto(stats, held)


def registration(plm: Plm, limits: Limits | None = None) -> Registration:
    """Adds the TaskService for `plm` to a server."""

    def register(server: grpc.aio.Server) -> None:
        service = TaskService(plm, limits)
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(service, server)

    return register
