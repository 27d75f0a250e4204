"""Cell operations one by one: queue order, dispatch, fencing, retries, blobs, ring, bells."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from heapd.shm import (
    MAX_WORKER_LOSSES,
    ArenaFull,
    BlobTooLarge,
    Capacities,
    Cell,
    Completion,
    LostTasks,
    NewTask,
    StaleEpoch,
    TableFull,
    TaskNotFound,
    TaskState,
    WorkerInfo,
    WorkerNotFound,
    WorkerState,
)
from tests import shm_helpers
from tests.shm_helpers import SMALL

OK, FAIL = TaskState.SUCCEEDED, TaskState.FAILED


@pytest.fixture
def cell() -> Iterator[Cell]:
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, SMALL) as c:
        yield c
        assert c.check() == []


def worker(cell: Cell, slots: int = 1, address: str = "10.0.0.1:7000") -> WorkerInfo:
    return cell.register_worker(address, slots, 123, "host", 1.0, 100.0)


def done(
    cell: Cell,
    w: WorkerInfo,
    task_id: int,
    state: TaskState = OK,
    result: bytes = b"r",
    retryable: bool = False,
) -> None:
    """Complete the task's current attempt on worker w."""
    report = Completion(task_id, cell.get(task_id).attempt, state, result, retryable)
    cell.complete(w.worker_id, w.epoch, [report], 2.0)


def test_priority_then_fifo(cell: Cell) -> None:
    prios = [0, 5, 0, -3, 5, 1, 0]
    ids = cell.submit([NewTask(f"{i}".encode(), priority=p) for i, p in enumerate(prios)], 1.0)
    worker(cell, slots=10)
    got = [d.task_id for d in cell.dispatch(10, 2.0)]
    expected = [ids[i] for i in sorted(range(len(prios)), key=lambda i: (-prios[i], i))]
    assert got == expected


def test_dispatch_fields_and_task_info(cell: Cell) -> None:
    [tid] = cell.submit([NewTask(b"payload", priority=2, max_retries=1, timeout_ms=500)], 1.0)
    w = worker(cell)
    [d] = cell.dispatch(5, 3.0)
    assert (d.task_id, d.attempt, d.payload, d.timeout_ms) == (tid, 1, b"payload", 500)
    assert (d.worker_id, d.worker_epoch, d.address) == (w.worker_id, w.epoch, "10.0.0.1:7000")
    info = cell.get(tid)
    assert (info.state, info.attempt, info.worker_id) == (TaskState.DISPATCHED, 1, w.worker_id)
    assert info.dispatched_at == 3.0
    assert cell.worker(w.worker_id).in_flight == 1
    assert len(cell.mark_running(w.worker_id, w.epoch, [(tid, 1), (tid, 7)], 3.5)) == 1
    assert cell.get(tid).state == TaskState.RUNNING


def test_least_loaded_and_slots_respected(cell: Cell) -> None:
    cell.submit([NewTask(b"x") for _ in range(10)], 1.0)
    a, b = worker(cell, slots=1, address="a:1"), worker(cell, slots=3, address="b:1")
    got = cell.dispatch(10, 2.0)
    assert len(got) == 4
    assert sorted(d.address for d in got) == ["a:1", "b:1", "b:1", "b:1"]
    assert cell.dispatch(10, 2.0) == []
    assert len(cell.dispatch(10, 2.0, max_per_slot=2)) == 4
    assert [cell.worker(w.worker_id).in_flight for w in (a, b)] == [2, 6]


def test_ties_go_to_the_least_recently_picked(cell: Cell) -> None:
    cell.submit([NewTask(b"x") for _ in range(6)], 1.0)
    for n in range(3):
        worker(cell, slots=2, address=f"w{n}:1")
    got = [d.address for d in cell.dispatch(6, 2.0)]
    assert got[:3] == sorted(got[:3]) and len(set(got[:3])) == 3
    assert got[3:] == got[:3]


