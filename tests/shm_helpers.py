"""Helpers for the shm tests: unique cell names that are always cleaned up, and the
functions run in spawned child processes (they must be importable by name)."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

from heapd.shm import Capacities, Cell, CellNames, Completion, NewTask, TaskState

SMALL = Capacities(tasks=64, workers=8, arena_bytes=64 * 256, max_blob_bytes=2048)
_counter = itertools.count()


def new_cell_name() -> str:
    """A cell name no other test (or test run) uses."""
    return f"t{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


def leftovers(name: str) -> list[str]:
    """Files of the cell still present under /dev/shm."""
    return [path for path in CellNames(name).dev_shm_paths() if os.path.exists(path)]


@contextmanager
def scratch_cell_name() -> Iterator[str]:
    """A unique cell name; every object of that cell is unlinked afterwards, even on failure."""
    name = new_cell_name()
    try:
        yield name
    finally:
        Cell.unlink(name)
        assert leftovers(name) == [], f"cell {name} left {leftovers(name)}"


# ---- run in spawned children


def produce(name: str, first: int, count: int, batch: int, out: Queue[list[int]]) -> None:
    """Submit `count` tasks whose payload is their number, in batches."""
    ids: list[int] = []
    with Cell.attach(name) as cell:
        for start in range(first, first + count, batch):
            numbers = range(start, min(start + batch, first + count))
            tasks = [NewTask(str(n).encode(), priority=n % 3) for n in numbers]
            ids += cell.submit(tasks, time.time())
    out.put(ids)


def consume(name: str, worker_no: int, stop: Event, out: Queue[list[tuple[int, bytes]]]) -> None:
    """Register a worker, dispatch and complete until stopped and the queue is empty."""
    got: list[tuple[int, bytes]] = []
    with Cell.attach(name) as cell:
        cell.register_worker(f"w{worker_no}:1", 4, os.getpid(), "host", time.time(), 1e12)
        while True:
            batch = cell.dispatch(16, time.time(), max_per_slot=1 << 20)
            for d in batch:
                done = Completion(d.task_id, d.attempt, TaskState.SUCCEEDED, d.payload)
                cell.complete(d.worker_id, d.worker_epoch, [done], time.time())
            got += [(d.task_id, d.payload) for d in batch]
            if batch:
                continue
            if stop.is_set() and cell.queue_depth() == 0:
                break
            cell.scheduler_bell.wait(0.05)
    out.put(got)


def hold_lock(name: str, holding: Event, write_owner: bool) -> None:
    """Take the cell lock, leave a half-done pop behind, signal, and block until killed.

    With write_owner=False the semaphore is taken without writing the owner record:
    the window a kill can hit between sem_wait and the record.
    """
    cell = Cell.attach(name)
    mem = cell._m
    if write_owner:
        cell._lock.acquire()
    else:
        cell._seg.lock.acquire()
    mem.task_heap.pop()  # the task stays QUEUED in the table: repair must re-push it
    holding.set()
    threading.Event().wait()


def submit_timed(name: str, ready: Event, out: Queue[float]) -> None:
    """Block on the lock behind a dead owner; report when the submit went through."""
    with Cell.attach(name) as cell:
        ready.set()
        cell.submit([NewTask(b"after")], time.time())
        out.put(time.monotonic())


def open_cell(name: str, start: Event, out: Queue[int]) -> None:
    """Race other processes to Cell.open the same cell; report its generation."""
    start.wait()
    with Cell.open(name, SMALL) as cell:
        out.put(cell.generation)


def ring_forever(name: str, ready: Event) -> None:
    """Ring the scheduler's doorbell until killed (the pipe fills; rings then drop)."""
    with Cell.attach(name) as cell:
        ready.set()
        while True:
            cell.scheduler_bell.ring()


def wait_forever(name: str, ready: Event) -> None:
    """Wait on the PLM's doorbell until killed, draining whatever rings."""
    with Cell.attach(name) as cell:
        ready.set()
        while True:
            cell.plm_bell.wait(None)
