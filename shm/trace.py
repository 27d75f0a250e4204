"""Per-hop timestamps of traced tasks: one ring per control-plane role in the segment.

A task submitted with `trace` (a sample, e.g. by `heapd bench --trace`) has F_TRACED in its
record; every role it passes records (task id, hop, unix ns) as it goes: the PLM when the
submit arrives, when the task is queued and when it is in the journal; the scheduler when it
pops and when it writes the dispatch; the register when the heartbeat carrying the result
arrives (with the worker's own six stamps, which ride in that result) and when it has settled
it; the PLM when it collects the settled task and when it has written the result to the client's
stream. A reader joins them by task id. The clock is the wall clock (unix ns), so stamps of
roles on one host compare exactly; a worker on another host adds its clock's offset.

Each role writes only its own ring (`Writer`), so writing takes no lock: an entry is written,
then the ring's count. Rings wrap (TRACE_ENTRIES each), keeping the most recent entries. A
reader racing a writer may see one entry torn; the bench reads after its run.

Ring layout (section `trace` of `shm.layout`), per writer: one int64 count, 7 int64 words unused,
then TRACE_ENTRIES entries of three int64: task id, hop, unix ns.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

TRACE_ENTRIES = 4096
_HEAD_WORDS = 8
_ENTRY_WORDS = 3


class Hop(enum.IntEnum):
    """Where a traced task was, in the order a round trip passes them."""

    CLIENT_SENT = 0  # recorded by the client itself (never in the rings)
    PLM_RECEIVED = 1
    PLM_QUEUED = 2  # on the task heap, the scheduler's doorbell rung
    PLM_COMMITTED = 3  # in the journal: the submitter is answered (not on the result's path)
    SCHEDULER_POPPED = 4
    SCHEDULER_SENT = 5  # handed to the AssignStream (stamped before the write)
    WORKER_RECEIVED = 6
    WORKER_HANDED = 7  # written to a pool child's pipe
    CHILD_STARTED = 8
    CHILD_FINISHED = 9
    WORKER_READ = 10  # the child's result read by the worker
    WORKER_SENT = 11  # the heartbeat carrying the result built (just before its write)
    REGISTER_RECEIVED = 12
    REGISTER_SETTLED = 13  # terminal in the cell, the PLM's doorbell rung
    PLM_COLLECTED = 14  # taken from the completion ring
    PLM_SENT = 15  # handed to the client's WatchTasks stream (stamped before the write)
    CLIENT_RECEIVED = 16  # read from the stream by the client (the client records it)
    CLIENT_RESOLVED = 17  # the caller has the result (the client records it)


# The worker's stamps, in the order TaskCompletion.trace_ns carries them.
WORKER_HOPS = (
    Hop.WORKER_RECEIVED,
    Hop.WORKER_HANDED,
    Hop.CHILD_STARTED,
    Hop.CHILD_FINISHED,
    Hop.WORKER_READ,
    Hop.WORKER_SENT,
)


class Writer(enum.IntEnum):
    """Whose ring: one writer process each."""

    PLM = 0
    SCHEDULER = 1
    REGISTER = 2


WRITERS = len(Writer)
RING_WORDS = _HEAD_WORDS + TRACE_ENTRIES * _ENTRY_WORDS
SECTION_BYTES = WRITERS * RING_WORDS * 8


class Stamp(NamedTuple):
    """One recorded hop of one task."""

    task_id: int
    hop: Hop
    ns: int


class TraceRings:
    """The rings over the segment's trace section (`words`: int64 view of the section)."""

    def __init__(self, words: memoryview) -> None:
        self._words = words

    def record(self, writer: Writer, hop: Hop, task_ids: Iterable[int], ns: int = 0) -> None:
        """Record `hop` for these tasks at `ns` (now if 0). Only `writer`'s process may call."""
        ns = ns or time.time_ns()
        words = self._words
        base = writer * RING_WORDS
        count = words[base]
        for task_id in task_ids:
            at = base + _HEAD_WORDS + (count % TRACE_ENTRIES) * _ENTRY_WORDS
            words[at] = task_id
            words[at + 1] = hop
            words[at + 2] = ns
            count += 1
        words[base] = count  # after the entries: a reader never counts an unwritten one

    def read(self) -> list[Stamp]:
        """Every stamp the rings still hold, oldest first within each ring."""
        words = np.frombuffer(self._words, dtype=np.int64).reshape(WRITERS, RING_WORDS)
        stamps: list[Stamp] = []
        for ring in words:
            count = int(ring[0])
            entries = ring[_HEAD_WORDS:].reshape(TRACE_ENTRIES, _ENTRY_WORDS)
            held = min(count, TRACE_ENTRIES)
            order = [(count - held + k) % TRACE_ENTRIES for k in range(held)]
            stamps += [Stamp(int(e[0]), Hop(int(e[1])), int(e[2])) for e in entries[order]]
        return stamps