def test_complete_and_result(cell: Cell) -> None:
    [tid] = cell.submit([NewTask(b"p")], 1.0)
    w = worker(cell)
    cell.dispatch(1, 1.5)
    done(cell, w, tid, result=b"answer")
    info = cell.get(tid)
    assert (info.state, info.has_result, info.finished_at) == (OK, True, 2.0)
    assert cell.read_result(tid) == b"answer"
    [queued] = cell.submit([NewTask(b"q")], 1.0)
    batch = cell.read_settled([tid, queued, 12345])
    assert [(i, info is not None, result) for i, info, result in batch] == [
        (tid, True, b"answer"),
        (queued, True, None),
        (12345, False, None),
    ]
    assert batch[0][1] == cell.get(tid)
    assert cell.take_finished(10) == [tid]
    assert cell.take_finished(10) == []
    assert cell.worker(w.worker_id).tasks_done == 1
    assert cell.release([tid, tid, 12345]) == 1
    with pytest.raises(TaskNotFound):
        cell.get(tid)
    with pytest.raises(KeyError):
        cell.read_result(tid)


def test_retryable_failure_requeues_with_its_place(cell: Cell) -> None:
    first, _ = cell.submit([NewTask(b"a", max_retries=1), NewTask(b"b")], 1.0)
    w = worker(cell)
    [d] = cell.dispatch(1, 1.0)
    assert d.task_id == first
    out = cell.complete(w.worker_id, w.epoch, [Completion(first, 1, FAIL, b"e", True)], 2.0)
    assert (out.accepted, out.requeued) == (1, 1)
    assert out.retry_at == pytest.approx(2.1)  # backoff before retry 1: RETRY_BASE_S
    assert cell.read_result(first) is None
    assert cell.get(first).state == TaskState.PENDING
    assert cell.promote_due(2.05) == pytest.approx(2.1)  # not yet due
    [d] = cell.dispatch(1, 2.06)
    assert d.task_id != first
    assert cell.promote_due(2.2) == 0.0
    cell.complete(w.worker_id, w.epoch, [Completion(d.task_id, 1, OK, b"", False)], 2.3)
    [d] = cell.dispatch(1, 3.0)
    assert (d.task_id, d.attempt) == (first, 2)  # ahead of `second`: same key as before
    done(cell, w, first, FAIL, b"final", retryable=True)  # retries used up
    assert cell.get(first).state == FAIL
    assert cell.read_result(first) == b"final"
    assert cell.stats().requeued_total == 1


def test_fencing_stale_attempt_and_worker(cell: Cell) -> None:
    [tid] = cell.submit([NewTask(b"a")], 1.0)
    w = worker(cell)
    cell.dispatch(1, 1.0)
    out = cell.complete(w.worker_id, w.epoch, [Completion(tid, 9, OK, b"")], 2.0)
    assert (out.accepted, out.stale) == (0, 1)
    assert cell.worker_lost(w.worker_id, w.epoch, 3.0, b"lost").requeued == [tid]
    assert cell.worker_lost(w.worker_id, w.epoch, 3.0, b"lost") == LostTasks([], [])
    assert cell.get(tid).state == TaskState.QUEUED
    with pytest.raises(StaleEpoch, match="dead"):
        cell.complete(w.worker_id, w.epoch, [Completion(tid, 1, OK, b"")], 4.0)
    with pytest.raises(StaleEpoch):
        cell.heartbeat(w.worker_id, w.epoch, 4.0, 9.0)
    with pytest.raises(StaleEpoch):
        cell.heartbeat(w.worker_id, w.epoch + 1, 4.0, 9.0)
    again = worker(cell)
    assert again.epoch > w.epoch and again.worker_id != w.worker_id
    [d] = cell.dispatch(1, 5.0)
    assert (d.task_id, d.attempt, d.worker_id) == (tid, 2, again.worker_id)
    out = cell.complete(again.worker_id, again.epoch, [Completion(tid, 1, OK, b"old")], 6.0)
    assert out.stale == 1 and cell.get(tid).state == TaskState.DISPATCHED
    assert cell.stats().stale_total == 2


def test_requeue_and_deregister(cell: Cell) -> None:
    a, b = cell.submit([NewTask(b"a"), NewTask(b"b")], 1.0)
    w = worker(cell, slots=2)
    cell.dispatch(2, 1.0)
    assert cell.requeue([(a, 1), (b, 5), (999, 1)], 2.0) == 1
    assert cell.worker(w.worker_id).in_flight == 1
    assert cell.deregister(w.worker_id, w.epoch, 3.0, b"lost").requeued == [b]
    with pytest.raises(WorkerNotFound):
        cell.worker(w.worker_id)
    assert cell.queue_depth() == 2
    assert cell.workers() == []


