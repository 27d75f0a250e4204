"""Placement policies: which ALIVE worker gets the next task of a dispatch round.

One `Placement` per round (the caller holds the cell lock); `Cursor` carries what a policy keeps
between rounds (the round-robin position, the random generator). Every policy only picks workers
with room (`in_flight < slots x cap`, where `cap` is 1 or the prefetch depth of this task) and,
for a task with needs, only among the workers `shm.resources.fitting` returns. What each costs
per placement, W = ALIVE workers:

- least-loaded: the worker heap's top, O(1) to read and O(log W) to re-key after the assignment;
  a task with needs: one numpy pass over its fitting workers, O(W).
- round-robin: the next worker after the last one picked, in worker-slot order; full workers are
  stepped over, so O(1) amortised over a round plus one O(W log W) sort of the ALIVE workers
  per round.
- random: up to `_TRIES` uniform draws, then one numpy pass over the workers with room: O(1)
  expected while most workers have room.
- power-of-two: two such draws, the less loaded of the two wins: O(1) expected.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from heapd.shm import derived
from heapd.shm.memory import CellMemory
from heapd.shm.types import Policy

Ints = npt.NDArray[np.int64]

_TRIES = 4  # random draws before falling back to a scan of the workers with room


@dataclass
class Cursor:
    """A policy's state between rounds (in the scheduler process; lost at a restart, harmless)."""

    policy: Policy = Policy.LEAST_LOADED
    rng: random.Random = field(default_factory=random.Random)
    last: int = -1  # round-robin: worker slot picked last


class Placement:
    """Picks workers for one dispatch round under the cell lock."""

    def __init__(self, mem: CellMemory, cursor: Cursor) -> None:
        self._mem = mem
        self._cursor = cursor
        self._alive: list[int] | None = None  # sorted ALIVE worker slots, computed on demand

    def pick(self, cap: int) -> int:
        """A worker with room for one more task at `cap` tasks per slot, -1 if none has. For
        round-robin, random and power-of-two: least-loaded reads the worker heap's top, which
        `shm.dispatch` does inline on its hot loop."""
        policy = self._cursor.policy
        if policy is Policy.ROUND_ROBIN:
            return self._next_after(self._alive_slots(), cap)
        first = self._draw(cap)
        if first < 0 or policy is Policy.RANDOM:
            return first
        return self._less_loaded(first, self._draw(cap))

    def with_room(self, cap: int) -> Ints:
        """Every ALIVE worker with room at `cap` tasks per slot, in worker-slot order."""
        alive = np.asarray(self._alive_slots(), dtype=np.int64)
        rec = self._mem.workers.rec
        room = rec["in_flight"][alive].astype(np.int64) < rec["slots"][alive].astype(np.int64) * cap
        picked: Ints = alive[room]
        return picked

    def choose(self, candidates: Ints) -> int:
        """One of `candidates` (non-empty, each with room and fitting), by policy."""
        policy = self._cursor.policy
        if policy is Policy.LEAST_LOADED:
            return int(candidates[np.argmin(derived.worker_keys(self._mem, candidates))])
        if policy is Policy.ROUND_ROBIN:
            return self._next_after([int(w) for w in candidates], 0)
        rng = self._cursor.rng
        first = int(candidates[rng.randrange(len(candidates))])
        if policy is Policy.RANDOM:
            return first
        return self._less_loaded(first, int(candidates[rng.randrange(len(candidates))]))

    # ---- helpers

    def _has_room(self, w: int, cap: int) -> bool:
        workers = self._mem.workers
        return bool(workers.in_flight[w] < workers.slots[w] * cap)

    def _alive_slots(self) -> list[int]:
        if self._alive is None:
            items, _ = self._mem.worker_heap.entries()  # the worker heap holds exactly the ALIVE
            self._alive = sorted(int(w) for w in items)
        return self._alive

    def _next_after(self, ordered: list[int], cap: int) -> int:
        """The first worker after the cursor (wrapping) with room; cap 0: any of `ordered`."""
        if not ordered:
            return -1
        start = bisect.bisect_right(ordered, self._cursor.last)
        n = len(ordered)
        for i in range(n):
            w = ordered[(start + i) % n]
            if cap == 0 or self._has_room(w, cap):
                self._cursor.last = w
                return w
        return -1

    def _draw(self, cap: int) -> int:
        alive = self._alive_slots()
        if not alive:
            return -1
        rng = self._cursor.rng
        for _ in range(_TRIES):
            w = alive[rng.randrange(len(alive))]
            if self._has_room(w, cap):
                return w
        room = self.with_room(cap)
        return int(room[rng.randrange(len(room))]) if len(room) else -1

    def _less_loaded(self, a: int, b: int) -> int:
        if b < 0 or a == b:
            return a
        keys = derived.worker_keys(self._mem, np.asarray([a, b], dtype=np.int64))
        return a if keys[0] <= keys[1] else b
