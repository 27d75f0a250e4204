"""The register's side of the trust boundary (issue 10), on a real cell: the Register in-process,
its RegisterService on a real gRPC server on port 0 where the wire matters.

Registration secrets bind heartbeats and Deregister to the registration that made them; the
register fences before it acts; registrations and heartbeats are bounded; a stall of the
register's own loop does not kill workers; a delivery that never reached a worker is not the
task's loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from heapd import shm
from heapd.errors import InvalidArgument
from heapd.register import convert, service
from heapd.register.address import check_worker_address
from heapd.register.beats import Beat, Registration
from heapd.register.daemon import Register
from heapd.runtime import config, server
from heapd.v1 import register_service_pb2 as pb
from heapd.v1 import register_service_pb2_grpc, task_pb2
from heapd.worker import convert as worker_convert
from heapd.worker.daemon import Worker
from heapd.worker.jobs import JobResult
from heapd.worker.membership import HeartbeatAck, Membership
from heapd.worker.pool import Pool
from tests.helpers import eventually

ALIVE = shm.WorkerState.ALIVE
DEAD = shm.WorkerState.DEAD


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    caps = shm.Capacities(tasks=64, workers=8, arena_bytes=1 << 16, max_blob_bytes=4096)
    with shm.Cell.create(cell_name, caps) as c:
        yield c


def new_register(
    cell: shm.Cell, interval_s: float = 0.5, deadline_s: float = 30.0, grace_s: float = 1.0
) -> Register:
    return Register(cell, interval_s, deadline_s, convert.TaskOutcomes(), lease_grace_s=grace_s)


def run(cell: shm.Cell, scenario: Callable[[Register], Awaitable[None]], **kw: float) -> None:
    """Run `scenario` with a started register on `cell` (keyword arguments: `new_register`'s)."""

    async def main() -> None:
        register = new_register(cell, **kw)
        register.start()
        try:
            await scenario(register)
        finally:
            register.close()

    asyncio.run(main())


def running_task(register: Register, worker: shm.WorkerInfo, timeout_ms: int) -> tuple[int, int]:
    """Submit a task, dispatch it to `worker` and report it started: (task id, attempt)."""
    cell = register.cell
    [task_id] = cell.submit([shm.NewTask(b"spec", timeout_ms=timeout_ms)], time.time())
    [d] = cell.dispatch(1, time.time())
    assert d.worker_id == worker.worker_id
    register.beat(Beat(worker.worker_id, worker.epoch, [(task_id, d.attempt)], []))
    return task_id, d.attempt


def dead(cell: shm.Cell, worker: shm.WorkerInfo) -> Callable[[], bool]:
    """A check: `worker` has been declared dead."""
    return lambda: cell.worker(worker.worker_id).state == DEAD


def failure(message: str) -> bytes:
    f = task_pb2.Failure(kind=task_pb2.EXCEPTION, type="ValueError", message=message)
    data: bytes = task_pb2.TaskOutcome(failure=f).SerializeToString()
    return data


# ---- the wire: a real gRPC server for the register


@contextlib.asynccontextmanager
async def wire(
    register: Register, cfg: config.RegisterConfig | None = None
) -> AsyncIterator[register_service_pb2_grpc.RegisterServiceStub]:
    """The register's service on 127.0.0.1:0, and a stub connected to it."""
    grpc_server, port = await server.start(
        "127.0.0.1", 0, [service.registration(register, cfg)], [service.SERVICE_NAME]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield register_service_pb2_grpc.RegisterServiceStub(channel)
    finally:
        await grpc_server.stop(None)


async def join(
    stub: register_service_pb2_grpc.RegisterServiceStub, slots: int = 2
) -> pb.RegisterWorkerResponse:
    request = pb.RegisterWorkerRequest(address="127.0.0.1:1", slots=slots, pid=1, hostname="h")
    reply: pb.RegisterWorkerResponse = await stub.RegisterWorker(request)
    return reply


async def beat_once(
    stub: register_service_pb2_grpc.RegisterServiceStub, *requests: pb.HeartbeatRequest
) -> list[pb.HeartbeatResponse]:
    """Send `requests` on one Heartbeat stream, one at a time, each awaiting its answer."""
    call = stub.Heartbeat()
    replies = []
    try:
        for request in requests:
            await call.write(request)
            replies.append(await call.read())
    finally:
        call.cancel()
    return replies


async def refused(awaitable: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    return err.value


def completion(task_id: int, attempt: int, outcome: bytes = b"forged") -> pb.TaskCompletion:
    return pb.TaskCompletion(
        task_id=task_id, attempt=attempt, state=task_pb2.SUCCEEDED, outcome=outcome
    )


# ---- 1. registration secrets


def test_registration_returns_the_secret_and_a_heartbeat_without_it_is_refused(
    cell: shm.Cell,
) -> None:
    """Knowing a worker's public id, epoch and attempt is not enough to settle its task: the
    stream is refused before its completions are read, counted, and buries nobody."""

    async def scenario(register: Register) -> None:
        async with wire(register) as stub:
            reply = await join(stub)
            assert reply.secret == cell.registration_secret(reply.worker_id, reply.epoch)
            assert len(reply.secret) >= 16
            worker = cell.worker(reply.worker_id)
            [task_id] = cell.submit([shm.NewTask(b"spec")], time.time())
            [d] = cell.dispatch(1, time.time())
            for secret in (b"", b"\0" * len(reply.secret), reply.secret[:-1] + b"x"):
                forged = pb.HeartbeatRequest(
                    worker_id=reply.worker_id,
                    epoch=reply.epoch,
                    secret=secret,
                    completions=[completion(task_id, d.attempt)],
                )
                err = await refused(beat_once(stub, forged))
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "secret does not prove registration" in (err.details() or "")
            assert register.refused["secret"] == 3
            assert cell.get(task_id).state == shm.TaskState.DISPATCHED, "nothing settled"
            assert cell.worker(worker.worker_id).state == ALIVE, "a forged stream buries nobody"

            real = pb.HeartbeatRequest(
                worker_id=reply.worker_id,
                epoch=reply.epoch,
                secret=reply.secret,
                completions=[completion(task_id, d.attempt, b"real")],
            )
            [ack] = await beat_once(stub, real)
            assert (ack.accepted, ack.stale) == (1, 0)
            assert cell.read_result(task_id) == b"real"

    run(cell, scenario)


def test_the_secret_is_checked_before_the_completions_are_read(cell: shm.Cell) -> None:
    """A completion the boundary would refuse as malformed is never looked at for a caller
    that does not prove its registration: PERMISSION_DENIED, not INVALID_ARGUMENT."""

    async def scenario(register: Register) -> None:
        async with wire(register) as stub:
            reply = await join(stub)
            bad = pb.TaskCompletion(task_id=1, attempt=1, state=task_pb2.RUNNING)
            request = pb.HeartbeatRequest(
                worker_id=reply.worker_id, epoch=reply.epoch, completions=[bad]
            )
            err = await refused(beat_once(stub, request))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            request.secret = reply.secret
            err = await refused(beat_once(stub, request))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(cell, scenario)


def test_a_heartbeat_stream_speaks_only_for_the_registration_that_opened_it(
    cell: shm.Cell,
) -> None:
    """Worker A, having proved its own registration, names worker B in a later message of the
    same stream: refused, and B's task is untouched."""

    async def scenario(register: Register) -> None:
        async with wire(register) as stub:
            a, b = await join(stub, slots=1), await join(stub, slots=1)
            [task_id] = cell.submit([shm.NewTask(b"spec")], time.time())
            [d] = cell.dispatch(1, time.time())
            victim = a if d.worker_id == a.worker_id else b
            thief = b if victim is a else a
            opening = pb.HeartbeatRequest(
                worker_id=thief.worker_id, epoch=thief.epoch, secret=thief.secret
            )
            forged = pb.HeartbeatRequest(
                worker_id=victim.worker_id,
                epoch=victim.epoch,
                secret=thief.secret,
                completions=[completion(task_id, d.attempt)],
            )
            err = await refused(beat_once(stub, opening, forged))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert f"belongs to worker {thief.worker_id}" in (err.details() or "")
            assert register.refused["rebound"] == 1
            assert cell.get(task_id).state == shm.TaskState.DISPATCHED
            assert cell.worker(victim.worker_id).state == ALIVE

    run(cell, scenario)


def test_deregister_needs_the_secret(cell: shm.Cell) -> None:
    async def scenario(register: Register) -> None:
        async with wire(register) as stub:
            reply = await join(stub)
            forged = pb.DeregisterRequest(worker_id=reply.worker_id, epoch=reply.epoch)
            err = await refused(stub.Deregister(forged))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert cell.worker(reply.worker_id).state == ALIVE
            assert register.refused["secret"] == 1
            forged.secret = reply.secret
            await stub.Deregister(forged)
            with pytest.raises(shm.WorkerNotFound):
                cell.worker(reply.worker_id)

    run(cell, scenario)


# ---- 2. fence first, then act


def test_a_stale_report_does_not_end_the_lease_of_the_running_attempt(cell: shm.Cell) -> None:
    """Worker B reports worker A's (task, attempt): the cell fences it off, and A's lease still
    runs out (before: B's report cancelled it and the hung attempt ran forever)."""

    async def scenario(register: Register) -> None:
        a = register.admit(Registration("127.0.0.1:1", 1, 1, "a"))
        task_id, attempt = running_task(register, a, timeout_ms=50)
        b = register.admit(Registration("127.0.0.1:2", 1, 2, "b"))
        done = shm.Completion(task_id, attempt, shm.TaskState.SUCCEEDED, b"forged")
        outcome = register.beat(Beat(b.worker_id, b.epoch, [], [done]))
        assert (outcome.accepted, outcome.stale) == (0, 1)
        await eventually(lambda: cell.get(task_id).state == shm.TaskState.FAILED)
        result = task_pb2.TaskOutcome.FromString(cell.read_result(task_id) or b"")
        assert result.failure.kind == task_pb2.TIMEOUT
        assert register.take_cancels(a.worker_id) == [(task_id, attempt)]

    run(cell, scenario, grace_s=0.02)


def test_a_stale_report_does_not_rewrite_the_retry_history(cell: shm.Cell) -> None:
    """A fenced-off failure (or success) of another worker leaves the task's earlier failures
    as they were: the final failure reports exactly the attempts that ran."""

    async def scenario(register: Register) -> None:
        a = register.admit(Registration("127.0.0.1:1", 1, 1, "a"))
        b = register.admit(Registration("127.0.0.1:2", 1, 2, "b"))
        [task_id] = cell.submit([shm.NewTask(b"spec", max_retries=1)], time.time())
        [d] = cell.dispatch(1, time.time())
        owner, other = (a, b) if d.worker_id == a.worker_id else (b, a)
        first = shm.Completion(task_id, 1, shm.TaskState.FAILED, failure("first"), True)
        register.beat(Beat(owner.worker_id, owner.epoch, [(task_id, 1)], [first]))
        cell.promote_due(time.time() + 60)
        [d] = cell.dispatch(1, time.time())
        assert d.attempt == 2
        owner, other = (a, b) if d.worker_id == a.worker_id else (b, a)
        for forged in (
            shm.Completion(task_id, 2, shm.TaskState.FAILED, failure("forged"), True),
            shm.Completion(task_id, 2, shm.TaskState.SUCCEEDED, b"forged"),
        ):
            assert register.beat(Beat(other.worker_id, other.epoch, [], [forged])).stale == 1
        last = shm.Completion(task_id, 2, shm.TaskState.FAILED, failure("second"), False)
        register.beat(Beat(owner.worker_id, owner.epoch, [(task_id, 2)], [last]))
        result = task_pb2.TaskOutcome.FromString(cell.read_result(task_id) or b"")
        assert [f.message for f in result.earlier_failures] == ["first"]
        assert result.failure.message == "second"

    run(cell, scenario)


def test_deregister_with_a_stale_epoch_keeps_the_worker_deadline(cell: shm.Cell) -> None:
    """A refused Deregister changes nothing: the silent worker is still buried on time."""

    async def scenario(register: Register) -> None:
        worker = register.admit(Registration("127.0.0.1:1", 1, 1, "h"))
        with pytest.raises(shm.StaleEpoch):
            register.leave(worker.worker_id, worker.epoch + 1)
        assert cell.worker(worker.worker_id).state == ALIVE
        await eventually(lambda: cell.worker(worker.worker_id).state == DEAD)

    run(cell, scenario, interval_s=0.05, deadline_s=0.1)


# ---- 3. and 4. bounded registrations and heartbeats


@pytest.mark.parametrize(
    "address",
    [
        "unix:/tmp/heapd.sock",
        "unix:123",
        "unix-abstract:name",
        "vsock:3:5000",
        "ipv4:127.0.0.1:50051",
        "dns:///example.com:443",
        "http://example.com:80",
        "example.com",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:+80",
        ":80",
        "exa mple.com:80",
        "example.com :80",
        "example.com\n:80",
        "exa\x00mple:80",
        "bücher.de:80",
        "-bad.example:80",
        "user@example.com:80",
        "example.com:80/path",
        "::1:80",
        "[::1%eth0]:80",
        "[not-ip]:80",
        f"{'a' * 60}.{'b' * 60}.{'c' * 10}:1",  # over the 127 bytes the worker table holds
        f"{'a' * 64}.example:80",
    ],
)
def test_a_worker_address_must_be_host_and_port(address: str) -> None:
    with pytest.raises(InvalidArgument):
        check_worker_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "0.0.0.0:1",
        "[::1]:65535",
        "[::]:80",
        "worker-3.cell.example.:8080",
        "project_worker_1:50051",
        "h:1",
    ],
)
def test_a_worker_address_may_be_a_name_or_an_ip_literal(address: str) -> None:
    assert check_worker_address(address) == address


UDS_PEER = "unix:"  # what gRPC names a peer that connected over a Unix socket
SOCKET_ADDRESSES = [
    "unix:/tmp/heapd-1000/default/worker-0.sock",
    "unix:/run/user/1000/heapd/cell.a_b-c/worker-extra-12.sock",
    f"unix:/{'a' * 106}",  # 107 bytes of path: sun_path's most
]


@pytest.mark.parametrize("address", SOCKET_ADDRESSES)
def test_a_worker_of_the_host_may_announce_its_unix_socket(address: str) -> None:
    assert check_worker_address(address, UDS_PEER) == address


@pytest.mark.parametrize("address", SOCKET_ADDRESSES)
@pytest.mark.parametrize("peer", ["", "ipv4:10.0.0.7:50000", "ipv6:[::1]:50000"])
def test_a_worker_that_came_over_tcp_may_not_announce_a_unix_socket(
    address: str, peer: str
) -> None:
    with pytest.raises(InvalidArgument, match="only from a worker that registers over"):
        check_worker_address(address, peer)


@pytest.mark.parametrize(
    "address",
    [
        "unix:",
        "unix:/",
        "unix:relative/worker.sock",
        "unix://host/worker.sock",
        "unix:/tmp//worker.sock",
        "unix:/tmp/worker.sock/",
        "unix:/tmp/../etc/worker.sock",
        "unix:/tmp/./worker.sock",
        "unix:/tmp/a b.sock",
        "unix:/tmp/a\x00b.sock",
        "unix:/tmp/a%2Fb.sock",
        "unix:/tmp/a?b.sock",
        "unix:/tmp/a#b.sock",
        "unix:/tmp/bücher.sock",
        f"unix:/{'a' * 107}",  # over sun_path
        f"unix:/{'a/' * 62}b",  # over what the worker table holds
        "unix-abstract:heapd",
    ],
)
def test_a_unix_address_must_be_an_absolute_plain_path(address: str) -> None:
    with pytest.raises(InvalidArgument):
        check_worker_address(address, UDS_PEER)


def test_a_unix_address_is_taken_only_over_the_registers_socket(
    cell: shm.Cell, tmp_path: Path
) -> None:
    """The peer gRPC names decides: the same request is refused over TCP, taken over the
    register's Unix socket."""
    path = str(tmp_path / "register.sock")
    announced = f"unix:{tmp_path}/worker-0.sock"
    request = pb.RegisterWorkerRequest(address=announced, slots=1, pid=1, hostname="h")

    async def scenario(register: Register) -> None:
        grpc_server, port = await server.start(
            "127.0.0.1", 0, [service.registration(register)], [service.SERVICE_NAME], socket=path
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as tcp:
                stub = register_service_pb2_grpc.RegisterServiceStub(tcp)
                err = await refused(stub.RegisterWorker(request))
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "Unix socket" in (err.details() or "")
            async with grpc.aio.insecure_channel(f"unix:{path}") as uds:
                stub = register_service_pb2_grpc.RegisterServiceStub(uds)
                reply = await stub.RegisterWorker(request)
        finally:
            await grpc_server.stop(None)
        assert [w.address for w in cell.workers()] == [announced]
        assert cell.worker(reply.worker_id).address == announced
        assert register.refused["registration"] == 1

    run(cell, scenario)


def test_slots_are_capped_by_a_setting(cell: shm.Cell) -> None:
    assert config.RegisterConfig().max_slots == 1024
    cap = config.RegisterConfig().max_slots
    request = pb.RegisterWorkerRequest(address="h:1", slots=cap)
    assert convert.registration_from_proto(request).slots == cap
    request.slots = cap + 1
    with pytest.raises(InvalidArgument, match=f"between 1 and {cap} \\(max_slots\\)"):
        convert.registration_from_proto(request)

    async def scenario(register: Register) -> None:
        async with wire(register, config.RegisterConfig(max_slots=4)) as stub:
            assert (await join(stub, slots=4)).worker_id
            err = await refused(join(stub, slots=5))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_slots" in (err.details() or "")
            bad = pb.RegisterWorkerRequest(address="unix:/tmp/x", slots=1)
            err = await refused(stub.RegisterWorker(bad))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert register.refused["registration"] == 2
            assert len(cell.workers()) == 1

    run(cell, scenario)


def test_a_heartbeat_over_the_result_limit_is_refused_before_any_is_applied(
    cell: shm.Cell,
) -> None:
    async def scenario(register: Register) -> None:
        cfg = config.RegisterConfig(max_results_per_heartbeat=3)
        async with wire(register, cfg) as stub:
            ids = cell.submit([shm.NewTask(b"spec") for _ in range(4)], time.time())

            async def send(n: int, field: str) -> pb.HeartbeatResponse:
                """A new worker is sent n tasks and reports them all in one heartbeat."""
                reply = await join(stub, slots=8)
                sent = cell.dispatch(n, time.time())
                if field == "started":
                    reports = [pb.TaskRef(task_id=d.task_id, attempt=d.attempt) for d in sent]
                else:
                    reports = [completion(d.task_id, d.attempt) for d in sent]
                request = pb.HeartbeatRequest(
                    worker_id=reply.worker_id, epoch=reply.epoch, secret=reply.secret
                )
                getattr(request, field).extend(reports)
                try:
                    [ack] = await beat_once(stub, request)
                finally:  # the stream ended: its worker is buried, its tasks requeued
                    await eventually(lambda: cell.worker(reply.worker_id).state == DEAD)
                return ack

            for field in ("started", "completions"):
                err = await refused(send(4, field))
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "at most 3 of each (max_results_per_heartbeat)" in (err.details() or "")
                assert {cell.get(i).state for i in ids} == {shm.TaskState.QUEUED}, "none applied"
            assert register.refused["oversized"] == 2
            ack = await send(3, "completions")
            assert ack.accepted == 3, "the limit itself is accepted"

    run(cell, scenario)


# ---- 5. the register's own stalls


def test_a_deadline_that_passes_while_the_register_is_stalled_waits_one_more_interval(
    cell: shm.Cell,
) -> None:
    """The loop is stuck past the worker's deadline while its beats queue up unread; when it
    runs again the deadline timer fires first. The worker gets one more interval, in which its
    queued beat is read; a worker that then stays silent is still buried."""

    async def scenario(register: Register) -> None:
        worker = register.admit(Registration("127.0.0.1:1", 1, 1, "h"))
        time.sleep(register.deadline_s * 1.5)  # the register's loop stalls (the test holds it)
        await eventually(lambda: register.reprieves == 1, interval_s=0.001)
        assert cell.worker(worker.worker_id).state == ALIVE
        register.beat(Beat(worker.worker_id, worker.epoch, [], []))  # the beat read late
        assert register.loop_stalls == 1
        await eventually(lambda: cell.worker(worker.worker_id).state == DEAD)
        assert register.worker_losses["deadline"] == 1

    run(cell, scenario, interval_s=0.2, deadline_s=0.4)


def test_a_stall_that_ends_just_before_a_deadline_also_gives_one_more_interval(
    cell: shm.Cell,
) -> None:
    """The stall ends before the deadline timer is due, but too close to it for the queued
    beats to be read first: the stall is noticed all the same."""

    async def scenario(register: Register) -> None:
        worker = register.admit(Registration("127.0.0.1:1", 1, 1, "h"))
        time.sleep(register.deadline_s - register.interval_s / 4)
        await eventually(lambda: register.reprieves == 1, interval_s=0.001)
        assert cell.worker(worker.worker_id).state == ALIVE
        register.beat(Beat(worker.worker_id, worker.epoch, [], []))
        await eventually(lambda: cell.worker(worker.worker_id).state == DEAD)

    run(cell, scenario, interval_s=0.2, deadline_s=0.8)


def test_a_deadline_rechecks_the_last_heartbeat_in_the_cell(cell: shm.Cell) -> None:
    """A beat recorded in the cell but not through this register's timer (an earlier register
    applied it) re-arms the deadline instead of burying the worker. Two workers' timers are
    armed alike, the first one first: when the second is buried, the first's timer has fired."""

    async def scenario(register: Register) -> None:
        beaten = register.admit(Registration("127.0.0.1:1", 1, 1, "beaten"))
        silent = register.admit(Registration("127.0.0.1:2", 1, 2, "silent"))
        now = time.time()
        cell.heartbeat(beaten.worker_id, beaten.epoch, now, now + 60)
        await eventually(dead(cell, silent))
        assert cell.worker(beaten.worker_id).state == ALIVE

    run(cell, scenario, interval_s=0.05, deadline_s=0.1)


# ---- 6. deliveries that never reached a worker


def test_a_worker_that_registers_and_never_answers_does_not_fail_queued_tasks(
    cell: shm.Cell,
) -> None:
    """Worker after worker registers, is sent the queue, and never says a word: each is buried
    on its deadline and the tasks go back without a loss, more times than the poison-task cap
    allows; a real worker then runs them."""

    async def scenario(register: Register) -> None:
        ids = cell.submit([shm.NewTask(b"spec") for _ in range(3)], time.time())
        for _ in range(shm.MAX_WORKER_LOSSES + 2):
            rogue = register.admit(Registration("127.0.0.1:1", 3, 1, "rogue"))
            assert len(cell.dispatch(3, time.time())) == 3
            await eventually(dead(cell, rogue))
            assert {cell.get(i).state for i in ids} == {shm.TaskState.QUEUED}
        worker = register.admit(Registration("127.0.0.1:2", 3, 2, "real"))
        sent = cell.dispatch(3, time.time())
        done = [shm.Completion(d.task_id, d.attempt, shm.TaskState.SUCCEEDED, b"") for d in sent]
        register.beat(Beat(worker.worker_id, worker.epoch, [], done))
        assert {cell.get(i).state for i in ids} == {shm.TaskState.SUCCEEDED}
        assert cell.check() == []

    run(cell, scenario, interval_s=0.02, deadline_s=0.05)


def test_running_attempts_and_broken_streams_still_count_toward_the_poison_cap(
    cell: shm.Cell,
) -> None:
    """What does count a loss: an attempt the worker reported started, on any death; and any
    attempt on a worker whose open stream broke (a task that kills its worker at once, before
    its start is reported, must still reach the cap)."""

    async def scenario(register: Register) -> None:
        [started] = cell.submit([shm.NewTask(b"started")], time.time())
        for loss in range(shm.MAX_WORKER_LOSSES + 1):
            worker = register.admit(Registration("127.0.0.1:1", 1, 1, "w"))
            [d] = cell.dispatch(1, time.time())
            register.beat(Beat(worker.worker_id, worker.epoch, [(started, d.attempt)], []))
            await eventually(dead(cell, worker))
            failed = loss == shm.MAX_WORKER_LOSSES
            assert cell.get(started).state == (
                shm.TaskState.FAILED if failed else shm.TaskState.QUEUED
            )
        [killer] = cell.submit([shm.NewTask(b"kills its worker")], time.time())
        for _ in range(shm.MAX_WORKER_LOSSES + 1):
            worker = register.admit(Registration("127.0.0.1:1", 1, 1, "w"))
            assert cell.dispatch(1, time.time())[0].task_id == killer
            register.stream_broken(worker.worker_id, worker.epoch)
        result = task_pb2.TaskOutcome.FromString(cell.read_result(killer) or b"")
        assert result.failure.kind == task_pb2.WORKER_LOST

    run(cell, scenario, interval_s=0.02, deadline_s=0.05)


# ---- the worker's side: it keeps its registration's secret, and starts nothing before the
# register holds its stream


def test_the_worker_sends_its_registration_secret_on_heartbeats_and_deregister() -> None:
    reply = pb.RegisterWorkerResponse(
        worker_id=7, epoch=3, heartbeat_interval_s=0.5, deadline_s=2.0, secret=b"s" * 16
    )
    member = worker_convert.membership_from_proto(reply)
    assert member.secret == b"s" * 16
    assert "secret" not in repr(member)
    assert worker_convert.heartbeat_request(member, [], [], 0).secret == b"s" * 16
    assert worker_convert.deregister_request(member).secret == b"s" * 16


class HeldCall:
    """One heartbeat stream of `HeldRegister`: each beat is answered once `answer` is set."""

    def __init__(self, register: HeldRegister) -> None:
        self._register = register
        self._sent: asyncio.Queue[None] = asyncio.Queue()

    async def send(
        self,
        member: Membership,
        started: Sequence[tuple[int, int]],
        results: Sequence[JobResult],
        running: int,
        draining: bool,
        defer_ack: bool = False,
    ) -> None:
        self._register.sent.append(member)
        self._sent.put_nowait(None)

    async def acks(self) -> AsyncIterator[HeartbeatAck]:
        while True:
            await self._sent.get()
            await self._register.answer.wait()
            if self._register.deny:
                self._register.deny = False
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    "the secret does not prove registration",
                )
            yield HeartbeatAck(stale=0, cancel=())

    def cancel(self) -> None:
        pass


class HeldRegister:
    """Grants a membership at once (a new epoch each time), answers heartbeats only once
    `answer` is set; with `deny`, refuses the first stream's secret."""

    address = "held-register"

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.deny = False
        self.sent: list[Membership] = []
        self.joins = 0

    async def join(
        self, address: str, slots: int, pid: int, hostname: str, timeout_s: float
    ) -> Membership:
        self.joins += 1
        return Membership(7, self.joins, 0.05, 1.0, bytes([self.joins]) * 16)

    async def leave(self, member: Membership, timeout_s: float) -> None:
        pass

    def heartbeat(self) -> HeldCall:
        return HeldCall(self)


@pytest.fixture
def pool() -> Iterator[Pool]:
    started = Pool(1)
    started.start()
    try:
        yield started
    finally:
        started.close()


def test_a_worker_takes_no_task_before_the_register_answered_its_heartbeat(pool: Pool) -> None:
    """Until then the register might not learn that the worker died: a task that kills its
    worker at once would not count a loss. The assignment waits (it is not refused)."""

    async def main() -> None:
        register = HeldRegister()
        worker = Worker(pool, register, slots=1, register_timeout_s=5.0)
        running = asyncio.create_task(worker.run("127.0.0.1:1"))
        await eventually(lambda: register.sent, interval_s=0.001)
        assert worker.member is not None and worker.member.epoch == 1
        judged = asyncio.create_task(worker.refusal(7, 1))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not judged.done(), "judged before the register answered a heartbeat"
        register.answer.set()
        assert await judged is None
        assert register.sent[0].secret == bytes([1]) * 16
        worker.shutdown()
        assert await running == 0

    asyncio.run(main())


def test_a_worker_whose_secret_is_refused_registers_again(pool: Pool) -> None:
    """PERMISSION_DENIED on its stream (a new cell, whose key does not prove the old
    registration) fences the worker out like a stale epoch: it registers anew."""

    async def main() -> None:
        register = HeldRegister()
        register.deny = True
        register.answer.set()
        worker = Worker(pool, register, slots=1, register_timeout_s=5.0)
        running = asyncio.create_task(worker.run("127.0.0.1:1"))
        await eventually(lambda: worker.member is not None and worker.member.epoch == 2)
        assert await worker.refusal(7, 2) is None
        worker.shutdown()
        assert await running == 0

    asyncio.run(main())
