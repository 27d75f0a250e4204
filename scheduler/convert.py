"""The scheduler's gRPC boundary: the only module of `scheduler` that imports `protos`.

`AssignCall` is the scheduler's side of one WorkerService.AssignStream, built and read here; the
dispatcher sees it as a `heapd.scheduler.dispatcher.AssignStream` (dispatch groups out, refusals
in) and never touches a message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from heapd import shm
from heapd.runtime import channels
from heapd.v1 import worker_service_pb2, worker_service_pb2_grpc


def assign_request(dispatches: Sequence[shm.Dispatch]) -> worker_service_pb2.AssignTasksRequest:
    """One AssignTasks call for tasks that all go to the same worker (same id and epoch)."""
    first = dispatches[0]
    return worker_service_pb2.AssignTasksRequest(
        worker_id=first.worker_id,
        epoch=first.worker_epoch,
        tasks=[
            worker_service_pb2.Assignment(
                task_id=d.task_id,
                attempt=d.attempt,
                spec=d.payload,
                timeout_s=d.timeout_ms / 1000.0,
            )
            for d in dispatches
        ],
    )


def refusal_from_proto(reply: worker_service_pb2.AssignTasksResponse) -> str:
    """Why the worker took none of a group's tasks; empty when it took them."""
    refused: str = reply.refused
    return refused


class AssignCall:
    """One AssignStream to the worker at `address`, on a channel of its own."""

    def __init__(self, address: str) -> None:
        self._channel = channels.channel(address)
        self._call = worker_service_pb2_grpc.WorkerServiceStub(self._channel).AssignStream()

    async def send(self, group: Sequence[shm.Dispatch]) -> None:
        """Write one group (one worker id and epoch)."""
        await self._call.write(assign_request(group))

    async def refusals(self) -> AsyncIterator[str]:
        """The worker's answers in order, as refusal reasons (empty: taken); raises
        grpc.aio.AioRpcError when the stream breaks."""
        async for reply in self._call:
            yield refusal_from_proto(reply)

    async def close(self) -> None:
        """Cancel the call and close the channel."""
        self._call.cancel()
        await self._channel.close()
