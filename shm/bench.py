"""Micro-benchmark of the shared-memory task heap: `python -m heapd.shm.bench [--json]`.

For each heap size n it measures, on a real cell's task heap: push, pop and push+pop
microseconds per operation at about n queued tasks; the same push+pop on a plain
`heapq` list of (key, slot) tuples in the same run (the ratio is ours / heapq);
batched push+pop per task (256 per batch, each batch under one lock acquisition, as
`Cell.submit` / `Cell.dispatch` do); and shared-memory bytes per queued task, payload
excluded. Keys are real task keys: 5 priority levels, FIFO sequence numbers. Each
figure is the best of a few rounds (interleaved with heapq) to damp machine noise.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from heapd.shm.cell import Cell
from heapd.shm.heap import IndexedHeap
from heapd.shm.layout import bytes_per_task, task_key
from heapd.shm.types import Capacities

SIZES = (1_000, 100_000, 1_000_000)
BATCH = 256
ROUNDS = 3


@dataclass
class Figures:
    """One row of the report (microseconds unless named otherwise)."""

    push_us: float
    pop_us: float
    push_pop_us: float
    heapq_push_pop_us: float
    ratio: float
    batched_push_pop_us: float
    bytes_per_task: int


def _keys(rng: np.random.Generator, first_seq: int, count: int) -> list[int]:
    priority = rng.integers(-2, 3, count)
    seq = np.arange(first_seq, first_seq + count)
    return [task_key(int(p), int(s)) for p, s in zip(priority, seq, strict=True)]


def _timed(run: Callable[[], object], ops: int) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / ops * 1e6


class _Run:
    """The state of one size: the cell's heap, a heapq list, fresh keys."""

    def __init__(self, cell: Cell, n: int, ops: int, seed: int) -> None:
        self.cell, self.n, self.ops = cell, n, ops
        self.heap: IndexedHeap = cell._m.task_heap
        self.rng = np.random.default_rng(seed)
        initial = np.asarray(_keys(self.rng, 1, n), dtype=np.int64)
        self.heap.rebuild(np.arange(n, dtype=np.int32), initial)
        items: npt.NDArray[np.int32] = np.arange(n, dtype=np.int32)
        self.plain = list(zip(initial.tolist(), items.tolist(), strict=True))
        heapq.heapify(self.plain)
        self.seq = n + 1

    def fresh(self, count: int) -> list[int]:
        keys = _keys(self.rng, self.seq, count)
        self.seq += count
        return keys

    def push_then_pop(self) -> tuple[float, float]:
        """Push m new entries on top of n, then pop m: per-operation times."""
        m = min(self.ops, self.n)
        keys, heap = self.fresh(m), self.heap
        slots = range(self.n, self.n + m)

        def pushes() -> None:
            push = heap.push
            for slot, key in zip(slots, keys, strict=True):
                push(slot, key)

        def pops() -> None:
            pop = heap.pop
            for _ in slots:
                pop()

        push, pop = _timed(pushes, m), _timed(pops, m)
        self.renumber()
        return push, pop

    def renumber(self) -> None:
        """Make the heap's items 0..n-1 again (pops free other slots than pushes took)."""
        keys = self.heap.entries()[1]
        self.heap.rebuild(np.arange(len(keys), dtype=np.int32), keys)

    def push_pop(self) -> float:
        """One push then one pop at a steady n, per pair."""
        keys, heap = self.fresh(self.ops), self.heap

        def run() -> None:
            push, pop, free = heap.push, heap.pop, self.n
            for key in keys:
                push(free, key)
                free = pop()

        took = _timed(run, len(keys))
        self.renumber()
        return took

    def heapq_push_pop(self) -> float:
        keys, plain = self.fresh(self.ops), self.plain

        def run() -> None:
            push, pop, free = heapq.heappush, heapq.heappop, self.n
            for key in keys:
                push(plain, (key, free))
                free = pop(plain)[1]

        return _timed(run, len(keys))

    def batched(self) -> float:
        """Batches of BATCH pushed, then popped, each under one lock acquisition."""
        batches = max(1, self.ops // BATCH)
        keys = [self.fresh(BATCH) for _ in range(batches)]
        cell = self.cell

        def run() -> None:
            free = list(range(self.n, self.n + BATCH))
            for batch in keys:
                with cell._locked() as mem:
                    mem.task_heap.push_many(free, batch)
                with cell._locked() as mem:
                    free = mem.task_heap.pop_many(BATCH)

        took = _timed(run, batches * BATCH)
        self.renumber()
        return took


def measure(n: int, ops: int) -> Figures:
    """All figures for a heap of about n entries."""
    name = f"bench-{os.getpid()}"
    Cell.unlink(name)
    caps = Capacities(tasks=2 * n + BATCH, workers=1, arena_bytes=1 << 16, max_blob_bytes=1024)
    with Cell.create(name, caps) as cell:
        try:
            run = _Run(cell, n, ops, seed=n)
            best: dict[str, float] = {}
            for _ in range(ROUNDS):
                push, pop = run.push_then_pop()
                found = {
                    "push_us": push,
                    "pop_us": pop,
                    "push_pop_us": run.push_pop(),
                    "heapq_push_pop_us": run.heapq_push_pop(),
                    "batched_push_pop_us": run.batched(),
                }
                best = {k: min(v, best.get(k, v)) for k, v in found.items()}
        finally:
            Cell.unlink(name)
    return Figures(
        **{k: round(v, 3) for k, v in best.items()},
        ratio=round(best["push_pop_us"] / best["heapq_push_pop_us"], 2),
        bytes_per_task=bytes_per_task(),
    )


_COLUMNS: tuple[tuple[str, Callable[[int, Figures], str]], ...] = (
    ("queued", lambda n, f: f"{n:,}"),
    ("push µs", lambda n, f: f"{f.push_us:.2f}"),
    ("pop µs", lambda n, f: f"{f.pop_us:.2f}"),
    ("push+pop µs", lambda n, f: f"{f.push_pop_us:.2f}"),
    ("heapq push+pop µs", lambda n, f: f"{f.heapq_push_pop_us:.2f}"),
    ("ratio", lambda n, f: f"{f.ratio:.2f}x"),
    ("batched µs/task", lambda n, f: f"{f.batched_push_pop_us:.2f}"),
    ("bytes/task", lambda n, f: str(f.bytes_per_task)),
)


def _table(results: dict[int, Figures]) -> str:
    rows = [[title for title, _ in _COLUMNS]]
    rows += [[cell(n, f) for _, cell in _COLUMNS] for n, f in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table, or JSON with --json."""
    parser = argparse.ArgumentParser(prog="python -m heapd.shm.bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="heap sizes")
    parser.add_argument("--ops", type=int, default=20_000, help="operations per measurement")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    gc.disable()  # both sides allocate; keep collector pauses out of the figures
    try:
        results = {n: measure(n, args.ops) for n in sizes}
    finally:
        gc.enable()
    if args.json:
        print(json.dumps({"sizes": {str(n): asdict(f) for n, f in results.items()}}))
    else:
        print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
