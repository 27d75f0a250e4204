"""The scheduler's gRPC boundary: the only module of `scheduler` that imports `protos`.

`AssignCall` is the scheduler's side of one WorkerService.AssignStream, built and read here; the
dispatcher sees it as a `heapd.scheduler.dispatcher.AssignStream` (dispatch groups and
revocations out, answers in) and never touches a message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from heapd.runtime import channels
from heapd.scheduler.dispatcher import Answer, Request, Revoke
from heapd.security import Security
from heapd.v1 import worker_service_pb2, worker_service_pb2_grpc


def assign_request(request: Request, defer: bool = False) -> worker_service_pb2.AssignTasksRequest:
    """One AssignStream request: tasks that all go to the same worker (same id and epoch), or a
    revocation of unstarted attempts; `defer`: the worker may answer it with a later answer."""
    if isinstance(request, Revoke):
        return worker_service_pb2.AssignTasksRequest(
            worker_id=request.worker_id,
            epoch=request.epoch,
            revoke=[
                worker_service_pb2.AssignmentRef(task_id=task_id, attempt=attempt)
                for task_id, attempt in request.refs
            ],
        )
    first = request[0]
    return worker_service_pb2.AssignTasksRequest(
        worker_id=first.worker_id,
        epoch=first.worker_epoch,
        tasks=[
            worker_service_pb2.Assignment(
                task_id=d.task_id,
                attempt=d.attempt,
                spec=d.payload,
                timeout_s=d.timeout_ms / 1000.0,
                priority=d.priority,
                trace=d.traced,
            )
            for d in request
        ],
        defer_answer=defer,
    )


def answer_from_proto(reply: worker_service_pb2.AssignTasksResponse) -> Answer:
    """Why the worker refused a request (empty: taken) and which attempts it gave back."""
    revoked = [(ref.task_id, ref.attempt) for ref in reply.revoked] if reply.revoked else []
    return Answer(refused=reply.refused, revoked=revoked, answers=max(1, reply.answers))


class AssignCall:
    """One AssignStream to the worker at `address`, on a channel of its own."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        self._channel = channels.channel(address, security)
        self._call = worker_service_pb2_grpc.WorkerServiceStub(self._channel).AssignStream()

    async def send(self, request: Request, defer: bool = False) -> None:
        """Write one request (a group for one worker id and epoch, or a revocation)."""
        await self._call.write(assign_request(request, defer))

    async def answers(self) -> AsyncIterator[Answer]:
        """The worker's answers in order; raises grpc.aio.AioRpcError when the stream breaks."""
        async for reply in self._call:
            yield answer_from_proto(reply)

    async def close(self) -> None:
        """Cancel the call and close the channel."""
        self._call.cancel()
        await self._channel.close()
