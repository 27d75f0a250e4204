"""TaskService servicer: validate → call the Plm → convert back. Errors map in runtime.status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from heapd.plm import convert
from heapd.plm.daemon import Plm
from heapd.runtime import status
from heapd.runtime.server import Registration
from heapd.v1 import task_service_pb2 as pb
from heapd.v1 import task_service_pb2_grpc

SERVICE_NAME = "heapd.v1.TaskService"
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 100_000


class TaskService(task_service_pb2_grpc.TaskServiceServicer):  # type: ignore[misc]
    """The PLM's public API."""

    def __init__(self, plm: Plm) -> None:
        self._plm = plm

    @status.unary
    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTaskResponse:
        task = convert.new_task_from_proto(request.spec, request.options)
        (task_id,) = self._plm.submit(request.session, [task])
        return pb.SubmitTaskResponse(task_id=task_id)

    @status.unary
    async def SubmitTasks(
        self, request: pb.SubmitTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTasksResponse:
        tasks = convert.new_tasks_from_proto(request)
        return pb.SubmitTasksResponse(task_ids=self._plm.submit(request.session, tasks))

    @status.streaming
    async def SubmitStream(
        self,
        request_iterator: AsyncIterator[pb.SubmitTasksRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        async for request in request_iterator:
            yield self._submit_one(request)

    def _submit_one(self, request: pb.SubmitTasksRequest) -> pb.SubmitStreamResponse:
        """One request of a SubmitStream: its ids, or its error as a code (a domain error fails
        that request only; anything else is a bug and ends the stream as INTERNAL)."""
        try:
            ids = self._plm.submit(request.session, convert.new_tasks_from_proto(request))
        except Exception as exc:
            code = status.code_for(exc)
            if code is None:
                raise
            return pb.SubmitStreamResponse(
                error_code=code.value[0], error_message=status.message_for(exc)
            )
        return pb.SubmitStreamResponse(task_ids=ids)

    @status.unary
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.TaskStatus:
        info, outcome = self._plm.get(request.task_id)
        return convert.status_to_proto(info, outcome)

    @status.streaming
    async def WatchTasks(
        self, request: pb.WatchTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTasksResponse]:
        if not request.session:
            raise ValueError("WatchTasks needs a session name")
        async for batch in self._plm.watch(request.session, list(request.task_ids)):
            yield convert.watch_response(
                [
                    convert.result_to_proto(
                        task_id,
                        None if info is None else info.state,
                        0 if info is None else info.attempt,
                        outcome,
                    )
                    for task_id, info, outcome in batch
                ]
            )

    @status.unary
    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTaskResponse:
        state = await self._plm.cancel(request.task_id)
        return convert.cancel_reply(state)

    @status.unary
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        limit = request.limit or DEFAULT_LIST_LIMIT
        if limit > MAX_LIST_LIMIT:
            raise ValueError(f"limit {limit} is over the maximum of {MAX_LIST_LIMIT}")
        infos = self._plm.list_tasks(convert.states_from_proto(request.states), limit)
        return pb.ListTasksResponse(tasks=[convert.status_to_proto(i, None) for i in infos])

    @status.unary
    async def GetClusterStatus(
        self, request: pb.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClusterStatus:
        stats, held = self._plm.stats()
        return convert.cluster_to_proto(stats, held)


def registration(plm: Plm) -> Registration:
    """Adds the TaskService for `plm` to a server."""

    def register(server: grpc.aio.Server) -> None:
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(TaskService(plm), server)

    return register