def test_heartbeat_and_expiry(cell: Cell) -> None:
    w1, w2 = worker(cell), worker(cell)
    assert cell.heartbeat(w1.worker_id, w1.epoch, 50.0, 150.0) == 1.0  # since registration
    assert cell.heartbeat(w1.worker_id, w1.epoch, 50.5, 150.0) == 50.0  # since the last beat
    assert cell.worker(w1.worker_id).deadline == 150.0
    assert cell.expired_workers(120.0) == [(w2.worker_id, w2.epoch)]
    with pytest.raises(WorkerNotFound):
        cell.heartbeat(12345, 1, 1.0, 2.0)


def test_draining_worker_gets_nothing_new(cell: Cell) -> None:
    cell.submit([NewTask(b"a"), NewTask(b"b")], 1.0)
    w = worker(cell, slots=5)
    [d] = cell.dispatch(1, 1.0)
    cell.drain_worker(w.worker_id, w.epoch)
    assert cell.worker(w.worker_id).state == WorkerState.DRAINING
    assert cell.dispatch(5, 2.0) == []
    done(cell, w, d.task_id)
    assert cell.worker(w.worker_id).in_flight == 0


def test_cancel_everywhere(cell: Cell) -> None:
    new = [NewTask(b"q", priority=-1), NewTask(b"a", priority=1), NewTask(b"f")]
    queued, active, finished = cell.submit(new, 1.0)
    w = worker(cell, slots=2)
    cell.dispatch(2, 1.0)
    done(cell, w, finished)
    r = cell.cancel(queued, 3.0)
    assert r.cancelled and r.before.state == TaskState.QUEUED and r.address == ""
    r = cell.cancel(active, 3.0)
    assert r.cancelled and r.before.state == TaskState.DISPATCHED and r.address == "10.0.0.1:7000"
    assert cell.worker(w.worker_id).in_flight == 0
    r = cell.cancel(finished, 3.0)
    assert not r.cancelled and cell.get(finished).state == OK
    assert cell.queue_depth() == 0
    assert cell.take_finished(10) == [finished, queued, active]
    with pytest.raises(TaskNotFound):
        cell.cancel(42, 1.0)


def test_blob_limits(cell: Cell) -> None:
    with pytest.raises(BlobTooLarge, match="reference") as err:
        cell.submit([NewTask(b"a"), NewTask(b"x" * 2049)], 1.0)
    assert (err.value.size, err.value.limit) == (2049, 2048)
    assert cell.queue_depth() == 0
    big = [NewTask(b"x" * 2048) for _ in range(7)]  # 7 x 32 chunks of 256 fit
    cell.submit(big, 1.0)
    with pytest.raises(ArenaFull) as full:
        cell.submit([NewTask(b"y" * 64), NewTask(b"z" * 2048)], 1.0)
    assert full.value.size > full.value.free
    assert cell.queue_depth() == 7
    assert cell.stats().arena_used_bytes == 7 * 2048


def test_arena_full_midway_undoes_the_batch(cell: Cell) -> None:
    cell.submit([NewTask(b"x" * 1024) for _ in range(14)], 1.0)  # 14 x 16 of 256 chunks
    ids = [t.task_id for t in cell.list_tasks()]
    w = worker(cell, slots=14)
    cell.dispatch(14, 1.0)
    for tid in ids[::2]:
        done(cell, w, tid)
    cell.release(ids[::2])  # 7 holes of 16 chunks + 32 free at the end
    used = cell.stats().arena_used_bytes
    with pytest.raises(ArenaFull, match="fragmented"):
        cell.submit([NewTask(b"a" * 2048), NewTask(b"b" * 2048)], 1.0)
    assert cell.stats().arena_used_bytes == used
    assert cell.queue_depth() == 0
    cell.submit([NewTask(b"a" * 2048), NewTask(b"b" * 1024)], 1.0)


