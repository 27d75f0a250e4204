"""End to end: a real cell (`heapd up`: PLM, scheduler, register, workers as processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from heapd import AsyncClient, Client, CommandResult, InvalidArgument
from heapd.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from heapd.worker.builtins import cpu
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import (
    MARK,
    assert_eventually,
    authed_channel,
    gated_command,
    is_running,
    json_lines,
    log_events,
    marked_processes,
    parent_of,
    release_gate,
    shm_entries,
)

# One task per slot (strict dispatch): which task a worker holds, and in what order queued
# tasks start, is then exact.
ONE_TASK_PER_SLOT = ("--prefetch-per-slot", "1")


def test_thousand_mixed_tasks_on_three_workers(start_cell: StartCell) -> None:
    cell = start_cell(workers=3, slots=2)
    with Client(cell.address) as client:
        squares = client.map(t.square, range(700))
        adds = [client.submit(t.add, i, b=1) for i in range(100)]
        lambdas = client.map(lambda x: x * 3, range(100))  # cloudpickled callable
        refs = [client.submit("tests.tasks_for_tests:square", i) for i in range(50)]
        commands = [client.submit_command(["sh", "-c", f"echo {i}"]) for i in range(25)]
        sleeps = [client.submit_builtin("sleep", seconds=0.01) for _ in range(20)]
        cpus = [client.submit_builtin("cpu", steps=3, size=32) for _ in range(5)]
        assert client.gather(squares, timeout=120) == [i * i for i in range(700)]
        assert client.gather(adds, timeout=60) == [i + 1 for i in range(100)]
        assert client.gather(lambdas, timeout=60) == [i * 3 for i in range(100)]
        assert client.gather(refs, timeout=60) == [i * i for i in range(50)]
        outputs = client.gather(commands, timeout=60)
        assert [r.stdout for r in outputs] == [f"{i}\n".encode() for i in range(25)]
        assert all(r.returncode == 0 for r in outputs)
        assert client.gather(sleeps, timeout=60) == [0.01] * 20
        assert client.gather(cpus, timeout=60) == [cpu(steps=3, size=32)] * 5  # deterministic
        status = client.cluster_status()
    assert len(status.workers) == 3
    assert sum(w.tasks_done for w in status.workers) == 1000
    assert all(w.tasks_done > 0 for w in status.workers), "every worker took work"


def test_late_high_priority_tasks_overtake_queued_low_ones(
    start_cell: StartCell, tmp_path: Path
) -> None:
    """While the only slot is busy, 10 low-priority tasks queue, then 4 high-priority ones:
    once the slot is free the high ones run first, then the low ones, each in submission order
    (BENCHMARKS.md W7: no low task starts after a high one was queued)."""
    cell = start_cell(workers=1, slots=1, extra_args=ONE_TASK_PER_SLOT)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Client(cell.address) as client:
        busy = client.submit_command(gated_command(gate))
        assert_eventually(lambda: client.get_task(busy.task_id).state == "RUNNING")
        low = [client.submit(t.sleep_and_tag, f"low{i}", 0.01, priority="low") for i in range(10)]
        high = [client.submit(t.sleep_and_tag, f"high{i}", 0.01, priority="high") for i in range(4)]
        assert client.cluster_status().queued == 14, "all wait behind the busy slot"
        assert_eventually(lambda: release_gate(gate))
        assert busy.result(timeout=30) == CommandResult(0, b"", b"")
        finished = dict(client.gather(low + high, timeout=60))
    # One slot: the tasks ran one after the other, so their end times give their order.
    assert sorted(finished, key=finished.__getitem__) == [f"high{i}" for i in range(4)] + [
        f"low{i}" for i in range(10)
    ]


def test_command_exit_code_and_output(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        result = client.submit_command(
            ["sh", "-c", "read x; echo out:$x:$FOO; echo err >&2; exit 3"],
            env={"FOO": "bar"},
            stdin="in\n",
        ).result(timeout=30)
    assert isinstance(result, CommandResult)
    assert result.returncode == 3
    assert result.stdout == b"out:in:bar\n"
    assert result.stderr == b"err\n"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "heapd",
            "submit",
            "--address",
            cell.address,
            "--",
            "sh",
            "-c",
            "echo hi; exit 5",
        ],
        capture_output=True,
        timeout=60,
    )
    assert cli.returncode == 5
    assert cli.stdout == b"hi\n"


def test_task_exception_comes_back_with_its_type(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        future = client.submit(t.fail_with, "KeyError", "no such key")
        with pytest.raises(KeyError, match="no such key") as info:
            future.result(timeout=30)
        assert "fail_with" in str(info.value.__cause__), "the remote traceback is attached"
        assert client.submit(t.square, 7).result(timeout=30) == 49, "the worker stays up"


def test_async_client_end_to_end(start_cell: StartCell) -> None:
    """AsyncClient: submit, map, gather, exception types, a refused submission that leaves the
    client usable, and a submission from many concurrent coroutines."""
    cell = start_cell(workers=1, slots=2, extra_args=("--max-blob-kb", "4"))

    async def run() -> None:
        async with AsyncClient(cell.address) as client:
            assert await (await client.submit(t.square, 6)) == 36
            futures = await client.map(t.square, range(100))
            assert await client.gather(futures) == [i * i for i in range(100)]
            with pytest.raises(InvalidArgument, match="4096"):
                await client.submit(t.square, b"x" * 10_000)
            failing = await client.submit(t.fail_with, "ValueError", "bad value")
            with pytest.raises(ValueError, match="bad value"):
                await failing
            many = await asyncio.gather(*(client.submit(t.add, i, 1) for i in range(50)))
            assert len({f.task_id for f in many}) == 50
            assert await client.gather(many) == [i + 1 for i in range(50)]

    asyncio.run(run())


def test_a_delivered_result_waits_for_its_acknowledgement(start_cell: StartCell) -> None:
    """Written to the stream is not yet received (the connection may break under it): the PLM
    keeps a delivered result until the client acknowledges it, and a client naming the task
    again gets it again; once acknowledged it is released."""
    cell = start_cell(workers=1, slots=1)
    spec = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep", params={"seconds": 0}))
    submission = task_service_pb2.TaskSubmission(spec=spec)

    def first_result(stub: Any, session: str, task_ids: list[int]) -> tuple[int, int]:
        request = task_service_pb2.WatchTasksRequest(session=session, task_ids=task_ids)
        stream = stub.WatchTasks(request, timeout=30)
        reply = next(stream)
        stream.cancel()
        (result,) = reply.results
        return result.task_id, result.state

    with authed_channel(cell.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.SubmitTasksRequest(tasks=[submission], session="first")
        (task_id,) = stub.SubmitTasks(request, timeout=30).task_ids
        assert first_result(stub, "first", []) == (task_id, task_pb2.SUCCEEDED)
        assert first_result(stub, "again", [task_id]) == (task_id, task_pb2.SUCCEEDED)
        ack = task_service_pb2.SubmitTasksRequest(session="again", acks=[task_id])
        assert list(stub.SubmitTasks(ack, timeout=30).task_ids) == []
        assert first_result(stub, "third", [task_id]) == (task_id, task_pb2.TASK_STATE_UNSPECIFIED)


def test_two_cells_on_one_host_do_not_interfere(start_cell: StartCell) -> None:
    first = start_cell(workers=1, slots=1)
    second = start_cell(workers=1, slots=1)
    with Client(first.address) as a, Client(second.address) as b:
        fa = a.map(t.square, range(50))
        fb = b.map(t.add, range(50))
        assert a.gather(fa, timeout=60) == [i * i for i in range(50)]
        assert b.gather(fb, timeout=60) == list(range(50))
        sa, sb = a.cluster_status(), b.cluster_status()
    assert sa.cell == first.name and sb.cell == second.name
    assert sa.submitted_total == 50 and sb.submitted_total == 50


def test_sigterm_to_heapd_up_leaves_nothing(start_cell: StartCell) -> None:
    """A clean stop leaves no process, no /dev/shm entry, and no warning or error in any role's
    log (a worker leaving closes its streams; nothing is cut off mid-call)."""
    cell = start_cell(workers=2, slots=1)
    with Client(cell.address) as client:
        assert client.gather(client.map(t.square, range(20)), timeout=30) == [
            i * i for i in range(20)
        ]
    assert shm_entries(cell.name), "the cell's shared memory exists while it runs"
    assert cell.process is not None
    cell.process.send_signal(signal.SIGTERM)
    assert cell.process.wait(timeout=30) == 0
    assert marked_processes(cell.name) == []
    assert shm_entries(cell.name) == []
    assert cell.log_dir is not None
    complaints = [
        f"{path.name}: {line}"
        for path in sorted(cell.log_dir.glob("*.log"))
        for line in path.read_text().splitlines()
        if '"level": "warning"' in line or '"level": "error"' in line or "Traceback" in line
    ]
    assert complaints == []


def test_env_marker_reaches_every_process_of_the_cell(start_cell: StartCell) -> None:
    """The leftover-process check of the fixture relies on the marker reaching every process
    of the cell: the supervisor, the 3 roles, the workers, and each worker's children (one pool
    child per slot, and the resource tracker multiprocessing starts with the first of them)."""
    workers, slots = 2, 2
    cell = start_cell(workers=workers, slots=slots)
    roles = cell.info["pids"]
    worker_pids = {roles[f"worker-{i}"] for i in range(workers)}
    assert set(roles) == {"plm", "scheduler", "register"} | {f"worker-{i}" for i in range(workers)}
    marked = set(marked_processes(cell.name))
    children = {pid: parent_of(pid) for pid in marked - {cell.info["pid"], *roles.values()}}
    assert {cell.info["pid"], *roles.values()} <= marked
    assert set(children.values()) == worker_pids, "every other marked process is a worker's"

    def kinds(worker: int) -> list[str]:
        argv = [
            Path(f"/proc/{pid}/cmdline").read_bytes() for pid, p in children.items() if p == worker
        ]
        return sorted("tracker" if b"resource_tracker" in a else "pool" for a in argv)

    assert [kinds(w) for w in sorted(worker_pids)] == [["pool"] * slots + ["tracker"]] * workers
    assert len(marked) == 1 + len(roles) + workers * (slots + 1)
    assert os.environ.get(MARK) is None


def test_retries_with_backoff_then_success_or_exhaustion(start_cell: StartCell, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        submitted = time.monotonic()
        ok = client.submit(t.flaky, str(tmp_path / "a"), 2, retries=2)
        assert ok.result(timeout=30) == 3, "third attempt succeeds after two backoffs"
        # README: a retry waits 0.1 s x 2^(attempt-1), never less: 0.1 s, then 0.2 s.
        assert time.monotonic() - submitted >= 0.1 + 0.2
        exhausted = client.submit(t.flaky, str(tmp_path / "b"), 5, retries=1)
        with pytest.raises(ConnectionError, match="transient failure 2") as info:
            exhausted.result(timeout=30)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "attempt 1: builtins.ConnectionError: transient failure 1" in notes
        not_listed = client.submit(t.flaky, str(tmp_path / "c"), 1, retries=3, retry_on=(KeyError,))
        with pytest.raises(ConnectionError, match="transient failure 1"):
            not_listed.result(timeout=30)
        status = client.cluster_status()
    assert (tmp_path / "b").read_text() == "xx"
    assert (tmp_path / "c").read_text() == "x", "an exception not in retry_on is not retried"
    assert status.succeeded_total == 1 and status.failed_total == 2


def test_sigterm_drains_a_worker_without_losing_its_tasks(
    start_cell: StartCell, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM to a worker drains it (README): it is taken off the worker heap at once and
    takes no new task, the task it runs finishes there and reports, then it deregisters holding
    nothing and exits 0. Its task waits on a FIFO, so it surely runs when the signal comes."""
    cell = start_cell(workers=2, slots=1, extra_args=ONE_TASK_PER_SLOT)
    assert cell.log_dir is not None
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Client(cell.address) as client:
        held = client.submit_command(gated_command(gate))
        assert_eventually(lambda: client.get_task(held.task_id).state == "RUNNING")
        victim_id = client.get_task(held.task_id).worker_id
        [victim] = [w for w in client.cluster_status().workers if w.worker_id == victim_id]
        [other] = [w for w in client.cluster_status().workers if w.worker_id != victim_id]

        def state() -> str:
            [w] = [w for w in client.cluster_status().workers if w.worker_id == victim_id]
            return str(w.state)

        os.kill(victim.pid, signal.SIGTERM)
        assert_eventually(lambda: state() == "DRAINING")
        more = [client.submit(t.whoami) for _ in range(10)]
        assert set(client.gather(more, timeout=60)) == {other.pid}, "it takes no new task"
        assert client.get_task(held.task_id).state == "RUNNING", "it waits for its running task"
        assert is_running(victim.pid) and state() == "DRAINING"
        assert_eventually(lambda: release_gate(gate))
        assert held.result(timeout=30) == CommandResult(0, b"", b""), "it finished there"
        assert_eventually(lambda: not is_running(victim.pid), timeout_s=30)
        workers = {w.worker_id for w in client.cluster_status().workers}
    assert victim_id not in workers, "it deregistered: its slot is free"
    left = log_events(cell.log_dir, "register.log", "worker left")
    assert [(e["worker_id"], e["requeued"], e["failed"]) for e in left] == [(victim_id, 0, 0)]
    dead = log_events(cell.log_dir, "register.log", "worker dead")
    assert [e for e in dead if e["worker_id"] == victim_id] == [], "it did not die"
    # Its exit code, as the supervisor (`heapd up`, whose log is on stderr) saw it.
    [name] = [name for name, pid in cell.info["pids"].items() if pid == victim.pid]
    err: list[str] = []

    def exits() -> list[int]:
        err.append(capfd.readouterr().err)
        found = json_lines("".join(err))
        return [e["returncode"] for e in found if e.get("child") == name and "returncode" in e]

    assert assert_eventually(exits) == [0]
