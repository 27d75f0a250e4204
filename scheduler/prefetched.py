"""What the scheduler may take back from workers: unstarted tasks a queued one must overtake,
and, at the end of a drain, unstarted tasks held beyond a worker's slots while others idle.

A worker runs what it holds in (priority, task id) order, but it cannot know about a task queued
after its buffer was filled. So the scheduler keeps, per worker registration, the worst heap key
it has sent there (a watermark) and a ring of its last RECENT dispatches there (three flat
arrays: a few stores per dispatch, nothing to clean up). After each round it compares the
watermark with the best key still queued; only when a queued task beats it does it check which
of the ring's tasks are still DISPATCHED (sent, not started) with a worse key — one vectorised
read — and ask for them back. A worker never holds more unstarted tasks than its room (slots x
prefetch depth), and runs equal priorities in order while a lower one sent to it is revoked as
soon as it is overtaken, so its unstarted tasks are among its last `room` dispatches: the ring
reaches back far enough when room <= RECENT; for a bigger worker the task table is read.
The worker gives back only what it has not started; the cell requeues exactly those (fenced by
attempt), so a revocation never runs a task twice. The same revocation moves work at the end
of a drain (`surplus`).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from heapd import shm

Ref = tuple[int, int]  # (task_id, attempt)
Owner = tuple[int, int]  # (worker_id, epoch)
Entry = tuple[int, int, int]  # (heap key, task_id, attempt)
# (worker_id, epoch) -> that registration's DISPATCHED tasks, worst key first (a table scan:
# `shm.Cell.unstarted`).
Unstarted = Callable[[int, int], list[Entry]]
# (task ids, attempts) -> whether each is still DISPATCHED at that attempt (`Cell.still_dispatched`)
StillDispatched = Callable[[npt.NDArray[np.uint64], npt.NDArray[np.int64]], npt.NDArray[np.bool_]]

RECENT = 4096  # dispatches remembered per worker registration (96 KiB)
# worker id -> how many tasks it may hold at most (slots x prefetch depth)
Room = Callable[[int], int]


@dataclass
class _Sent:
    """One registration's watermark and ring of recent dispatches."""

    address: str
    ring_reaches: bool  # its room is at most RECENT: the ring holds all it has not started
    worst: int = -1
    count: int = 0  # dispatches recorded so far; the ring holds the last min(count, RECENT)
    keys: array[int] = field(default_factory=lambda: array("q", bytes(8 * RECENT)))
    ids: array[int] = field(default_factory=lambda: array("Q", bytes(8 * RECENT)))
    attempts: array[int] = field(default_factory=lambda: array("q", bytes(8 * RECENT)))


@dataclass(frozen=True, slots=True)
class Overtaken:
    """Sent tasks of one worker registration to ask back."""

    address: str
    worker_id: int
    epoch: int
    refs: list[Ref]


class Prefetched:
    """Per worker registration: the worst key sent since last asked back, recent dispatches."""

    def __init__(self, unstarted: Unstarted, still_dispatched: StillDispatched, room: Room) -> None:
        self._unstarted = unstarted
        self._still = still_dispatched
        self._room = room
        self._sent: dict[Owner, _Sent] = {}

    def __len__(self) -> int:
        """Worker registrations that may hold tasks sent by this scheduler."""
        return len(self._sent)

    def sent(self, dispatches: Sequence[shm.Dispatch]) -> None:
        """Record a round's dispatches."""
        owner, rec = (-1, -1), None
        for d in dispatches:
            if (d.worker_id, d.worker_epoch) != owner:
                owner = (d.worker_id, d.worker_epoch)
                rec = self._sent.get(owner)
                if rec is None:
                    reaches = self._room(d.worker_id) <= RECENT
                    rec = self._sent[owner] = _Sent(d.address, reaches)
            assert rec is not None
            at = rec.count % RECENT
            rec.keys[at], rec.ids[at], rec.attempts[at] = d.key, d.task_id, d.attempt
            rec.count += 1
            if d.key > rec.worst:
                rec.worst = d.key

    def overtaken(self, top_key: int) -> list[Overtaken]:
        """Unstarted tasks whose key is worse than `top_key` (the best queued), per worker;
        the watermarks drop to `top_key` (a revocation is asked once)."""
        if top_key < 0:
            return []
        out = []
        for owner, rec in self._sent.items():
            if rec.worst <= top_key:
                continue
            rec.worst = top_key
            worse = [
                (tid, att) for key, tid, att in self._unstarted_of(owner, rec) if key > top_key
            ]
            if worse:
                out.append(Overtaken(rec.address, owner[0], owner[1], worse))
        return out

    def surplus(self, owners: dict[Owner, int]) -> list[Overtaken]:
        """For worker registrations holding more than they can run (owner -> how many beyond
        their slots), their worst-keyed unstarted tasks, at most that many each."""
        out = []
        for owner, count in owners.items():
            rec = self._sent.get(owner)
            if rec is None or count <= 0:
                continue
            picked = [(tid, att) for _, tid, att in self._unstarted_of(owner, rec)[:count]]
            if picked:
                out.append(Overtaken(rec.address, owner[0], owner[1], picked))
        return out

    def forget(self, live: set[Owner]) -> None:
        """Drop the registrations not in `live` (workers that left or were re-registered)."""
        for owner in [o for o in self._sent if o not in live]:
            del self._sent[owner]

    def _unstarted_of(self, owner: Owner, rec: _Sent) -> list[Entry]:
        """The registration's sent, unstarted tasks, worst key first."""
        if not rec.ring_reaches:
            return self._unstarted(*owner)
        n = min(rec.count, RECENT)
        keys = np.frombuffer(rec.keys, dtype=np.int64)[:n]
        ids = np.frombuffer(rec.ids, dtype=np.uint64)[:n]
        attempts = np.frombuffer(rec.attempts, dtype=np.int64)[:n]
        live = np.flatnonzero(self._still(ids, attempts))
        order = live[np.argsort(-keys[live], kind="stable")]
        return [
            (int(k), int(i), int(a))
            for k, i, a in zip(keys[order], ids[order], attempts[order], strict=True)
        ]
