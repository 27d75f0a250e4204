"""The worker at the trust boundary: what it accepts over WorkerService, what it sends back.

- CancelTask names one attempt (0 is refused, not "every attempt"), and the cancelled attempt is
  reported on the next heartbeat, so its task never stays RUNNING until the worker dies.
- Results are capped at the source: a Python value over `max_result_bytes` is a BAD_RESULT
  naming the limit; command output is truncated with a marker; a heartbeat never carries more
  than it can send.
- A command no host could start, and user code raising SystemExit or KeyboardInterrupt (while
  its payload loads, or when called), fail the task; the pool child survives them.
"""

from __future__ import annotations

import asyncio
import math
import pickle
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import cloudpickle
import grpc
import pytest

from heapd import convert as client_convert
from heapd.errors import FailureInfo, FailureKind, InvalidArgument
from heapd.results import CommandResult
from heapd.runtime import channels, server
from heapd.runtime.security import RoleSecurity
from heapd.security import Security
from heapd.v1 import task_pb2, worker_service_pb2, worker_service_pb2_grpc
from heapd.worker import convert, heartbeats, service
from heapd.worker.child import execute
from heapd.worker.daemon import Worker
from heapd.worker.execute import ENVELOPE_BYTES
from heapd.worker.heartbeats import HeartbeatLink
from heapd.worker.jobs import Job, JobResult
from heapd.worker.membership import Membership
from heapd.worker.pool import Pool
from tests import tasks_for_worker as t
from tests.test_worker_daemon import WORKER_ADDRESS, FakeRegister

GUARD_S = 60.0  # only bounds a test that would otherwise hang; nothing waits for it
LIMIT = 4096  # a small max_result_bytes, so that tests move little data


def outcome_of(data: bytes) -> Any:
    """The result an encoded outcome carries, as the client reads it."""
    outcome = client_convert.outcome_from_bytes(data)
    assert outcome is not None
    return outcome.result


def failure_in(result: JobResult) -> FailureInfo:
    failure = outcome_of(result.outcome)
    assert isinstance(failure, FailureInfo), failure
    return failure


def python_job(task_id: int, fn: Callable[..., object], *args: object) -> Job:
    return Job(task_id, 1, client_convert.python_spec(fn, args).SerializeToString())


def spec_job(task_id: int, spec: task_pb2.TaskSpec) -> Job:
    return Job(task_id, 1, spec.SerializeToString())


# --- a pool on a loop, recording what it reports


