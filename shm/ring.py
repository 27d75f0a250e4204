"""The completion ring: ids of tasks that became terminal, read by the PLM.

Bounded by construction: an entry is pushed when a task becomes terminal and marks it
F_NOTIFY; at most one live entry per task slot, so T entries always fit. Entries go
stale when the PLM releases a task before taking it; a push into a full ring first
compacts the stale ones away. Derived state: the live entries are exactly the
terminal tasks with F_NOTIFY, so repair can rebuild the ring from the task table.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from heapd.shm.layout import F_NOTIFY, SLOT_MASK, H
from heapd.shm.tables import TaskTable
from heapd.shm.types import TaskState

_TERMINAL_MIN = int(TaskState.SUCCEEDED)


class CompletionRing:
    """FIFO of task ids between monotonic head and tail header words."""

    __slots__ = ("_hdr", "_ring", "_ring_np", "_tasks", "capacity")

    def __init__(self, root: memoryview, at: int, tasks: TaskTable, hdr: memoryview) -> None:
        self.capacity = tasks.capacity
        self._tasks = tasks
        self._hdr = hdr
        self._ring = root[at : at + 8 * self.capacity].cast("Q")
        self._ring_np = np.frombuffer(self._ring, dtype=np.uint64)

    def release(self) -> None:
        """Drop the views so the segment can be unmapped."""
        del self._ring_np
        self._ring.release()

    def __len__(self) -> int:
        return int(self._hdr[H.RING_TAIL] - self._hdr[H.RING_HEAD])

    def is_live(self, task_id: int) -> bool:
        """Whether an entry still names a terminal task waiting to be taken."""
        tasks, slot = self._tasks, task_id & SLOT_MASK
        return bool(
            slot < tasks.capacity
            and tasks.id[slot] == task_id
            and tasks.state[slot] >= _TERMINAL_MIN
            and tasks.flags[slot] & F_NOTIFY
        )

    def push(self, task_id: int) -> None:
        """Append a task id (its record must already carry F_NOTIFY)."""
        if len(self) >= self.capacity:
            self.compact()
        tail = self._hdr[H.RING_TAIL]
        self._ring[tail % self.capacity] = task_id
        self._hdr[H.RING_TAIL] = tail + 1

    def pop(self) -> int:
        """The oldest entry (possibly stale), or 0 when empty."""
        head = self._hdr[H.RING_HEAD]
        if head >= self._hdr[H.RING_TAIL]:
            return 0
        task_id = int(self._ring[head % self.capacity])
        self._hdr[H.RING_HEAD] = head + 1
        return task_id

    def entries(self) -> npt.NDArray[np.uint64]:
        """Copies of the entries from head to tail."""
        head, n = int(self._hdr[H.RING_HEAD]), len(self)
        if not 0 <= n <= self.capacity:
            return np.empty(0, dtype=np.uint64)
        at = (head + np.arange(n)) % self.capacity
        return self._ring_np[at]

    def compact(self) -> None:
        """Drop stale and repeated entries, keeping order."""
        self.rebuild([task_id for task_id in self._unique_entries() if self.is_live(task_id)])

    def _unique_entries(self) -> list[int]:
        seen: set[int] = set()
        out = []
        for task_id in self.entries().tolist():
            if task_id not in seen:
                seen.add(task_id)
                out.append(task_id)
        return out

    def rebuild(self, task_ids: list[int] | npt.NDArray[np.uint64]) -> None:
        """Make the ring hold exactly these ids, oldest first."""
        ids = np.asarray(task_ids, dtype=np.uint64)
        if len(ids) > self.capacity:
            raise ValueError("completion ring: more entries than task slots")
        head = int(self._hdr[H.RING_HEAD])
        if head < 0:
            head = 0
        self._ring_np[(head + np.arange(len(ids))) % self.capacity] = ids
        self._hdr[H.RING_HEAD] = head
        self._hdr[H.RING_TAIL] = head + len(ids)

    def check(self) -> list[str]:
        """Problems: bad head/tail, a terminal F_NOTIFY task missing or listed twice."""
        n = len(self)
        if self._hdr[H.RING_HEAD] < 0 or not 0 <= n <= self.capacity:
            head, tail = int(self._hdr[H.RING_HEAD]), int(self._hdr[H.RING_TAIL])
            return [f"completion ring: head {head} / tail {tail} out of range"]
        rec = self._tasks.rec
        finished = rec["state"] >= _TERMINAL_MIN
        notify_ids = rec["id"][((rec["flags"] & F_NOTIFY) != 0) & finished]
        entries = self.entries()
        live = entries[np.isin(entries, notify_ids)]
        problems: list[str] = []
        if len(np.unique(live)) != len(live):
            problems.append("completion ring: a finished task is listed twice")
        missing = np.setdiff1d(notify_ids, live)
        problems += [
            f"completion ring: finished task {int(t)} is not in the ring" for t in missing[:5]
        ]
        stray = np.flatnonzero(((rec["flags"] & F_NOTIFY) != 0) & ~finished)
        problems += [
            f"task slot {int(s)}: notify flag on a task that is not finished" for s in stray[:5]
        ]
        return problems
