"""worker.pool with real spawned children: results, crashes, timeouts, cancels, clean close."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from heapd import convert as client_convert
from heapd import errors
from heapd.errors import FailureInfo, FailureKind
from heapd.results import TaskState, decode_outcome
from heapd.worker.pool import Job, JobResult, Pool
from tests import tasks_for_worker as t
from tests.helpers import assert_eventually, eventually, is_running, release_gate

Key = tuple[int, int]


def python_job(task_id: int, fn: Any, *args: Any, timeout_s: float = 0.0) -> Job:
    spec = client_convert.python_spec(fn, args).SerializeToString()
    return Job(task_id, 1, spec, timeout_s)


class Harness:
    """Records what a bound pool reports and lets a test await it (woken by the callbacks)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.started: list[Key] = []
        self.results: list[JobResult] = []
        self._changed = asyncio.Event()
        pool.bind(asyncio.get_running_loop(), self._on_started, self._on_results)

    def _on_started(self, keys: list[Key]) -> None:
        self.started.extend(keys)
        self._changed.set()

    def _on_results(self, results: list[JobResult]) -> None:
        self.results.extend(results)
        self._changed.set()

    def result(self, task_id: int) -> JobResult:
        [found] = [r for r in self.results if r.task_id == task_id]
        return found

    def value(self, task_id: int) -> Any:
        found = self.result(task_id)
        return decode_outcome(
            TaskState.SUCCEEDED if found.succeeded else TaskState.FAILED,
            client_convert.outcome_from_bytes(found.outcome),
        )

    async def until(self, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    def cancelled(self) -> list[int]:
        """Task ids reported FAILED CANCELLED_BY_USER, not retryable, in report order."""
        found = []
        for r in self.results:
            outcome = client_convert.outcome_from_bytes(r.outcome)
            failure = outcome.result if outcome is not None else None
            if isinstance(failure, FailureInfo) and failure.kind == FailureKind.CANCELLED_BY_USER:
                assert not r.succeeded and not r.retryable
                found.append(r.task_id)
        return found

    async def results_for(self, *task_ids: int) -> None:
        await self.until(lambda: set(task_ids) <= {r.task_id for r in self.results})

    async def started_for(self, task_id: int) -> None:
        await self.until(lambda: any(key[0] == task_id for key in self.started))


Body = Callable[[Harness], Awaitable[None]]


@pytest.fixture
def run_pool() -> Iterator[Callable[..., list[int]]]:
    """Factory: start a pool, run `body` against it on a fresh loop, close it; return every
    child pid it had. Teardown fails if any of them is still alive."""
    seen: list[int] = []

    def run(body: Body, slots: int = 1, max_batch: int = 8) -> list[int]:
        pool = Pool(slots, max_batch=max_batch)
        pool.start()
        pids = list(pool.pids)

        async def main() -> None:
            try:
                harness = Harness(pool)
                await body(harness)
            finally:
                pids.extend(pool.pids)
                pool.close()

        try:
            asyncio.run(main())
        finally:
            pool.close()
            seen.extend(pids)
        return pids

    yield run
    assert not [pid for pid in seen if is_running(pid)], "pool children outlived close()"
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("heapd-slot")]


def test_many_jobs_each_come_back_once(run_pool: Callable[..., list[int]]) -> None:
    jobs = [python_job(i, t.add, i, 1) for i in range(400)]
    jobs += [
        Job(400 + i, 1, client_convert.command_spec(["echo", str(i)]).SerializeToString())
        for i in range(10)
    ]
    jobs += [Job(410, 1, client_convert.builtin_spec("sleep", {}).SerializeToString(), 30.0)]

    async def body(h: Harness) -> None:
        h.pool.submit(jobs)
        h.pool.submit(jobs[:50])  # a repeated assignment is dropped, not run twice
        await h.pool.wait_idle()
        assert sorted(r.task_id for r in h.results) == list(range(411))
        assert sorted(key[0] for key in h.started) == list(range(411))
        assert [h.value(i) for i in range(400)] == [i + 1 for i in range(400)]
        assert h.value(405).stdout == b"5\n"
        assert (h.pool.running, h.pool.queued, h.pool.free_slots) == (0, 0, 2)

    run_pool(body, slots=2)


