"""RegisterService servicer: validate → call the Register → convert back.

Who may speak for a registration: RegisterWorker answers with the registration's secret; a
Heartbeat stream's first message must carry it (checked before anything in the message is
read) and binds the stream to that worker id and epoch for good; a Deregister must carry it
too. A caller that fails is refused with PERMISSION_DENIED and counted; a stream it opened
never buries anybody.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from heapd import shm
from heapd.errors import InvalidArgument
from heapd.register import convert
from heapd.register.daemon import Register
from heapd.runtime import config, status
from heapd.runtime.server import Registration
from heapd.v1 import register_service_pb2 as pb
from heapd.v1 import register_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "heapd.v1.RegisterService"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may ask of the register (the `RegisterConfig` settings of that name)."""

    max_slots: int = config.RegisterConfig.max_slots
    max_results_per_heartbeat: int = config.RegisterConfig.max_results_per_heartbeat

    @classmethod
    def of(cls, cfg: config.RegisterConfig) -> Limits:
        """The limits a register's configuration sets."""
        return cls(cfg.max_slots, cfg.max_results_per_heartbeat)


class NotProven(Exception):
    """The caller does not prove the registration it names (PERMISSION_DENIED)."""


class Acks:
    """A Heartbeat stream's acknowledgements, cumulative: a message that defers its reply is
    counted, and the next reply acknowledges every message counted (with their results'
    figures). A reply goes out for a message that does not defer, or when the worker has
    cancels waiting: a busy worker's results cost no reply message each."""

    def __init__(self) -> None:
        self.pending = 0  # messages not yet acknowledged
        self.accepted = 0
        self.stale = 0

    def count(self, outcome: shm.CompleteOutcome) -> None:
        """One more message, whose results settled as `outcome`."""
        self.pending += 1
        self.accepted += outcome.accepted
        self.stale += outcome.stale

    def take(self) -> tuple[int, int, int]:
        """(messages, results accepted, results stale) to acknowledge now; counts restart."""
        taken = (self.pending, self.accepted, self.stale)
        self.pending = self.accepted = self.stale = 0
        return taken


class RegisterService(register_service_pb2_grpc.RegisterServiceServicer):  # type: ignore[misc]
    """Workers join, beat and leave here."""

    def __init__(self, register: Register, limits: Limits | None = None) -> None:
        self._register = register
        self._limits = limits or Limits()

    @status.unary
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterWorkerResponse:
        try:
            registration = convert.registration_from_proto(
                request, self._limits.max_slots, context.peer()
            )
        except InvalidArgument:
            self._register.refused["registration"] += 1
            raise
        info = self._register.admit(registration)
        secret = self._register.registration_secret(info.worker_id, info.epoch)
        return convert.registered_to_proto(
            info, secret, self._register.interval_s, self._register.deadline_s
        )

    async def Heartbeat(
        self,
        request_iterator: AsyncIterator[pb.HeartbeatRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        bound: tuple[int, int] | None = None  # the registration this stream proved
        acks = Acks()
        try:
            async for request in request_iterator:
                if bound is None:
                    bound = self._prove(request.worker_id, request.epoch, request.secret)
                elif (request.worker_id, request.epoch) != bound:
                    self._register.refused["rebound"] += 1
                    raise NotProven(
                        f"this Heartbeat stream belongs to worker {bound[0]} epoch {bound[1]}; "
                        f"it cannot speak for worker {request.worker_id} epoch {request.epoch}"
                    )
                self._check_size(request)
                beat = convert.beat_from_proto(request)
                acks.count(self._register.beat(beat))
                cancels = self._register.take_cancels(beat.worker_id)
                if not beat.defer_ack or cancels:
                    yield convert.beat_reply(acks.take(), cancels)
        except Exception as exc:
            code = _code_for(exc)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                bound = None  # fenced: that registration is already dead
            await context.abort(code, status.message_for(exc))
        finally:
            if bound is not None:
                self._register.stream_broken(*bound)

    @status.unary
    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterResponse:
        worker_id, epoch, secret = convert.deregister_from_proto(request)
        try:
            self._prove(worker_id, epoch, secret)
        except NotProven as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        requeued = self._register.leave(worker_id, epoch)
        return convert.deregistered_to_proto(requeued)

    def _prove(self, worker_id: int, epoch: int, secret: bytes) -> tuple[int, int]:
        """(worker_id, epoch) if `secret` is that registration's; else NotProven (counted)."""
        if not self._register.proves(worker_id, epoch, secret):
            self._register.refused["secret"] += 1
            raise NotProven(
                f"the secret does not prove registration of worker {worker_id} epoch {epoch} "
                "(send the secret that worker's RegisterWorker returned)"
            )
        return worker_id, epoch

    def _check_size(self, request: pb.HeartbeatRequest) -> None:
        """Refuse a heartbeat with too many results or started refs before reading any."""
        limit = self._limits.max_results_per_heartbeat
        completions, started = len(request.completions), len(request.started)
        if completions > limit or started > limit:
            self._register.refused["oversized"] += 1
            raise InvalidArgument(
                f"a heartbeat carries {completions} completions and {started} started refs; "
                f"at most {limit} of each (max_results_per_heartbeat)"
            )


def _code_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, NotProven):
        return grpc.StatusCode.PERMISSION_DENIED
    code = status.code_for(exc)
    if code is None:
        log.error("unexpected error in a heartbeat stream", exc_info=exc)
        return grpc.StatusCode.INTERNAL
    return code


def registration(register: Register, cfg: config.RegisterConfig | None = None) -> Registration:
    """Adds the RegisterService for `register` to a server (limits from `cfg`)."""
    limits = Limits.of(cfg) if cfg is not None else Limits()

    def add(server: grpc.aio.Server) -> None:
        register_service_pb2_grpc.add_RegisterServiceServicer_to_server(
            RegisterService(register, limits), server
        )

    return add
