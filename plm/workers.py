"""The PLM's calls to workers: killing a cancelled task where it runs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc

from heapd.runtime import channels
from heapd.security import Security

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 5.0

# WorkerService.CancelTask on a channel (`heapd.plm.convert.cancel_on_worker`): (channel, task id,
# attempt, timeout) -> whether the worker held the attempt; grpc.aio.AioRpcError if it failed.
CancelCall = Callable[[grpc.aio.Channel, int, int, float], Awaitable[bool]]


class WorkerCanceller:
    """Sends WorkerService.CancelTask over one cached channel per worker address."""

    def __init__(self, call: CancelCall, security: Security | None = None) -> None:
        self._call = call
        self._security = security
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def cancel(self, address: str, task_id: int, attempt: int) -> bool:
        """Ask the worker to kill the attempt; False if it could not be reached (it is then
        dead or fenced, and the attempt's late result will be dropped as stale anyway)."""
        try:
            return await self._call(self._channel(address), task_id, attempt, CANCEL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "worker unreachable for cancel",
                extra={"fields": {"address": address, "task_id": task_id, "code": exc.code().name}},
            )
            return False

    async def close(self) -> None:
        """Close every channel."""
        opened = list(self._channels.values())
        self._channels.clear()
        for channel in opened:
            await channel.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = channels.channel(address, self._security)
        return channel
