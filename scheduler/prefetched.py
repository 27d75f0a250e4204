"""What the scheduler sent to each worker and may still take back, by heap key.

A worker runs what it holds in (priority, task id) order, but it cannot know about a task queued
after its buffer was filled. So the scheduler remembers, per worker registration, the key of every
task it sent (a max-heap: the worst first), and after each round compares them with the best key
still queued: whatever is worse and not yet started is revoked, so the queued task takes the first
slot that frees. The worker gives back only what it has not started; the cell requeues exactly
those (fenced by attempt), so a revocation never runs a task twice. The same revocation moves
work at the end of a drain: when the queue is empty and some slots idle while another worker
holds more than it can run, its worst-keyed unstarted tasks come back (`surplus`) and go to the
idle slots.

Entries of tasks that already started or ended are dropped lazily: when they surface at the top,
and a prune (one vectorised read of their states under the lock) every `PRUNE_AT`
dispatches, which keeps the bookkeeping O(1) amortised per dispatch.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from heapd import shm

Ref = tuple[int, int]  # (task_id, attempt)
StillDispatched = Callable[[Sequence[Ref]], list[bool]]

PRUNE_AT = 4096


@dataclass
class _Sent:
    """One worker registration's sent tasks: (-key, task_id, attempt), a max-heap by key."""

    address: str
    heap: list[tuple[int, int, int]] = field(default_factory=list)
    prune_at: int = PRUNE_AT


@dataclass(frozen=True, slots=True)
class Overtaken:
    """Sent tasks of one worker registration that a queued task must overtake."""

    address: str
    worker_id: int
    epoch: int
    refs: list[Ref]


class Prefetched:
    """The tasks sent per worker registration, worst key first."""

    def __init__(self, still_dispatched: StillDispatched) -> None:
        self._still = still_dispatched
        self._sent: dict[tuple[int, int], _Sent] = {}
        self._since_prune = 0

    def __len__(self) -> int:
        return sum(len(sent.heap) for sent in self._sent.values())

    def sent(self, dispatches: Sequence[shm.Dispatch]) -> None:
        """Remember a round's dispatches; every PRUNE_AT of them, forget what has started
        everywhere (a worker that left is forgotten entirely then)."""
        for d in dispatches:
            owner = (d.worker_id, d.worker_epoch)
            sent = self._sent.get(owner)
            if sent is None:
                sent = self._sent[owner] = _Sent(d.address)
            heapq.heappush(sent.heap, (-d.key, d.task_id, d.attempt))
            if len(sent.heap) > sent.prune_at:
                self._prune(sent)
        self._since_prune += len(dispatches)
        if self._since_prune >= PRUNE_AT:
            self._since_prune = 0
            for owner, sent in list(self._sent.items()):
                self._prune(sent)
                if not sent.heap:
                    del self._sent[owner]

    def overtaken(self, top_key: int) -> list[Overtaken]:
        """Sent tasks, still unstarted, whose key is worse than `top_key` (the best queued);
        they are forgotten here (a revocation is asked once)."""
        if top_key < 0:
            return []
        out = []
        for (worker_id, epoch), sent in list(self._sent.items()):
            heap = sent.heap
            worse: list[Ref] = []
            while heap and -heap[0][0] > top_key:
                _, task_id, attempt = heapq.heappop(heap)
                worse.append((task_id, attempt))
            if not heap:
                del self._sent[(worker_id, epoch)]
            if not worse:
                continue
            live = [ref for ref, ok in zip(worse, self._still(worse), strict=True) if ok]
            if live:
                out.append(Overtaken(sent.address, worker_id, epoch, live))
        return out

    def surplus(self, owners: dict[tuple[int, int], int]) -> list[Overtaken]:
        """For worker registrations holding more than they can run (owner -> how many beyond
        their slots), their worst-keyed unstarted tasks, at most that many each: work to move
        to idle slots elsewhere once the queue is empty. Forgotten here, as `overtaken`."""
        out = []
        for owner, count in owners.items():
            sent = self._sent.get(owner)
            if sent is None or count <= 0:
                continue
            picked = [heapq.heappop(sent.heap) for _ in range(min(count, len(sent.heap)))]
            if not sent.heap:
                del self._sent[owner]
            refs = [(task_id, attempt) for _, task_id, attempt in picked]
            live = [ref for ref, ok in zip(refs, self._still(refs), strict=True) if ok]
            if live:
                out.append(Overtaken(sent.address, owner[0], owner[1], live))
        return out

    def _prune(self, sent: _Sent) -> None:
        """Keep only the entries still unstarted; let the bound grow if most of them are."""
        refs = [(task_id, attempt) for _, task_id, attempt in sent.heap]
        sent.heap = [e for e, ok in zip(sent.heap, self._still(refs), strict=True) if ok]
        heapq.heapify(sent.heap)
        sent.prune_at = max(PRUNE_AT, 2 * len(sent.heap))