def test_result_too_large_still_settles(cell: Cell) -> None:
    [tid] = cell.submit([NewTask(b"a")], 1.0)
    w = worker(cell)
    cell.dispatch(1, 1.0)
    done(cell, w, tid, OK, b"x" * 5000)
    info = cell.get(tid)
    assert info.state == FAIL and info.has_result
    assert cell.read_result(tid) == b""


def test_task_table_full(cell: Cell) -> None:
    cell.submit([NewTask(b"") for _ in range(60)], 1.0)
    with pytest.raises(TableFull) as err:
        cell.submit([NewTask(b"") for _ in range(5)], 1.0)
    assert err.value.table == "tasks"
    assert cell.queue_depth() == 60


def test_a_task_that_keeps_losing_its_worker_fails(cell: Cell) -> None:
    """Requeued after each of MAX_WORKER_LOSSES lost workers; one more loss fails it with the
    caller's outcome (a poison task must not take every worker down forever)."""
    [tid] = cell.submit([NewTask(b"poison")], 1.0)
    for loss in range(1, MAX_WORKER_LOSSES + 1):
        w = worker(cell)
        assert cell.dispatch(1, 1.0)[0].task_id == tid
        cell.scheduler_bell.wait(0)
        assert cell.worker_lost(w.worker_id, w.epoch, 2.0, b"gone") == LostTasks([tid], [])
        assert cell.scheduler_bell.wait(0) is True
        assert cell.get(tid).state == TaskState.QUEUED, f"retried after loss {loss}"
    w = worker(cell)
    cell.dispatch(1, 3.0)
    assert cell.worker_lost(w.worker_id, w.epoch, 4.0, b"gone") == LostTasks([], [tid])
    info = cell.get(tid)
    assert (info.state, info.finished_at, info.attempt) == (TaskState.FAILED, 4.0, 4)
    assert cell.read_result(tid) == b"gone"
    assert cell.plm_bell.wait(0) is True
    assert cell.take_finished(10) == [tid]
    assert cell.stats().failed_total == 1


def test_worker_table_full_reuses_dead_slots(cell: Cell) -> None:
    ws = [worker(cell) for _ in range(8)]
    with pytest.raises(TableFull) as err:
        worker(cell)
    assert err.value.table == "workers"
    cell.worker_lost(ws[3].worker_id, ws[3].epoch, 2.0, b"lost")
    again = worker(cell)
    assert again.worker_id & 0xFFFF == ws[3].worker_id & 0xFFFF
    with pytest.raises(WorkerNotFound):
        cell.worker(ws[3].worker_id)


def test_ids_never_reused(cell: Cell) -> None:
    seen: set[int] = set()
    w = worker(cell, slots=64)
    for _ in range(5):
        ids = cell.submit([NewTask(b"") for _ in range(40)], 1.0)
        assert not seen & set(ids)
        seen |= set(ids)
        for d in cell.dispatch(64, 1.0):
            done(cell, w, d.task_id)
        cell.release(ids)


def test_ring_survives_release_without_take(cell: Cell) -> None:
    w = worker(cell, slots=64)
    last: list[int] = []
    for _ in range(5):  # 5 x 50 terminal tasks through a 64-slot table, never taken
        last = cell.submit([NewTask(b"") for _ in range(50)], 1.0)
        for d in cell.dispatch(64, 1.0):
            done(cell, w, d.task_id)
        if _ != 4:
            cell.release(last)
    assert cell.take_finished(1000) == last


def test_list_tasks_and_stats(cell: Cell) -> None:
    ids = cell.submit([NewTask(b"a", priority=p) for p in (3, 2, 1)], 1.0)
    worker(cell)
    cell.dispatch(1, 1.0)
    assert [t.task_id for t in cell.list_tasks()] == ids
    assert [t.task_id for t in cell.list_tasks(limit=2)] == ids[:2]
    assert [t.task_id for t in cell.list_tasks({TaskState.QUEUED})] == ids[1:]
    assert cell.list_tasks(limit=0) == []
    s = cell.stats()
    assert s.counts[TaskState.QUEUED] == 2 and s.counts[TaskState.DISPATCHED] == 1
    assert TaskState.FREE not in s.counts
    assert (s.queued, s.submitted_total, len(s.workers)) == (2, 3, 1)