class Reports:
    """What a bound pool reported; `until` waits on its callbacks (no polling)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.results: dict[int, JobResult] = {}
        self._changed = asyncio.Event()
        pool.bind(asyncio.get_running_loop(), lambda refs: None, self._on_results)

    def _on_results(self, results: list[JobResult]) -> None:
        self.results.update((r.task_id, r) for r in results)
        self._changed.set()

    async def of(self, *task_ids: int) -> list[JobResult]:
        async with asyncio.timeout(GUARD_S):
            while not set(task_ids) <= set(self.results):
                self._changed.clear()
                await self._changed.wait()
        return [self.results[i] for i in task_ids]


def run_with_pool(body: Callable[[Reports], Awaitable[None]], **pool_args: Any) -> None:
    pool = Pool(1, **pool_args)
    pool.start()

    async def main() -> None:
        try:
            await body(Reports(pool))
        finally:
            pool.close()

    try:
        asyncio.run(main())
    finally:
        pool.close()


# --- CancelTask, Drain and AssignTasks over gRPC


@pytest.fixture
def pool() -> Iterator[Pool]:
    started = Pool(1)
    started.start()
    try:
        yield started
    finally:
        started.close()


def aborted(call: Awaitable[object]) -> Awaitable[grpc.aio.AioRpcError]:
    async def run() -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        return failed.value

    return run()


def test_cancel_names_one_attempt_and_the_cancelled_attempt_is_reported(pool: Pool) -> None:
    async def main() -> None:
        register = FakeRegister()
        worker = Worker(pool, register, 1, register_timeout_s=30.0)
        running = asyncio.create_task(worker.run(WORKER_ADDRESS))
        sec = RoleSecurity(token=Security.from_env().token)
        grpc_server, port = await server.start(
            "127.0.0.1", 0, [service.registration(worker)], [service.SERVICE_NAME], sec
        )
        address = f"127.0.0.1:{port}"
        try:
            async with (
                asyncio.timeout(GUARD_S),
                channels.channel(address, Security.from_env()) as channel,
                channels.channel(address, Security(token=None)) as anonymous,
            ):
                stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
                await register.until(lambda: worker.member is not None)
                worker.assign([python_job(1, t.hang)])
                await register.until(lambda: (1, 1) in register.started())

                def cancel(task_id: int, attempt: int) -> Any:
                    request = worker_service_pb2.WorkerCancelRequest(
                        task_id=task_id, attempt=attempt
                    )
                    return stub.CancelTask(request)

                for task_id, attempt, named in ((1, 0, "attempt"), (0, 1, "task_id")):
                    error = await aborted(cancel(task_id, attempt))
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert f"{named} must be" in (error.details() or "")
                assert pool.running == 1, "a refused cancel kills nothing"

                # Drain and CancelTask are behind the cell's token.
                bare = worker_service_pb2_grpc.WorkerServiceStub(anonymous)
                for call in (
                    bare.CancelTask(worker_service_pb2.WorkerCancelRequest(task_id=1, attempt=1)),
                    bare.Drain(worker_service_pb2.DrainRequest()),
                ):
                    assert (await aborted(call)).code() == grpc.StatusCode.UNAUTHENTICATED
                assert pool.running == 1

                assert (await cancel(1, 1)).found
                await register.until(lambda: any(r.task_id == 1 for r in register.results()))
                [report] = register.results()
                assert (report.task_id, report.attempt) == (1, 1)
                assert not report.succeeded and not report.retryable
                assert failure_in(report).kind == FailureKind.CANCELLED_BY_USER
                assert not (await cancel(1, 1)).found, "gone: nothing more to report"

                await stub.Drain(worker_service_pb2.DrainRequest())
                assert await running == 0
                assert [r.task_id for r in register.results()] == [1], "reported once"
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await grpc_server.stop(None)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("task", "named"),
    [
        (worker_service_pb2.Assignment(task_id=1, attempt=0), "attempt must be"),
        (worker_service_pb2.Assignment(task_id=0, attempt=1), "task_id must be"),
        (worker_service_pb2.Assignment(task_id=1, attempt=1, timeout_s=math.nan), "timeout_s"),
        (worker_service_pb2.Assignment(task_id=1, attempt=1, timeout_s=-1.0), "timeout_s"),
        (worker_service_pb2.Assignment(task_id=1, attempt=1, timeout_s=math.inf), "timeout_s"),
    ],
)
def test_an_assignment_naming_no_attempt_or_a_bad_timeout_is_refused(
    task: worker_service_pb2.Assignment, named: str
) -> None:
    """Checked before anything is queued (the servicer's check, without a server)."""
    request = worker_service_pb2.AssignTasksRequest(worker_id=5, epoch=1, tasks=[task])
    with pytest.raises(InvalidArgument, match=named):
        service.checked(convert.assignment_from_proto(request))
    revoke = worker_service_pb2.AssignTasksRequest(
        worker_id=5, epoch=1, revoke=[worker_service_pb2.AssignmentRef(task_id=1, attempt=0)]
    )
    with pytest.raises(InvalidArgument, match="revoke: attempt must be"):
        service.checked(convert.assignment_from_proto(revoke))


# --- results capped at the source


def test_a_value_over_the_limit_is_a_bad_result_naming_it_and_one_at_the_edge_passes() -> None:
    budget = LIMIT - ENVELOPE_BYTES
    overhead = len(pickle.dumps(b"x" * budget, protocol=5)) - budget  # the same framing
    at_edge = b"x" * (budget - overhead)
    assert len(pickle.dumps(at_edge, protocol=5)) == budget
    fits = execute(client_convert.python_spec(bytes, (at_edge,)).SerializeToString(), LIMIT)
    assert fits.succeeded and len(fits.outcome) <= LIMIT
    assert pickle.loads(outcome_of(fits.outcome)) == at_edge

    over = execute(client_convert.python_spec(bytes, (at_edge + b"x",)).SerializeToString(), LIMIT)
    assert not over.succeeded and not over.retryable, "the same code returns the same value"
    failure = outcome_of(over.outcome)
    assert isinstance(failure, FailureInfo) and failure.kind == FailureKind.BAD_RESULT
    assert f"limit of {LIMIT} bytes" in failure.message and "max_result_bytes" in failure.message
    assert len(over.outcome) <= LIMIT


def test_command_output_over_the_limit_is_truncated_with_a_marker() -> None:
    big, small = 100_000, 10
    script = f"head -c {big} /dev/zero; printf '%{small}s' '' >&2; exit 3"
    done = execute(client_convert.command_spec(["sh", "-c", script]).SerializeToString(), LIMIT)
    assert done.succeeded and len(done.outcome) <= LIMIT
    result = outcome_of(done.outcome)
    assert isinstance(result, CommandResult) and result.returncode == 3
    assert result.stderr == b" " * small, "a small stream is kept whole"
    head, marker = result.stdout.split(b"\n")
    assert head == b"\0" * len(head) and len(head) > LIMIT // 2
    assert marker.decode() == f"… [truncated {big - len(head)} bytes]"


def test_a_failure_too_large_keeps_its_type_and_the_end_of_its_traceback() -> None:
    spec = client_convert.python_spec(t.fail, ("ValueError", "why " * 50_000))
    done = execute(spec.SerializeToString(), LIMIT)
    assert not done.succeeded and done.retryable, "still the task's own exception"
    assert len(done.outcome) <= LIMIT
    failure = outcome_of(done.outcome)
    assert isinstance(failure, FailureInfo) and failure.kind == FailureKind.EXCEPTION
    assert failure.type_name == "builtins.ValueError"
    assert failure.message.startswith("why why") and "[truncated" in failure.message
    assert failure.traceback.startswith("[truncated") and "why" in failure.traceback


def test_the_pool_caps_results_at_its_max_result_bytes() -> None:
    async def body(reports: Reports) -> None:
        reports.pool.submit([python_job(1, bytes, 2 * LIMIT), python_job(2, t.add, 2)])
        too_big, fine = await reports.of(1, 2)
        assert failure_in(too_big).kind == FailureKind.BAD_RESULT
        assert f"limit of {LIMIT} bytes" in failure_in(too_big).message
        assert fine.succeeded

    run_with_pool(body, max_result_bytes=LIMIT)


@pytest.mark.parametrize("size", [0, 1023, 2**40])
def test_a_pool_refuses_a_max_result_bytes_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match="max_result_bytes"):
        Pool(1, max_result_bytes=size)


