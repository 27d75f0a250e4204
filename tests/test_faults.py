"""Fault tests (issue 4): real cells (`heapd up`), real signals, nothing lost.

Each test kills, stops or starves something, then checks that every task it submitted settled
as it should; the `start_cell` fixture then checks the cell's shared memory is consistent and
that no process or /dev/shm entry outlived the cell. Task side effects (one line per start/end
in a file, appended with O_APPEND) show where each task ran and how many times.

Detection and recovery times are printed (`pytest -s` shows them) as `fault-timing` lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import CancelledError
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from heapd import Client, TaskCrashed, TaskTimeout, WorkerLost, shm
from heapd.register.beats import Beat, Registration
from heapd.register.convert import TaskOutcomes
from heapd.register.daemon import Register
from heapd.runtime.launch import LocalCell
from heapd.runtime.supervisor import STABLE_S, CellPlan, Child, Supervisor
from tests import tasks_for_faults as f
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import (
    MARK,
    assert_eventually,
    is_running,
    kill_all,
    marked_processes,
    role_pids,
)

HEARTBEAT_INTERVAL_S = 0.25
MISSED_HEARTBEATS = 4


# --- helpers


def timing(what: str, seconds: float) -> None:
    print(f"fault-timing {what}: {seconds * 1000:.0f} ms")


def alive_workers(client: Client) -> list[Any]:
    return [w for w in client.cluster_status().workers if w.state == "ALIVE"]


def worker_with_pid(client: Client, pid: int) -> list[Any]:
    return [w for w in client.cluster_status().workers if w.pid == pid]


def log_events(cell: LocalCell, role_log: str, msg: str) -> list[dict[str, Any]]:
    """The JSON log lines with this message from a role's log (all its restarts)."""
    assert cell.log_dir is not None
    events = []
    for path in sorted(cell.log_dir.glob(role_log)):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("msg") == msg:
                events.append(entry)
    return events


def death_of(cell: LocalCell, worker_id: int) -> dict[str, Any]:
    """The register's "worker dead" record for this worker (waits for it to be written)."""

    def find() -> dict[str, Any] | None:
        found = log_events(cell, "register.log", "worker dead")
        found = [e for e in found if e.get("worker_id") == worker_id]
        return found[0] if found else None

    event = assert_eventually(find, timeout_s=10)
    assert event is not None
    return event


