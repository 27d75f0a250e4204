"""End to end: a real cell (`heapd up`: PLM, scheduler, register, workers as processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import pytest

from heapd import AsyncClient, Client, CommandResult, InvalidArgument
from heapd.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import MARK, marked_processes, shm_entries


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
        client.gather(sleeps, timeout=60)
        client.gather(cpus, timeout=60)
        status = client.cluster_status()
    assert len(status.workers) == 3
    assert sum(w.tasks_done for w in status.workers) == 1000
    assert all(w.tasks_done > 0 for w in status.workers), "every worker took work"


def test_late_high_priority_tasks_overtake_queued_low_ones(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=2, extra_args=("--prefetch-per-slot", "1"))
    with Client(cell.address) as client:
        low = [client.submit(t.sleep_and_tag, f"low{i}", 0.1, priority="low") for i in range(12)]
        high = [client.submit(t.sleep_and_tag, f"high{i}", 0.1, priority="high") for i in range(4)]
        finished = {tag: when for tag, when in client.gather(low + high, timeout=60)}
    last_high = max(finished[f"high{i}"] for i in range(4))
    low_after = [i for i in range(12) if finished[f"low{i}"] > last_high]
    # Only the tasks already running when the high ones arrived (at most the 2 slots, plus 2
    # dispatched in the same round) may finish before them.
    assert len(low_after) >= 8, (
        f"high-priority tasks did not overtake: {sorted(finished, key=finished.get)}"
    )


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


def test_a_delivered_result_waits_for_a_reconnecting_client(start_cell: StartCell) -> None:
    """Written to the stream is not yet received (the connection may break under it): the PLM
    keeps a delivered result for a while, and a client naming the task again gets it again."""
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        future = client.submit(t.square, 4)
        assert future.result(timeout=30) == 16
    with grpc.insecure_channel(cell.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.WatchTasksRequest(session="again", task_ids=[future.task_id])
        stream = stub.WatchTasks(request, timeout=10)
        reply = next(stream)
        stream.cancel()
    assert [(r.task_id, r.state) for r in reply.results] == [(future.task_id, task_pb2.SUCCEEDED)]


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


def test_env_marker_reaches_roles(start_cell: StartCell) -> None:
    """The leftover-process check of the fixture relies on the marker reaching every role."""
    cell = start_cell(workers=1, slots=1)
    assert len(marked_processes(cell.name)) >= 5  # supervisor, 3 roles, worker (+ its children)
    assert os.environ.get(MARK) is None


def test_retries_with_backoff_then_success_or_exhaustion(start_cell: StartCell, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        ok = client.submit(t.flaky, str(tmp_path / "a"), 2, retries=2)
        assert ok.result(timeout=30) == 3, "third attempt succeeds after two backoffs"
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


def test_sigterm_drains_a_worker_without_losing_its_tasks(start_cell: StartCell) -> None:
    cell = start_cell(workers=2, slots=1)
    with Client(cell.address) as client:
        futures = [client.submit(t.sleep_and_tag, f"s{i}", 0.2) for i in range(10)]
        workers = client.cluster_status().workers
        os.kill(workers[0].pid, signal.SIGTERM)  # drain: finish running tasks, take no more
        tags = [tag for tag, _ in client.gather(futures, timeout=60)]
        assert tags == [f"s{i}" for i in range(10)]
        states = {w.worker_id: w.state for w in client.cluster_status().workers}
    assert workers[0].worker_id not in states or states[workers[0].worker_id] != "ALIVE"