def result(task_id: int, size: int) -> JobResult:
    return JobResult(task_id, 1, True, False, b"r" * size)


def test_a_backlog_goes_out_over_heartbeats_that_each_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many results at once (or a broken stream's unacknowledged ones) are split by size and
    count, sent back to back, each once and in order."""
    monkeypatch.setattr(heartbeats, "BEAT_RESULT_BYTES", 2500)
    monkeypatch.setattr(heartbeats, "BEAT_RESULTS", 3)
    sizes = [1000, 1000, 1000, 10, 10, 10, 10, 3000, 1]

    async def main() -> None:
        register = FakeRegister()
        member = Membership(worker_id=5, epoch=1, interval_s=60.0, deadline_s=120.0)
        link = HeartbeatLink(member, lambda: 0, lambda: False, lambda: False, lambda t, a: None)
        link.finished([result(i, size) for i, size in enumerate(sizes)])
        stream = asyncio.create_task(link.run(register))
        try:
            async with asyncio.timeout(GUARD_S):
                await link.flush()  # every result acknowledged; the beat interval is a minute
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
        beats = [[len(r.outcome) for r in beat.results] for beat in register.beats]
        beats = [beat for beat in beats if beat]
        assert beats == [[1000, 1000], [1000, 10, 10], [10, 10], [3000], [1]]
        assert [r.task_id for r in register.results()] == list(range(len(sizes)))

    asyncio.run(main())


# --- bad command specs, and user code that raises SystemExit or KeyboardInterrupt


def command(argv: list[str], env: dict[str, str] | None = None, cwd: str = "") -> task_pb2.TaskSpec:
    """A command spec as the wire carries it (no client-side check in the way)."""
    return task_pb2.TaskSpec(command=task_pb2.CommandCall(argv=argv, env=env or {}, cwd=cwd))


BAD_COMMANDS = [
    (command(["echo", "a\0b"]), "argv[1] contains a NUL byte"),
    (command(["echo"], env={"A=B": "1"}), "env name 'A=B' is not valid"),
    (command(["echo"], env={"": "1"}), "env name '' is not valid"),
    (command(["echo"], env={"A\0": "1"}), "env name 'A\\x00' is not valid"),
    (command(["echo"], env={"A": "1\0"}), "env value of 'A' contains a NUL byte"),
    (command(["echo"], cwd="/tmp\0x"), "cwd contains a NUL byte"),
]


@pytest.mark.parametrize(("spec", "reason"), BAD_COMMANDS)
def test_a_command_no_host_could_start_is_a_bad_task(spec: task_pb2.TaskSpec, reason: str) -> None:
    done = execute(spec.SerializeToString())
    assert not done.succeeded and not done.retryable
    failure = outcome_of(done.outcome)
    assert isinstance(failure, FailureInfo) and failure.kind == FailureKind.BAD_TASK
    assert reason in failure.message


def payload_raising(exc: type[BaseException]) -> bytes:
    """Pickled bytes whose loading raises `exc` (both pickled by value: local definitions)."""

    def boom() -> None:
        raise exc("raised while loading")

    class Loads:
        def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
            return boom, ()

    data: bytes = cloudpickle.dumps(Loads())
    return data


def raising(exc: type[BaseException]) -> Callable[[], None]:
    def task() -> None:
        raise exc("raised by the task")

    return task


def test_user_code_exiting_or_interrupting_fails_the_task_not_the_child() -> None:
    call_exits = task_pb2.TaskSpec(
        python=task_pb2.PythonCall(pickled_callable=payload_raising(SystemExit))
    )
    args_interrupt = client_convert.python_spec(t.add, (1,))
    args_interrupt.python.pickled_args = payload_raising(KeyboardInterrupt)
    jobs = [
        spec_job(1, call_exits),
        spec_job(2, args_interrupt),
        python_job(3, raising(KeyboardInterrupt)),
        python_job(4, raising(SystemExit)),
        *(spec_job(10 + i, spec) for i, (spec, _) in enumerate(BAD_COMMANDS)),
        python_job(99, t.add, 2),
    ]

    async def body(reports: Reports) -> None:
        pid = reports.pool.pids
        reports.pool.submit(jobs)
        results = await reports.of(*(job.task_id for job in jobs))
        kinds = {r.task_id: failure_in(r).kind for r in results if not r.succeeded}
        assert kinds == {
            1: FailureKind.BAD_TASK,
            2: FailureKind.BAD_TASK,
            3: FailureKind.EXCEPTION,
            4: FailureKind.EXCEPTION,
            **{10 + i: FailureKind.BAD_TASK for i in range(len(BAD_COMMANDS))},
        }
        assert "cannot unpickle the callable: SystemExit" in failure_in(results[0]).message
        assert "cannot unpickle the arguments: KeyboardInterrupt" in failure_in(results[1]).message
        assert failure_in(results[2]).type_name == "builtins.KeyboardInterrupt"
        assert pickle.loads(outcome_of(results[-1].outcome)) == 2
        assert (reports.pool.pids, reports.pool.respawns) == (pid, 0), "the child survived all"

    run_with_pool(body)