def started_at(pid: int) -> float:
    """When a process started, on CLOCK_BOOTTIME (10 ms resolution), from /proc."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def running_on(path: Path, pid: int) -> bool:
    """Whether the journal's last event from this worker is a task's start."""
    mine = [line for line in read_lines(path) if len(line) >= 3 and line[2] == str(pid)]
    return bool(mine) and mine[-1][0] == "start"


def single_pid(path: Path) -> int:
    lines = read_lines(path)
    assert lines, f"{path} is still empty"
    return int(lines[0][0])


# --- a worker dies


@pytest.mark.timeout(90)
def test_w4_sigkill_one_of_four_workers_loses_nothing(
    start_cell: StartCell, tmp_path: Path
) -> None:
    """BENCHMARKS.md W4, shortened (0.05 s tasks instead of 0.2 s): SIGKILL one of 4 workers x 1
    slot at t = 1.0 s. Every result arrives; the tasks it held complete on other workers."""
    n, seconds = 200, 0.05
    cell = start_cell(workers=4, slots=1)
    journal = tmp_path / "w4.log"
    with Client(cell.address) as client, shm.Cell.attach(cell.name) as handle:
        workers = alive_workers(client)
        assert len(workers) == 4
        victim = workers[0]
        start = time.monotonic()
        futures = client.map(partial(f.record, seconds=seconds, path=str(journal)), range(n))
        time.sleep(max(0.0, start + 1.0 - time.monotonic()))  # place the kill mid-run
        # ...and mid-task: the victim has started a task it has not ended (a 50 ms window).
        assert_eventually(lambda: running_on(journal, victim.pid), interval_s=0.002)
        held = {
            info.task_id
            for info in handle.list_tasks(shm.ACTIVE_STATES, limit=n)
            if info.worker_id == victim.worker_id
        }
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        results = client.gather(futures, timeout=60)
        done_at = time.time()
        final = client.cluster_status()

    assert [tag for tag, _ in results] == list(range(n)), "0 lost: every result arrived"
    runs = read_lines(journal)
    starts = Counter(int(tag) for word, tag, *_ in runs if word == "start")
    ended_on_victim = {
        int(tag) for word, tag, pid, *_ in runs if word == "end" and int(pid) == victim.pid
    }
    started_on_victim = {
        int(tag) for word, tag, pid, *_ in runs if word == "start" and int(pid) == victim.pid
    }
    assert set(starts) == set(range(n))
    duplicates = sum(count - 1 for count in starts.values())

    by_tag = {tag: pid for tag, pid in results}
    tag_of = {future.task_id: tag for tag, future in enumerate(futures)}
    held_tags = {tag_of[task_id] for task_id in held if task_id in tag_of}
    assert held_tags, "the victim held tasks when it was killed"
    unfinished = held_tags - ended_on_victim
    assert unfinished, "the kill interrupted work on the victim"
    moved = {tag for tag in unfinished if by_tag[tag] != victim.pid}
    assert moved == unfinished, "every task the victim had not finished completed elsewhere"
    interrupted = started_on_victim - ended_on_victim
    assert len(interrupted) <= 1, "one slot: at most one task was running on the victim"
    assert all(by_tag[tag] != victim.pid for tag in interrupted)

    dead = [w for w in final.workers if w.worker_id == victim.worker_id]
    assert dead and dead[0].state == "DEAD"
    death = death_of(cell, victim.worker_id)
    assert death["reason"] == "heartbeat stream broke"
    assert death["requeued"] >= 1
    timing("W4 SIGKILL worker -> DEAD (stream break)", death["ts"] - killed_at)
    timing("W4 SIGKILL worker -> all results in", done_at - killed_at)
    moved_done = max(
        float(end) for word, tag, pid, end in (r for r in runs if r[0] == "end")
        if int(tag) in moved and int(pid) != victim.pid
    )  # fmt: skip
    timing("W4 SIGKILL worker -> its last moved task done", moved_done - killed_at)
    print(f"fault-timing W4 moved={len(moved)} duplicates={duplicates} lost=0")
    assert death["ts"] - killed_at < 0.5, "a dead worker is noticed at once (stream break)"


@pytest.mark.timeout(60)
def test_sigstop_worker_is_dead_by_deadline_and_reregisters(
    start_cell: StartCell, tmp_path: Path
) -> None:
    """A hung worker is DEAD after k x interval; its tasks run elsewhere; once resumed, its late
    results are refused and it registers again under a new id."""
    deadline_s = HEARTBEAT_INTERVAL_S * MISSED_HEARTBEATS
    liveness = (
        "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
        "--missed-heartbeats", str(MISSED_HEARTBEATS),
    )  # fmt: skip
    cell = start_cell(workers=2, slots=1, extra_args=liveness)
    journal = tmp_path / "stop.log"
    with Client(cell.address) as client:
        victim, other = alive_workers(client)
        futures = client.map(partial(f.record, seconds=0.1, path=str(journal)), range(30))
        assert_eventually(
            lambda: any(r[0] == "start" and int(r[2]) == victim.pid for r in read_lines(journal))
        )
        stopped_at = time.time()
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            assert_eventually(
                lambda: worker_with_pid(client, victim.pid)[0].state == "DEAD",
                timeout_s=deadline_s + 3,
            )
            results = client.gather(futures, timeout=30)  # all done while the victim is stopped
        finally:
            resumed_at = time.time()
            os.kill(victim.pid, signal.SIGCONT)
        assert [tag for tag, _ in results] == list(range(30))

        def reregistered() -> Any:
            fresh = [
                w
                for w in worker_with_pid(client, victim.pid)
                if w.state == "ALIVE" and w.worker_id != victim.worker_id
            ]
            return fresh[0] if fresh else None

        again = assert_eventually(reregistered, timeout_s=10)
        assert again.epoch != victim.epoch
        # The re-registered worker takes work again (one at a time: both workers get some).
        more = [client.submit(f.record, 100 + i, 0.2, str(journal)) for i in range(4)]
        assert {pid for _, pid in client.gather(more, timeout=30)} == {victim.pid, other.pid}

    death = death_of(cell, victim.worker_id)
    assert death["reason"] == "heartbeat deadline passed"
    assert death["requeued"] >= 1, "the tasks it held went back to the queue"
    detected_s = death["ts"] - stopped_at
    timing(f"SIGSTOP worker -> DEAD (deadline {deadline_s:g} s)", detected_s)
    assert detected_s <= deadline_s + 0.5
    # The victim's children ran on while it was stopped; what they finished came back late and
    # was dropped: every task not finished on the victim before the stop was settled by the
    # other worker's result.
    ended = [
        r
        for r in read_lines(journal)
        if r[0] == "end" and int(r[2]) == victim.pid and int(r[1]) < len(results)
    ]
    ended_late = {int(r[1]) for r in ended if float(r[3]) > stopped_at}
    ended_before = {int(r[1]) for r in ended if float(r[3]) <= stopped_at}
    assert ended_late, "the stopped worker's children finished tasks while it was stopped"
    for tag, pid in results:
        assert pid == other.pid or tag in ended_before, f"task {tag}: a late result was taken"
    fenced = log_events(
        cell, "worker-*.log", "fenced out by the register; cancelling and re-registering"
    )
    assert [e for e in fenced if e["ts"] >= resumed_at - 0.01], "the late heartbeat was refused"
    with shm.Cell.attach(cell.name) as handle:
        stale = handle.stats().stale_total
    logged = log_events(cell, "register.log", "late results of a fenced worker dropped")
    print(
        f"fault-timing SIGSTOP late results: {len(ended_late)} finished on the stopped worker, "
        f"{sum(e['dropped'] for e in logged)} refused by the register, cell stale_total={stale}"
    )


# --- a control role dies


@pytest.mark.timeout(90)
@pytest.mark.parametrize("role", ["register", "scheduler", "plm"])
def test_sigkill_control_role_mid_run_loses_nothing(start_cell: StartCell, role: str) -> None:
    """SIGKILL the register, scheduler or PLM during 2,000 short tasks: the supervisor restarts
    it, every task completes and the client sees no error (it submits more while the role is
    down, too)."""
    n = 2000
    cell = start_cell(workers=2, slots=2)
    with Client(cell.address) as client:
        (old_pid,) = role_pids(cell.name, role)
        first = client.map(t.square, range(n // 2))
        assert_eventually(lambda: sum(fut.done() for fut in first) >= n // 8, timeout_s=30)
        killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        os.kill(old_pid, signal.SIGKILL)
        second = client.map(t.square, range(n // 2, n))
        results = client.gather(first + second, timeout=20)
        done_s = time.clock_gettime(time.CLOCK_BOOTTIME) - killed_at
        new_pids = assert_eventually(lambda: role_pids(cell.name, role), timeout_s=10)
        status = client.cluster_status()
    assert results == [i * i for i in range(n)]
    assert len(new_pids) == 1 and new_pids[0] != old_pid, f"the supervisor restarted the {role}"
    assert len([w for w in status.workers if w.state == "ALIVE"]) == 2
    timing(f"SIGKILL {role} -> restarted process started", started_at(new_pids[0]) - killed_at)
    timing(f"SIGKILL {role} -> all {n} results in", done_s)


@pytest.mark.timeout(60)
def test_dispatch_left_by_a_killed_scheduler_is_not_stranded(start_cell: StartCell) -> None:
    """A scheduler SIGKILLed between committing a dispatch in shared memory and writing it to
    the worker's AssignStream leaves a task DISPATCHED that no worker holds. The test above
    lands in that window only sometimes; here it is made certain: with the scheduler stopped,
    the test dispatches in its place, then kills it. The restarted scheduler must recover it."""
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client, shm.Cell.attach(cell.name) as handle:
        assert client.submit(t.square, 2).result(timeout=30) == 4  # the scheduler is idle now
        (scheduler,) = role_pids(cell.name, "scheduler")
        os.kill(scheduler, signal.SIGSTOP)
        try:
            future = client.submit(t.square, 3)
            dispatched = handle.dispatch(10, time.time())
        finally:
            os.kill(scheduler, signal.SIGKILL)
        assert [d.task_id for d in dispatched] == [future.task_id]
        assert_eventually(lambda: role_pids(cell.name, "scheduler"), timeout_s=10)
        assert future.result(timeout=5) == 9


def test_restarted_register_grants_leases_again(cell_name: str) -> None:
    """Leases (the register's timeout backstop) live in its memory: a restarted register grants
    them again for the attempts the cell says are RUNNING. In-process, with a fake worker, and a
    short lease grace so that the test awaits the lease's outcome instead of the default grace."""
    capacities = shm.Capacities(tasks=64, workers=4, arena_bytes=1 << 16, max_blob_bytes=4096)

    def register(cell: shm.Cell) -> Register:
        return Register(
            cell, interval_s=0.5, deadline_s=30.0, outcomes=TaskOutcomes(), lease_grace_s=0.05
        )

    async def settled(cell: shm.Cell, task_id: int) -> None:
        while cell.get(task_id).state not in shm.TERMINAL_STATES:
            await asyncio.sleep(0.01)

    async def scenario(cell: shm.Cell) -> None:
        first = register(cell)
        first.start()
        worker = first.admit(Registration("127.0.0.1:1", 1, 1, "h"))
        [task_id] = cell.submit([shm.NewTask(b"spec", timeout_ms=100)], time.time())
        [d] = cell.dispatch(1, time.time())
        first.beat(Beat(worker.worker_id, worker.epoch, [(task_id, d.attempt)], []))
        first.close()  # the register dies, and its timers with it
        second = register(cell)
        second.start()
        try:
            await asyncio.wait_for(settled(cell, task_id), timeout=10)
            assert cell.get(task_id).state == shm.TaskState.FAILED
            assert second.take_cancels(worker.worker_id) == [(task_id, d.attempt)]
            assert cell.check() == []
        finally:
            second.close()

    with shm.Cell.create(cell_name, capacities) as cell:
        asyncio.run(scenario(cell))


def test_supervisor_backoff_starts_over_after_a_stable_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Restart delays grow with consecutive quick exits, and start over once a role has run
    for a while (else a role crashing once a day would wait the longest delay for ever)."""

    async def restart_delay(restarts: int, ran_s: float) -> str:
        supervisor = Supervisor(CellPlan(cell="unused"))
        supervisor.request_stop()  # _restart then returns without starting anything
        process = await asyncio.create_subprocess_exec("true")
        await process.wait()
        child = Child("plm", ["true"], process=process, restarts=restarts)
        child.started_at = asyncio.get_running_loop().time() - ran_s
        caplog.clear()
        assert not await supervisor._restart(child)
        return caplog.text

    assert "restart in 5.0s" in asyncio.run(restart_delay(restarts=9, ran_s=1.0))
    assert "restart in 0.1s" in asyncio.run(restart_delay(restarts=9, ran_s=STABLE_S + 1))


# --- a task misbehaves


@pytest.mark.timeout(60)
def test_task_that_kills_its_process_fails_after_retries(
    start_cell: StartCell, tmp_path: Path
) -> None:
    journal = tmp_path / "crash.log"
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        (worker,) = alive_workers(client)
        future = client.submit(f.kill_own_process, str(journal), retries=2)
        with pytest.raises(TaskCrashed, match="killed by SIGKILL") as info:
            future.result(timeout=30)
        assert "the task's process died" in str(info.value)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        for attempt in (1, 2):  # every attempt's reason reaches the client
            assert (
                f"attempt {attempt}: failed: the task's process died (killed by SIGKILL)" in notes
            )
        attempts = read_lines(journal)
        assert len(attempts) == 3, "one attempt plus two retries"
        assert len({pid for (_, pid) in attempts}) == 3, "each attempt had a fresh process"
        assert client.submit(f.worker_pid).result(timeout=30) == worker.pid, "the worker stays up"
        assert [w.worker_id for w in alive_workers(client)] == [worker.worker_id]


@pytest.mark.timeout(90)
def test_a_task_that_kills_its_worker_every_time_fails_after_its_losses(
    start_cell: StartCell, tmp_path: Path
) -> None:
    """A poison task: each attempt SIGKILLs its worker. It is retried after each of
    MAX_WORKER_LOSSES losses, then fails WorkerLost; the cell (and its restarted workers)
    carry on."""
    journal = tmp_path / "poison.log"
    cell = start_cell(workers=2, slots=1)
    with Client(cell.address) as client:
        future = client.submit(f.kill_own_worker, str(journal))
        with pytest.raises(WorkerLost, match=f"lost {shm.MAX_WORKER_LOSSES + 1} times"):
            future.result(timeout=60)
        attempts = read_lines(journal)
        assert len(attempts) == shm.MAX_WORKER_LOSSES + 1, "retried after each loss, then failed"
        assert client.submit(t.square, 9).result(timeout=30) == 81, "the cell carries on"
        assert_eventually(lambda: len(alive_workers(client)) == 2, timeout_s=30)
        final = client.cluster_status()
    assert final.failed_total == 1 and final.succeeded_total == 1


@pytest.mark.timeout(60)
def test_timeout_kills_the_whole_process_group(start_cell: StartCell, tmp_path: Path) -> None:
    journal = tmp_path / "timeout.log"
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        submitted = time.monotonic()
        future = client.submit(f.hang_with_grandchild, str(journal), timeout=1.0)
        with pytest.raises(TaskTimeout, match="timeout of 1 s"):
            future.result(timeout=30)
        reported_s = time.monotonic() - submitted
        ((child, grandchild),) = [(int(a), int(b)) for a, b in read_lines(journal)]
        assert_eventually(lambda: not is_running(grandchild), timeout_s=1.0)
        assert not is_running(child)
        assert client.submit(t.square, 4).result(timeout=30) == 16, "the slot was replaced"
    timing("timeout 1 s -> TaskTimeout at the client", reported_s)
    assert reported_s < 1.0 + 2.0


@pytest.mark.timeout(60)
def test_cancel_running_task_kills_its_process(start_cell: StartCell, tmp_path: Path) -> None:
    cell = start_cell(workers=1, slots=2)
    by_future, by_id = tmp_path / "a.log", tmp_path / "b.log"
    with Client(cell.address) as client:
        a = client.submit(f.log_pid_and_sleep, str(by_future), 300)
        b = client.submit(f.log_pid_and_sleep, str(by_id), 300)
        pid_a = assert_eventually(lambda: single_pid(by_future))
        pid_b = assert_eventually(lambda: single_pid(by_id))

        cancelled_at = time.monotonic()
        assert a.cancel()
        assert_eventually(lambda: not is_running(pid_a), timeout_s=1.0)
        timing("future.cancel() -> task process gone", time.monotonic() - cancelled_at)
        assert a.cancelled()

        cancelled_at = time.monotonic()
        assert client.cancel(b.task_id)
        assert_eventually(lambda: not is_running(pid_b), timeout_s=1.0)
        timing("client.cancel(id) -> task process gone", time.monotonic() - cancelled_at)
        with pytest.raises(CancelledError):  # TaskCancelled settles the future as cancelled
            b.result(timeout=10)
        assert b.cancelled()
        assert client.submit(t.square, 5).result(timeout=30) == 25, "the worker stays up"


# --- a worker cut off from its register


@pytest.mark.timeout(30)
def test_worker_exits_when_register_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mark = f"t{os.getpid()}-unreachable"
    started = time.monotonic()
    argv = [
        sys.executable, "-m", "heapd.worker", "--register", f"127.0.0.1:{port}",
        "--register-timeout-s", "1", "--slots", "1",
    ]  # fmt: skip
    worker = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, MARK: mark},
        start_new_session=True,
    )
    try:
        _, stderr = worker.communicate(timeout=15)
        exited_s = time.monotonic() - started
        assert_eventually(lambda: marked_processes(mark) == [], timeout_s=2)  # children too
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        kill_all(marked_processes(mark))
    assert worker.returncode == 3, stderr.decode(errors="replace")
    assert b"register unreachable" in stderr
    assert exited_s < 10
    timing("worker start -> exit with register unreachable (timeout 1 s)", exited_s)
