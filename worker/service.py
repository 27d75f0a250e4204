"""WorkerService servicer: the scheduler assigns tasks, the PLM cancels them, operators drain.

Thin: requests go through `convert`, are checked here (INVALID_ARGUMENT naming the field), the
Worker decides, replies come from `convert`; errors map to status codes in
`heapd.runtime.status`. The entry point (`heapd.worker.__main__`) adds it to the worker's server,
behind the cell's token.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import grpc

from heapd import errors
from heapd.runtime import status
from heapd.runtime.server import Registration
from heapd.v1 import worker_service_pb2 as pb
from heapd.v1 import worker_service_pb2_grpc
from heapd.worker import convert
from heapd.worker.daemon import Worker
from heapd.worker.jobs import Assignment

SERVICE_NAME = "heapd.v1.WorkerService"


class WorkerService(worker_service_pb2_grpc.WorkerServiceServicer):  # type: ignore[misc]
    """Checks the caller's fencing token, then hands to the Worker."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    @status.unary
    async def AssignTasks(
        self, request: pb.AssignTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.AssignTasksResponse:
        assignment = checked(convert.assignment_from_proto(request))
        refusal = await self._worker.refusal(assignment.worker_id, assignment.epoch)
        if refusal is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        return self._apply(assignment)

    def _apply(self, assignment: Assignment) -> pb.AssignTasksResponse:
        """Take the assignment's tasks, then give back what it revokes (if not started)."""
        accepted, revoked = self._take(assignment)
        return convert.assigned_reply(accepted, revoked)

    def _take(self, assignment: Assignment) -> tuple[int, list[tuple[int, int]]]:
        """(tasks taken, attempts given back) of one assignment."""
        accepted = self._worker.assign(assignment.jobs) if assignment.jobs else 0
        revoked = self._worker.revoke(assignment.revoke) if assignment.revoke else []
        return accepted, revoked

    @status.streaming
    async def AssignStream(
        self,
        request_iterator: AsyncIterator[pb.AssignTasksRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AssignTasksResponse]:
        self._worker.assign_stream_opened()
        unanswered = taken = 0  # requests since the last answer, and the tasks they brought
        try:
            async for request in request_iterator:
                assignment = checked(convert.assignment_from_proto(request))
                unanswered += 1
                refusal = await self._worker.refusal(assignment.worker_id, assignment.epoch)
                if refusal is not None:
                    yield convert.refused_reply(refusal, unanswered)
                    unanswered = taken = 0
                    continue
                accepted, revoked = self._take(assignment)
                taken += accepted
                if not assignment.defer_answer or assignment.revoke:
                    yield convert.assigned_reply(taken, revoked, unanswered)
                    unanswered = taken = 0
        except asyncio.CancelledError:
            return  # the worker is stopping, or the scheduler went away: end the stream
        finally:
            self._worker.assign_stream_closed()

    @status.unary
    async def CancelTask(
        self, request: pb.WorkerCancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.WorkerCancelResponse:
        task_id, attempt = convert.cancel_from_proto(request)
        check_ref(task_id, attempt, "cancel")
        return convert.cancel_reply(self._worker.cancel(task_id, attempt))

    @status.unary
    async def Drain(
        self, request: pb.DrainRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainResponse:
        return convert.drain_reply(self._worker.drain())


def check_ref(task_id: int, attempt: int, what: str) -> None:
    """One attempt of one task: both numbered from 1 (0 would name no task, or every attempt)."""
    if task_id < 1:
        raise errors.InvalidArgument(f"{what}: task_id must be given (>= 1), got {task_id}")
    if attempt < 1:
        raise errors.InvalidArgument(
            f"{what}: attempt must be >= 1 (one attempt of task {task_id}), got {attempt}"
        )


def checked(assignment: Assignment) -> Assignment:
    """`assignment` if every task and revocation in it names one attempt and every timeout is
    a finite number >= 0; else InvalidArgument naming the first bad one."""
    for job in assignment.jobs:
        check_ref(job.task_id, job.attempt, "assign")
        if not (math.isfinite(job.timeout_s) and job.timeout_s >= 0):
            raise errors.InvalidArgument(
                f"assign: timeout_s of task {job.task_id} must be a finite number >= 0,"
                f" got {job.timeout_s}"
            )
    for task_id, attempt in assignment.revoke:
        check_ref(task_id, attempt, "revoke")
    return assignment


def registration(worker: Worker) -> Registration:
    """Adds the WorkerService for `worker` to a server."""

    def add(server: grpc.aio.Server) -> None:
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerService(worker), server)

    return add
