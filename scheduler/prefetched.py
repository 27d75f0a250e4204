"""What the scheduler may take back from workers: unstarted tasks a queued one must overtake,
and, at the end of a drain, unstarted tasks held beyond a worker's slots while others idle.

A worker runs what it holds in (priority, task id) order, but it cannot know about a task queued
after its buffer was filled. So the scheduler keeps, per worker registration, the worst heap key
it has sent there (a watermark: one comparison per dispatch, nothing per task to clean up), and
after each round compares it with the best key still queued. Only when a queued task beats it
does it read, from the task table, which of that worker's tasks are still DISPATCHED (sent, not
started) with a worse key, and asks for them back. The worker gives back only what it has not
started; the cell requeues exactly those (fenced by attempt), so a revocation never runs a task
twice. The same revocation moves work at the end of a drain (`surplus`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from heapd import shm

Ref = tuple[int, int]  # (task_id, attempt)
Owner = tuple[int, int]  # (worker_id, epoch)
# (worker_id, epoch) -> that registration's DISPATCHED tasks as (key, task_id, attempt), worst
# key first (`shm.Cell.unstarted`).
Unstarted = Callable[[int, int], list[tuple[int, int, int]]]


@dataclass(frozen=True, slots=True)
class Overtaken:
    """Sent tasks of one worker registration to ask back."""

    address: str
    worker_id: int
    epoch: int
    refs: list[Ref]


class Prefetched:
    """The worst key sent to each worker registration since it was last asked back."""

    def __init__(self, unstarted: Unstarted) -> None:
        self._unstarted = unstarted
        self._worst: dict[Owner, int] = {}
        self._address: dict[Owner, str] = {}

    def __len__(self) -> int:
        """Worker registrations that may hold tasks sent by this scheduler."""
        return len(self._worst)

    def sent(self, dispatches: Sequence[shm.Dispatch]) -> None:
        """Raise the watermarks by a round's dispatches."""
        worst = self._worst
        for d in dispatches:
            owner = (d.worker_id, d.worker_epoch)
            if d.key > worst.get(owner, -1):
                if owner not in worst:
                    self._address[owner] = d.address
                worst[owner] = d.key

    def overtaken(self, top_key: int) -> list[Overtaken]:
        """Unstarted tasks whose key is worse than `top_key` (the best queued), per worker;
        the watermarks drop to `top_key` (a revocation is asked once)."""
        if top_key < 0:
            return []
        out = []
        for owner, worst in list(self._worst.items()):
            if worst <= top_key:
                continue
            self._worst[owner] = top_key
            worse = [(tid, att) for key, tid, att in self._unstarted(*owner) if key > top_key]
            if worse:
                out.append(Overtaken(self._address[owner], owner[0], owner[1], worse))
        return out

    def surplus(self, owners: dict[Owner, int]) -> list[Overtaken]:
        """For worker registrations holding more than they can run (owner -> how many beyond
        their slots), their worst-keyed unstarted tasks, at most that many each."""
        out = []
        for owner, count in owners.items():
            address = self._address.get(owner)
            if address is None or count <= 0:
                continue
            picked = [(tid, att) for _, tid, att in self._unstarted(*owner)[:count]]
            if picked:
                out.append(Overtaken(address, owner[0], owner[1], picked))
        return out

    def forget(self, live: set[Owner]) -> None:
        """Drop the registrations not in `live` (workers that left or were re-registered)."""
        for owner in [o for o in self._worst if o not in live]:
            del self._worst[owner]
            del self._address[owner]
