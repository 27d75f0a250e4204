"""RegisterService servicer: validate → call the Register → convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from heapd.register import convert
from heapd.register.daemon import Register
from heapd.runtime import status
from heapd.runtime.server import Registration
from heapd.v1 import register_service_pb2 as pb
from heapd.v1 import register_service_pb2_grpc

SERVICE_NAME = "heapd.v1.RegisterService"


class RegisterService(register_service_pb2_grpc.RegisterServiceServicer):  # type: ignore[misc]
    """Workers join, beat and leave here."""

    def __init__(self, register: Register) -> None:
        self._register = register

    @status.unary
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterWorkerResponse:
        info = self._register.admit(convert.registration_from_proto(request))
        return convert.registered_to_proto(
            info, self._register.interval_s, self._register.deadline_s
        )

    async def Heartbeat(
        self,
        request_iterator: AsyncIterator[pb.HeartbeatRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        worker: tuple[int, int] | None = None
        try:
            async for request in request_iterator:
                beat = convert.beat_from_proto(request)
                worker = (beat.worker_id, beat.epoch)
                outcome = self._register.beat(beat)
                yield convert.beat_reply(outcome, self._register.take_cancels(beat.worker_id))
        except Exception as exc:
            code = status.code_for(exc) or grpc.StatusCode.INTERNAL
            worker = None if code == grpc.StatusCode.FAILED_PRECONDITION else worker
            await context.abort(code, status.message_for(exc))
        finally:
            if worker is not None:
                self._register.stream_broken(*worker)

    @status.unary
    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterResponse:
        requeued = self._register.leave(*convert.deregister_from_proto(request))
        return convert.deregistered_to_proto(requeued)


def registration(register: Register) -> Registration:
    """Adds the RegisterService for `register` to a server."""

    def add(server: grpc.aio.Server) -> None:
        register_service_pb2_grpc.add_RegisterServiceServicer_to_server(
            RegisterService(register), server
        )

    return add
