"""The PLM's calls to workers: killing a cancelled task where it runs."""

from __future__ import annotations

import logging

import grpc

from heapd.plm import convert
from heapd.runtime import channels
from heapd.v1 import worker_service_pb2_grpc

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 5.0


class WorkerCanceller:
    """Sends WorkerService.CancelTask over one cached channel per worker address."""

    def __init__(self) -> None:
        self._stubs: dict[str, worker_service_pb2_grpc.WorkerServiceStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    async def cancel(self, address: str, task_id: int, attempt: int) -> bool:
        """Ask the worker to kill the attempt; False if it could not be reached (it is then
        dead or fenced, and the attempt's late result will be dropped as stale anyway)."""
        try:
            reply = await self._stub(address).CancelTask(
                convert.worker_cancel_request(task_id, attempt), timeout=CANCEL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "worker unreachable for cancel",
                extra={"fields": {"address": address, "task_id": task_id, "code": exc.code().name}},
            )
            return False
        return bool(reply.found)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()

    def _stub(self, address: str) -> worker_service_pb2_grpc.WorkerServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = channels.channel(address)
            self._channels.append(channel)
            stub = self._stubs[address] = worker_service_pb2_grpc.WorkerServiceStub(channel)
        return stub