def test_bad_task_settings(cell: Cell) -> None:
    text: bytes = "text"  # type: ignore[assignment]
    for bad in (
        NewTask(b"", priority=40000),
        NewTask(b"", resources={"gpu": -1}),
        NewTask(b"", max_retries=-1),
        NewTask(text),
    ):
        with pytest.raises(ValueError):
            cell.submit([bad], 1.0)
    with pytest.raises(ValueError, match="address"):
        cell.register_worker("x" * 200, 1, 1, "h", 1.0, 2.0)
    with pytest.raises(ValueError, match="slots"):
        cell.register_worker("a:1", 0, 1, "h", 1.0, 2.0)
    with pytest.raises(ValueError):
        cell.complete(1, 1, [Completion(1, 1, TaskState.RUNNING, b"")], 1.0)


def test_doorbells_wake_and_coalesce(cell: Cell) -> None:
    assert cell.scheduler_bell.wait(0) is False
    cell.submit([NewTask(b"a")], 1.0)
    cell.submit([NewTask(b"b")], 1.0)
    assert cell.scheduler_bell.wait(0) is True
    assert cell.scheduler_bell.wait(0.01) is False  # two rings, one wake-up
    woke: list[float] = []
    waiter = threading.Thread(
        target=lambda: woke.append(cell.plm_bell.wait(5.0) and time.monotonic())
    )
    waiter.start()
    rung = time.monotonic()
    w = worker(cell)
    d = cell.dispatch(1, 1.0)[0]
    done(cell, w, d.task_id)
    waiter.join()
    assert woke and woke[0] - rung < 1.0


def test_completion_wakes_the_scheduler_only_when_tasks_wait(cell: Cell) -> None:
    """A freed slot is news to the scheduler only while the heap holds work; the PLM always
    hears of a finished task."""
    w = worker(cell)
    first, second = cell.submit([NewTask(b"a"), NewTask(b"b")], 1.0)
    assert cell.dispatch(1, 1.0)[0].task_id == first
    cell.scheduler_bell.wait(0)  # the submit's ring
    done(cell, w, first)
    assert cell.plm_bell.wait(0) is True
    assert cell.scheduler_bell.wait(0) is True, "the second task waits for the freed slot"
    assert cell.dispatch(1, 1.0)[0].task_id == second
    done(cell, w, second)
    assert cell.plm_bell.wait(0) is True
    assert cell.scheduler_bell.wait(0) is False, "nothing queued: no needless wake-up"


def test_capacity_one(cell: Cell) -> None:
    with (
        shm_helpers.scratch_cell_name() as name,
        Cell.create(
            name, Capacities(tasks=1, workers=1, arena_bytes=64, max_blob_bytes=64)
        ) as tiny,
    ):
        [tid] = tiny.submit([NewTask(b"x" * 64)], 1.0)
        w = tiny.register_worker("a:1", 1, 1, "h", 1.0, 2.0)
        tiny.dispatch(1, 1.0)
        out = tiny.complete(w.worker_id, w.epoch, [Completion(tid, 1, OK, b"y")], 1.0)
        assert out.accepted == 1 and tiny.get(tid).state == FAIL  # no room for the result
        assert tiny.check() == []


def test_a_requeue_never_counts_a_lost_worker(cell: Cell) -> None:
    """Only the register burying a worker counts a loss: a requeue (a refused or undelivered
    dispatch) does not, so a task requeued this way still has all its losses to spend."""
    (tid,) = cell.submit([NewTask(b"poison")], 1.0)
    w = worker(cell, slots=1)
    for attempt in range(1, 6):
        assert [d.attempt for d in cell.dispatch(1, 1.0)] == [attempt]
        assert cell.requeue([(tid, attempt)], 2.0) == 1
    for attempt in range(6, 6 + MAX_WORKER_LOSSES):
        assert [d.attempt for d in cell.dispatch(1, 3.0)] == [attempt]
        assert cell.worker_lost(w.worker_id, w.epoch, 3.0, b"lost").requeued == [tid]
        w = worker(cell, slots=1)
    cell.dispatch(1, 4.0)
    assert cell.worker_lost(w.worker_id, w.epoch, 4.0, b"lost").failed == [tid]
