"""Scheduling in the shared cell: placement policies, prefetch without inversion, aging, take
back of prefetched tasks, and the scheduler's record of what it sent."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from heapd.scheduler.prefetched import Prefetched
from heapd.shm import Cell, Completion, Cursor, Dispatch, NewTask, Policy, TaskState, WorkerInfo
from tests import shm_helpers
from tests.shm_helpers import SMALL


@pytest.fixture
def cell() -> Iterator[Cell]:
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, SMALL) as c:
        yield c
        assert c.check() == []


def workers(cell: Cell, *slots: int) -> list[WorkerInfo]:
    return [
        cell.register_worker(f"10.0.0.{i}:7000", n, 100 + i, "host", 1.0, 1e12)
        for i, n in enumerate(slots, start=1)
    ]


def submit(cell: Cell, n: int, priority: int = 0, now: float = 1.0) -> list[int]:
    return cell.submit([NewTask(b"x", priority=priority) for _ in range(n)], now)


def finish(cell: Cell, d: Dispatch) -> None:
    report = Completion(d.task_id, d.attempt, TaskState.SUCCEEDED, b"", False)
    cell.mark_running(d.worker_id, d.worker_epoch, [(d.task_id, d.attempt)], 2.0)
    cell.complete(d.worker_id, d.worker_epoch, [report], 2.0)


# ---- policies


def test_least_loaded_fills_by_load_then_least_recently_picked(cell: Cell) -> None:
    a, b = workers(cell, 1, 2)
    submit(cell, 3)
    got = [d.worker_id for d in cell.dispatch(3, 2.0)]
    # Loads: a 0/1, b 0/2 -> a (first registered), then b at 0/2, then b at 1/2 < a at 1/1.
    assert got == [a.worker_id, b.worker_id, b.worker_id]


def test_round_robin_cycles_in_worker_order_and_steps_over_full_workers(cell: Cell) -> None:
    a, b, c = workers(cell, 1, 3, 1)
    submit(cell, 5)
    cursor = Cursor(Policy.ROUND_ROBIN)
    got = [d.worker_id for d in cell.dispatch(5, 2.0, cursor=cursor)]
    assert got == [a.worker_id, b.worker_id, c.worker_id, b.worker_id, b.worker_id]
    assert cell.dispatch(5, 2.0, cursor=cursor) == []


def test_round_robin_resumes_after_the_last_worker_picked(cell: Cell) -> None:
    a, b, c = workers(cell, 2, 2, 2)
    cursor = Cursor(Policy.ROUND_ROBIN)
    submit(cell, 1)
    assert [d.worker_id for d in cell.dispatch(1, 2.0, cursor=cursor)] == [a.worker_id]
    submit(cell, 2)
    assert [d.worker_id for d in cell.dispatch(2, 2.0, cursor=cursor)] == [
        b.worker_id,
        c.worker_id,
    ]


def test_power_of_two_prefers_the_less_loaded_of_its_two_draws(cell: Cell) -> None:
    a, b = workers(cell, 8, 8)
    submit(cell, 4)
    for d in cell.dispatch(4, 2.0):  # least-loaded alternates: 2 each
        if d.worker_id == b.worker_id:
            finish(cell, d)  # b is now idle, a holds 2
    submit(cell, 1)
    draws = Cursor(Policy.POWER_OF_TWO, random.Random(3))
    # b wins unless both draws fell on a (one try in four): least-loaded would never pick a.
    picks = []
    for _ in range(20):
        [d] = cell.dispatch(1, 2.0, cursor=draws)
        picks.append(d.worker_id)
        cell.requeue([(d.task_id, d.attempt)], 2.0)
    assert 0 < picks.count(a.worker_id) < picks.count(b.worker_id)


@pytest.mark.parametrize("policy", list(Policy))
def test_every_policy_fills_every_slot_and_no_more(cell: Cell, policy: Policy) -> None:
    ws = workers(cell, 1, 2, 3, 4)
    submit(cell, 12)
    cursor = Cursor(policy, random.Random(1))
    got = cell.dispatch(12, 2.0, cursor=cursor)
    assert Counter(d.worker_id for d in got) == {w.worker_id: w.slots for w in ws}
    assert cell.dispatch(1, 2.0, cursor=cursor) == [], "every worker is full"


def test_policy_names_round_trip() -> None:
    assert [p.label for p in Policy] == ["least-loaded", "round-robin", "random", "power-of-two"]
    assert all(Policy.parse(p.label) is p for p in Policy)
    with pytest.raises(ValueError, match="choose one of least-loaded"):
        Policy.parse("fastest")


# ---- prefetch never inverts priorities


def test_prefetch_only_when_nothing_lower_is_queued(cell: Cell) -> None:
    workers(cell, 1)
    submit(cell, 3, priority=0)
    # One priority queued: the worker may hold up to 4 per slot.
    assert len(cell.dispatch(10, 2.0, max_per_slot=4)) == 3
    submit(cell, 2, priority=-1)
    # Only the lowest priority queued may be prefetched: one more fills the depth of 4.
    assert [d.priority for d in cell.dispatch(10, 2.0, max_per_slot=4)] == [-1]


def test_a_high_task_is_not_prefetched_while_lower_ones_wait(cell: Cell) -> None:
    [w] = workers(cell, 1)
    submit(cell, 1, priority=0, now=1.0)
    [first] = cell.dispatch(1, 2.0)  # the slot is busy
    high = submit(cell, 1, priority=5)
    submit(cell, 3, priority=0)
    # Beyond the free slots only the lowest priority queued may go: the high task waits in the
    # heap (so it takes the first slot that frees, anywhere) and the low ones wait behind it.
    assert cell.dispatch(10, 2.0, max_per_slot=4) == []
    finish(cell, first)
    [d] = cell.dispatch(1, 3.0, max_per_slot=4)
    assert d.task_id == high[0] and d.worker_id == w.worker_id
    assert d.priority == 5


def test_take_back_requeues_unstarted_attempts_with_their_keys(cell: Cell) -> None:
    [w] = workers(cell, 1)
    low = submit(cell, 3, priority=0)
    sent = cell.dispatch(3, 2.0, max_per_slot=4)
    cell.mark_running(w.worker_id, w.epoch, [(sent[0].task_id, sent[0].attempt)], 2.0)
    high = submit(cell, 1, priority=9)
    refs = [(d.task_id, d.attempt) for d in sent]
    # A stale attempt and the started task are ignored; the other two go back to the queue.
    assert cell.take_back([*refs, (low[1], 99)]) == 2
    assert cell.stats().revoked_total == 2
    assert cell.get(low[0]).state == TaskState.RUNNING
    assert [cell.get(t).state for t in low[1:]] == [TaskState.QUEUED] * 2
    assert cell.worker(w.worker_id).in_flight == 1
    assert [t.task_id for t in cell.list_tasks([TaskState.QUEUED])] == [*low[1:], *high]
    finish(cell, sent[0])
    assert [d.task_id for d in cell.dispatch(3, 3.0)] == high  # the high one first, alone


def test_dispatch_round_reports_the_best_key_left(cell: Cell) -> None:
    workers(cell, 2)
    submit(cell, 2, priority=0)
    done = cell.dispatch_round(1, 2.0)
    assert len(done.dispatches) == 1 and done.top_key > done.dispatches[0].key
    done = cell.dispatch_round(1, 2.0)
    assert len(done.dispatches) == 1 and done.top_key == -1


# ---- aging


def test_aging_lets_an_old_low_task_overtake_a_newer_high_one(cell: Cell) -> None:
    workers(cell, 1)
    cell.configure_scheduling(Policy.LEAST_LOADED, aging_s=1.0)
    base = cell.generation / 1e9
    [low] = submit(cell, 1, priority=0, now=base + 10.0)
    [high_soon] = submit(cell, 1, priority=1, now=base + 10.5)  # 1 level > 0.5 s waited
    [high_late] = submit(cell, 1, priority=1, now=base + 12.0)  # 1 level < 2 s waited
    order = [d.task_id for d in cell.dispatch(1, 20.0)]
    order += [d.task_id for d in _drain(cell, 2)]
    assert order == [high_soon, low, high_late]
    stats = cell.stats()
    assert (stats.policy, stats.aging_s) == (Policy.LEAST_LOADED, 1.0)


def test_changing_the_aging_period_rekeys_the_queue(cell: Cell) -> None:
    workers(cell, 1)
    base = cell.generation / 1e9
    [low] = submit(cell, 1, priority=0, now=base + 1.0)
    [high] = submit(cell, 1, priority=1, now=base + 5.0)
    cell.configure_scheduling(Policy.ROUND_ROBIN, aging_s=1.0)
    assert cell.check() == []
    assert [d.task_id for d in _drain(cell, 2)] == [low, high]
    cell.configure_scheduling(Policy.ROUND_ROBIN, aging_s=0.0)
    with pytest.raises(ValueError, match="aging_s"):
        cell.configure_scheduling(Policy.ROUND_ROBIN, aging_s=float("nan"))


def _drain(cell: Cell, n: int) -> list[Dispatch]:
    """Dispatch n tasks one at a time on a 1-slot cell, finishing each."""
    out = []
    for _ in range(n):
        for running in cell.list_tasks([TaskState.DISPATCHED, TaskState.RUNNING]):
            report = Completion(running.task_id, running.attempt, TaskState.SUCCEEDED, b"", False)
            cell.complete(running.worker_id, running.worker_epoch, [report], 30.0)
        [d] = cell.dispatch(1, 30.0)
        out.append(d)
    for running in cell.list_tasks([TaskState.DISPATCHED]):
        report = Completion(running.task_id, running.attempt, TaskState.SUCCEEDED, b"", False)
        cell.complete(running.worker_id, running.worker_epoch, [report], 30.0)
    return out


# ---- what the scheduler sent


def _sent(task_id: int, key: int, worker: int = 1, attempt: int = 1) -> Dispatch:
    return Dispatch(task_id, attempt, worker, 1, f"w{worker}", b"", 0, key=key)


class _Table:
    """Stands in for the cell: which (task id, attempt) are still unstarted, and the table scan."""

    def __init__(self, unstarted: set[tuple[int, int]], keys: dict[int, int]) -> None:
        self.unstarted = unstarted
        self.keys = keys
        self.scans = 0

    def still(self, ids: np.ndarray, attempts: np.ndarray) -> np.ndarray:
        pairs = zip(ids.tolist(), attempts.tolist(), strict=True)
        return np.array([p in self.unstarted for p in pairs], dtype=bool)

    def scan(self, worker_id: int, epoch: int) -> list[tuple[int, int, int]]:
        self.scans += 1
        found = [(self.keys[t], t, a) for t, a in self.unstarted if t // 10 == worker_id]
        return sorted(found, reverse=True)


def test_prefetched_asks_back_what_a_better_queued_key_overtakes() -> None:
    table = _Table({(11, 1), (12, 1), (21, 1)}, {10: 5, 11: 50, 12: 60, 21: 70})
    prefetched = Prefetched(table.scan, table.still, lambda worker: 16)
    prefetched.sent([_sent(10, 5), _sent(11, 50), _sent(12, 60), _sent(21, 70, worker=2)])
    assert prefetched.overtaken(80) == [], "nothing sent is worse"
    lots = {lot.address: lot.refs for lot in prefetched.overtaken(40)}
    assert lots == {"w1": [(12, 1), (11, 1)], "w2": [(21, 1)]}
    assert prefetched.overtaken(40) == [], "asked once: the watermark dropped to 40"
    assert table.scans == 0, "the ring of recent dispatches was enough"
    assert prefetched.overtaken(-1) == []
    prefetched.forget({(2, 1)})
    assert len(prefetched) == 1


def test_prefetched_reads_the_table_for_a_worker_bigger_than_its_ring() -> None:
    table = _Table({(11, 1)}, {11: 50})
    prefetched = Prefetched(table.scan, table.still, lambda worker: 1 << 20)
    prefetched.sent([_sent(11, 50)])
    assert [lot.refs for lot in prefetched.overtaken(40)] == [[(11, 1)]]
    assert table.scans == 1


def test_prefetched_surplus_names_the_worst_unstarted_of_overloaded_workers() -> None:
    table = _Table({(3, 1), (4, 1), (12, 1)}, {3: 3, 4: 4, 12: 12})
    prefetched = Prefetched(table.scan, table.still, lambda worker: 16)
    prefetched.sent([_sent(i, i) for i in (1, 2, 3, 4)] + [_sent(12, 12, worker=2)])
    lots = prefetched.surplus({(1, 1): 1, (2, 1): 0, (9, 9): 5})
    assert [(lot.address, lot.refs) for lot in lots] == [("w1", [(4, 1)])]


def test_unstarted_lists_a_workers_sent_tasks_worst_first(cell: Cell) -> None:
    [w] = workers(cell, 1)
    low = submit(cell, 3, priority=0)
    sent = cell.dispatch(3, 2.0, max_per_slot=4)
    cell.mark_running(w.worker_id, w.epoch, [(sent[0].task_id, sent[0].attempt)], 2.0)
    got = cell.unstarted(w.worker_id, w.epoch)
    assert [(tid, att) for _, tid, att in got] == [(low[2], 1), (low[1], 1)]
    assert got[0][0] == sent[2].key
    assert cell.unstarted(w.worker_id, w.epoch + 1) == []


def test_loads_counts_idle_slots_and_tasks_held_beyond_slots(cell: Cell) -> None:
    a, _ = workers(cell, 1, 2)
    submit(cell, 4)
    assert cell.loads() == (3, {})
    cell.dispatch(4, 2.0, max_per_slot=4)  # least-loaded: a 2 (1 slot), b 2 (2 slots)
    assert cell.loads() == (0, {(a.worker_id, a.epoch): 1})
