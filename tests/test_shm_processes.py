"""Real processes on real shared memory: concurrent producers and consumers, and a lock
holder killed with SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator

import pytest

from heapd.shm import Capacities, Cell, NewTask, TaskState
from tests import shm_helpers

ctx = multiprocessing.get_context("spawn")


@pytest.fixture
def cell_name() -> Iterator[str]:
    with shm_helpers.scratch_cell_name() as name:
        yield name


def test_concurrent_producers_and_consumers_lose_and_duplicate_nothing(cell_name: str) -> None:
    per_producer, producers, consumers = 600, 2, 2
    caps = Capacities(tasks=2048, workers=8, arena_bytes=1 << 20, max_blob_bytes=1024)
    with Cell.create(cell_name, caps) as cell:
        made: multiprocessing.Queue[list[int]] = ctx.Queue()
        got: multiprocessing.Queue[list[tuple[int, bytes]]] = ctx.Queue()
        stop = ctx.Event()
        eaters = [
            ctx.Process(target=shm_helpers.consume, args=(cell_name, n, stop, got))
            for n in range(consumers)
        ]
        feeders = [
            ctx.Process(
                target=shm_helpers.produce,
                args=(cell_name, n * per_producer, per_producer, 7, made),
            )
            for n in range(producers)
        ]
        for p in eaters + feeders:
            p.start()
        submitted = [i for _ in feeders for i in made.get(timeout=60)]
        for p in feeders:
            p.join(30)
        stop.set()
        cell.scheduler_bell.ring()
        taken = [pair for _ in eaters for pair in got.get(timeout=60)]
        for p in eaters:
            p.join(30)
        assert all(p.exitcode == 0 for p in eaters + feeders)

        assert len(submitted) == len(set(submitted)) == producers * per_producer
        taken_ids = [task_id for task_id, _ in taken]
        assert sorted(taken_ids) == sorted(submitted)  # nothing lost, nothing twice
        assert sorted(int(payload) for _, payload in taken) == list(range(len(submitted)))
        assert cell.check() == []
        stats = cell.stats()
        assert stats.counts[TaskState.SUCCEEDED] == len(submitted)
        assert sorted(cell.take_finished(10_000)) == sorted(submitted)


def _kill_lock_holder(cell_name: str, write_owner: bool) -> None:
    with Cell.create(cell_name, shm_helpers.SMALL) as cell:
        cell.submit([NewTask(b"a"), NewTask(b"b")], 1.0)
        holding, ready = ctx.Event(), ctx.Event()
        times: multiprocessing.Queue[float] = ctx.Queue()
        holder = ctx.Process(target=shm_helpers.hold_lock, args=(cell_name, holding, write_owner))
        holder.start()
        assert holding.wait(30)
        waiter = ctx.Process(target=shm_helpers.submit_timed, args=(cell_name, ready, times))
        waiter.start()
        assert ready.wait(30)
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        problems = cell.check()  # blocks on the dead owner's lock, then repairs
        recovered = time.monotonic() - killed
        other = times.get(timeout=30) - killed
        waiter.join(30)
        holder.join(30)
        assert problems == []
        # README: a process killed holding the cell's lock is noticed by the others within a
        # second (shm/lock.py: 2 x POLL_S = 0.4 s by design, the rest is margin for load).
        assert recovered < 1.0 and other < 1.0, (recovered, other)
        assert cell.queue_depth() == 3  # the half-popped task is back, plus the new one
        assert cell.repairs == 1
        assert holder.exitcode == -signal.SIGKILL and waiter.exitcode == 0


def test_sigkilled_lock_owner_is_recovered_within_a_second(cell_name: str) -> None:
    _kill_lock_holder(cell_name, write_owner=True)


def test_kill_between_sem_wait_and_owner_record_is_recovered(cell_name: str) -> None:
    _kill_lock_holder(cell_name, write_owner=False)


def test_racing_opens_agree_on_one_cell(cell_name: str) -> None:
    start = ctx.Event()
    out: multiprocessing.Queue[int] = ctx.Queue()
    racers = [
        ctx.Process(target=shm_helpers.open_cell, args=(cell_name, start, out)) for _ in range(3)
    ]
    for p in racers:
        p.start()
    start.set()
    generations = {out.get(timeout=60) for _ in racers}
    for p in racers:
        p.join(30)
    assert len(generations) == 1 and all(p.exitcode == 0 for p in racers)
    with Cell.attach(cell_name) as cell:
        assert cell.generation in generations and cell.check() == []


def test_a_doorbell_survives_its_ringer_and_its_waiter_being_killed(cell_name: str) -> None:
    """Killed mid-ring (the pipe full) or mid-wait, a peer leaves nothing that wedges the bell:
    the next waiter drains the stale rings once, then sees each new ring, and rings still go
    through with the waiter gone."""
    with Cell.create(cell_name, Capacities(tasks=64, workers=4)) as cell:
        for target in (shm_helpers.ring_forever, shm_helpers.wait_forever):
            ready = ctx.Event()
            peer = ctx.Process(target=target, args=(cell_name, ready))
            peer.start()
            assert ready.wait(30)
            time.sleep(0.2)  # ringing (the pipe fills up) or blocked in its wait
            assert peer.pid is not None
            os.kill(peer.pid, signal.SIGKILL)
            peer.join(30)
        assert cell.scheduler_bell.wait(1.0) is True  # the dead ringer's rings, at once
        assert cell.scheduler_bell.wait(0) is False
        cell.submit([NewTask(b"x")], 1.0)  # rings the scheduler
        assert cell.scheduler_bell.wait(1.0) is True
        cell.plm_bell.ring()  # its waiter died: the ring neither blocks nor fails
        assert cell.plm_bell.wait(1.0) is True
        assert cell.check() == []
