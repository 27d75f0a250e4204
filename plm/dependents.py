"""Tasks waiting on dependencies, from the PLM's side: who waits on what, and what to do when a
dependency settles.

The cell holds each waiting task (PENDING, with its dependency list: `heapd.shm.deps`); the PLM
keeps the reverse map (dependency -> waiting tasks), rebuilt from the cell when a PLM starts. A
waiting task is looked at when it is submitted (its dependencies may have settled already), when
one of its dependencies settles (taken from the completion ring, before that result is delivered
and can be released), and at start. Then: every dependency SUCCEEDED -> it is queued with their
outcomes appended to its payload (the worker puts each value where the arguments name it); one
FAILED, CANCELLED or no longer known -> it fails with DEPENDENCY_FAILED naming that one, which
settles its own dependents the same way. No retry, no endless wait.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from heapd import shm
from heapd.plm.journal import Started

# A dependency in one of these states may still succeed (or has); any other fails its
# dependents: FAILED, CANCELLED, or None (the cell no longer knows it).
_NOT_FAILED = frozenset(
    {
        shm.TaskState.PENDING,
        shm.TaskState.QUEUED,
        shm.TaskState.DISPATCHED,
        shm.TaskState.RUNNING,
        shm.TaskState.SUCCEEDED,
    }
)


@dataclass(frozen=True)
class DependencyMessages:
    """The bytes dependencies need, built at the PLM's boundary (`heapd.plm.convert`)."""

    # (dependency id, its outcome) of every dependency -> the suffix appended to the payload
    inputs: Callable[[Sequence[tuple[int, bytes]]], bytes]
    # the dependency that did not succeed, when -> the dependent's FAILED outcome
    failed: Callable[[shm.DependencyState, float], bytes]
    # a dependent whose inputs do not fit in a blob, when -> its FAILED outcome
    too_big: Callable[[int, float], bytes]


class Dependents:
    """The reverse map and the resolution of waiting tasks over one cell."""

    def __init__(
        self,
        cell: shm.Cell,
        messages: DependencyMessages,
        on_started: Callable[[list[Started]], None],
    ) -> None:
        """`on_started` journals the payloads of the tasks that were queued."""
        self._cell = cell
        self._messages = messages
        self._on_started = on_started
        self._waiting_on: dict[int, set[int]] = defaultdict(set)  # dependency -> tasks
        self._after: dict[int, tuple[int, ...]] = {}  # waiting task -> its dependencies

    def rebuild(self) -> None:
        """Learn what waits in the cell (a PLM starting) and resolve it all."""
        waiting = self._cell.waiting()
        for task_id, after in waiting:
            self._remember(task_id, after)
        self.resolve([task_id for task_id, _ in waiting])

    def submitted(self, tasks: Sequence[tuple[int, Sequence[int]]]) -> None:
        """New tasks (id, dependencies): those with dependencies wait, unless already resolved."""
        waiting = [(task_id, after) for task_id, after in tasks if after]
        for task_id, after in waiting:
            self._remember(task_id, after)
        self.resolve([task_id for task_id, _ in waiting])

    def settled(self, task_ids: Sequence[int]) -> None:
        """These tasks became terminal: resolve what waits on them; a settled task itself (e.g.
        cancelled while waiting) waits on nothing any more."""
        if self._waiting_on:
            self._forget(task_ids)
            self.resolve([w for tid in task_ids for w in self._waiting_on.pop(tid, ())])

    def resolve(self, task_ids: Sequence[int]) -> None:
        """Queue the tasks whose dependencies all succeeded, fail those with one that did not;
        the others wait on."""
        if not task_ids:
            return
        now = time.time()
        start: list[tuple[int, bytes]] = []
        fail: list[tuple[int, bytes]] = []
        for task_id, deps in self._cell.dependency_states(sorted(set(task_ids))).items():
            bad = next((d for d in deps if d.state not in _NOT_FAILED), None)
            if bad is not None:
                fail.append((task_id, self._messages.failed(bad, now)))
            elif all(d.state == shm.TaskState.SUCCEEDED for d in deps):
                inputs = [(d.task_id, d.result or b"") for d in deps]
                start.append((task_id, self._messages.inputs(inputs)))
        queued, too_big = self._cell.start_waiting(start)
        fail += [(task_id, self._messages.too_big(task_id, now)) for task_id in too_big]
        self._cell.fail_waiting(fail, now)  # on the ring: their own dependents follow
        self._forget([task_id for task_id, _ in start + fail])
        if queued:
            self._on_started([Started(task_id, data) for task_id, data in queued.items()])

    def _remember(self, task_id: int, after: Sequence[int]) -> None:
        self._after[task_id] = tuple(after)
        for dep in after:
            self._waiting_on[dep].add(task_id)

    def _forget(self, task_ids: Sequence[int]) -> None:
        """Drop resolved tasks from the map (the entries of their other dependencies)."""
        for task_id in task_ids:
            for dep in self._after.pop(task_id, ()):
                waiting = self._waiting_on.get(dep)
                if waiting is not None:
                    waiting.discard(task_id)
                    if not waiting:
                        del self._waiting_on[dep]