def test_a_task_that_kills_its_process_is_crashed_and_the_pool_recovers(
    run_pool: Callable[..., list[int]],
) -> None:
    async def body(h: Harness) -> None:
        first_pid = h.pool.pids[0]
        # One child gets all four in one batch; the jobs after a crash go back to the queue.
        h.pool.submit(
            [
                python_job(1, t.kill_self),
                python_job(2, t.add, 2),
                python_job(3, t.exit_with, 3),
                python_job(4, t.add, 4),
            ]
        )
        await h.results_for(1, 2, 3, 4)
        for task_id, text in ((1, "killed by SIGKILL"), (3, "exit code 3")):
            assert h.result(task_id).retryable and not h.result(task_id).succeeded
            with pytest.raises(errors.TaskCrashed, match=text):
                h.value(task_id)
        assert (h.value(2), h.value(4)) == (2, 4)
        assert not is_running(first_pid)
        assert len(h.results) == 4

    run_pool(body, slots=1)


def test_a_timeout_kills_the_whole_process_group(
    run_pool: Callable[..., list[int]], tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"

    async def body(h: Harness) -> None:
        h.pool.submit([python_job(1, t.hang_with_grandchild, str(pidfile), timeout_s=1.0)])
        h.pool.submit([python_job(2, t.add, 5, timeout_s=30.0)])
        await h.results_for(1, 2)
        assert h.result(1).retryable
        with pytest.raises(errors.TaskTimeout, match="task exceeded its timeout of 1 s and was"):
            h.value(1)
        grandchild = int(pidfile.read_text())
        # Its group was SIGKILLed before the timeout was reported: the grandchild is gone at
        # once; 2 s only absorbs scheduling on a loaded machine.
        await eventually(lambda: not is_running(grandchild), timeout_s=2.0)
        h.pool.submit([python_job(3, t.add, 3)])
        await h.results_for(3)
        assert (h.value(2), h.value(3)) == (5, 3), "a finished job's timer does not fire"

    run_pool(body, slots=1)


def test_cancelling_a_running_job_kills_its_process_within_a_second(
    run_pool: Callable[..., list[int]],
) -> None:
    async def body(h: Harness) -> None:
        h.pool.submit([python_job(1, t.hang)])
        await h.started_for(1)
        pid = h.pool.pids[0]
        assert h.pool.cancel(1) is True
        # cancel() SIGKILLs the child's group before it returns; the bound is the test's name.
        await eventually(lambda: not is_running(pid), timeout_s=1.0)
        assert h.pool.cancel(1) is False
        h.pool.submit([python_job(2, t.add, 2)])
        await h.results_for(2)
        assert [r.task_id for r in h.results] == [1, 2], "one report for the cancelled job"
        assert h.cancelled() == [1]

    run_pool(body, slots=1)


def test_cancelling_queued_and_handed_over_jobs(run_pool: Callable[..., list[int]]) -> None:
    async def body(h: Harness) -> None:
        # max_batch=2: the child holds [1, 2], the local queue [3, 4].
        h.pool.submit([python_job(1, t.hang)] + [python_job(i, t.add, i) for i in (2, 3, 4)])
        await h.started_for(1)
        assert (h.pool.running, h.pool.queued) == (2, 2)
        assert h.pool.cancel(4, attempt=1) is True  # queued: dropped
        assert h.pool.cancel(1) is True  # running: killed; 2 goes back to the queue
        await h.results_for(2, 3)
        await h.pool.wait_idle()
        assert sorted(r.task_id for r in h.results) == [1, 2, 3, 4]
        assert h.cancelled() == [4, 1], "each cancelled job is reported, when it is cancelled"
        assert 4 not in {key[0] for key in h.started}

    run_pool(body, slots=1, max_batch=2)


def test_a_job_cancelled_after_hand_over_is_skipped_by_the_child(
    run_pool: Callable[..., list[int]], tmp_path: Path
) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    wait_for_release = client_convert.command_spec(["sh", "-c", f"read line < {fifo}"])

    async def body(h: Harness) -> None:
        # Three jobs for one idle child go as one batch [1, 2, 3]; job 1 blocks until released,
        # so job 2 has surely not started when it is cancelled.
        h.pool.submit(
            [
                Job(1, 1, wait_for_release.SerializeToString()),
                python_job(2, t.add, 2),
                python_job(3, t.add, 3),
            ]
        )
        await h.started_for(1)
        first_pid = h.pool.pids[0]
        assert (h.pool.running, h.pool.queued) == (3, 0), "all three were handed over"
        assert h.pool.cancel(2) is True
        await eventually(lambda: release_gate(fifo))  # once job 1 has the FIFO open
        await h.results_for(1, 3)
        await h.pool.wait_idle()
        assert sorted(r.task_id for r in h.results) == [1, 2, 3]
        assert h.cancelled() == [2]
        assert 2 not in {key[0] for key in h.started}
        assert h.pool.pids[0] == first_pid, "skipping needs no kill"

    run_pool(body, slots=1, max_batch=8)


def test_the_local_queue_runs_higher_priorities_first_then_in_task_order(
    run_pool: Callable[..., list[int]], tmp_path: Path
) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    wait_for_release = client_convert.command_spec(["sh", "-c", f"read line < {fifo}"])

    def job(task_id: int, priority: int) -> Job:
        spec = client_convert.python_spec(t.add, (task_id,)).SerializeToString()
        return Job(task_id, 1, spec, priority=priority)

    async def body(h: Harness) -> None:
        h.pool.submit([Job(1, 1, wait_for_release.SerializeToString())])
        await h.started_for(1)
        h.pool.submit([job(10, 0), job(11, 0), job(12, -5)])
        h.pool.submit([job(20, 7), job(13, 0), job(21, 7)])
        await eventually(lambda: release_gate(fifo))
        await h.pool.wait_idle()
        assert [key[0] for key in h.started] == [1, 20, 21, 10, 11, 13, 12]

    run_pool(body, slots=1, max_batch=1)


def test_revoke_gives_back_queued_and_handed_over_jobs_that_have_not_started(
    run_pool: Callable[..., list[int]], tmp_path: Path
) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    wait_for_release = client_convert.command_spec(["sh", "-c", f"read line < {fifo}"])

    async def body(h: Harness) -> None:
        # max_batch=2: the child holds [1, 2] (1 running), the local queue [3, 4].
        first = Job(1, 1, wait_for_release.SerializeToString())
        h.pool.submit([first] + [python_job(i, t.add, i) for i in (2, 3, 4)])
        await h.started_for(1)
        assert (h.pool.running, h.pool.queued) == (2, 2)
        given = h.pool.revoke([(1, 1), (2, 1), (3, 1), (3, 2), (99, 1)])
        assert sorted(given) == [(2, 1), (3, 1)], "the running job and unknown ones stay"
        await eventually(lambda: release_gate(fifo))
        await h.results_for(1, 4)
        await h.pool.wait_idle()
        assert sorted(r.task_id for r in h.results) == [1, 4]
        assert {key[0] for key in h.started} == {1, 4}

    run_pool(body, slots=1, max_batch=2)


def test_close_leaves_no_process_behind(run_pool: Callable[..., list[int]], tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    grandchild: list[int] = []

    async def body(h: Harness) -> None:
        h.pool.submit([python_job(1, t.hang_with_grandchild, str(pidfile)), python_job(2, t.hang)])
        await h.started_for(1)
        await h.started_for(2)
        text = await eventually(lambda: pidfile.exists() and pidfile.read_text(), timeout_s=10.0)
        grandchild.append(int(text))
        h.pool.close()
        h.pool.close()  # idempotent

    pids = run_pool(body, slots=2)
    assert len(pids) == 2 and not [pid for pid in pids if is_running(pid)]
    # close() SIGKILLed both children's groups; 2 s only absorbs scheduling on a loaded machine.
    assert_eventually(lambda: not is_running(grandchild[0]), timeout_s=2.0)


def test_a_pool_refuses_work_before_bind_and_zero_slots() -> None:
    with pytest.raises(RuntimeError, match="bind"):
        Pool(1).submit([])
    with pytest.raises(ValueError):
        Pool(0)
