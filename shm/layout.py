"""The byte layout of a cell's one shared-memory segment: the single place it is written down.

Segment, in order (each section starts on a 64-byte boundary, the arena on a page)::

    section             size                  contents
    header              4096                  64 int64 words, see `H`; bytes 1024..1535: the
                                              resource name table (16 x S32, see below);
                                              bytes 1536..3095: latency histograms
                                              (3 x 65 int64, see `shm.latency`);
                                              bytes 3584..3615: the registration key
                                              (`shm.secret`)
    label texts         512 x 136             LABEL_TEXT_DTYPE: label hash -> "key=value"
    task table          T x 192               TASK_DTYPE records (the truth)
    worker table        W x 520               WORKER_DTYPE records (the truth)
    task heap keys      (T + 1) x int64       heap order; [size] is a +inf sentinel
    task heap items     T x int32             task slot at each heap position
    task heap pos       T x int32             heap position of each slot, -1 = not queued
    task free stack     T x int32             free task slots, top = H.TASK_FREE_TOP
    completion ring     T x uint64            task ids that became terminal (PLM reads)
    worker heap keys    (W + 1) x int64       load key, see `worker_key`
    worker heap items   W x int32
    worker heap pos     W x int32
    worker free stack   W x int32
    trace rings         3 x 98,368            per-hop stamps of traced tasks (`shm.trace`)
    arena map           C x uint8             1 = chunk in use; C = arena_bytes // 64
    arena               C x 64                blob chunks (payloads, results, dependency lists)

Shared bytes per queued task, payload excluded: 192 (record) + 16 (heap key, item,
position) + 4 (free stack) + 8 (ring) = 220.

Resource names (header bytes 1024..1535): RESOURCE_NAMES entries of S32, a cell-wide table
indexed by the resource index of task needs and worker offers; "" = unused. Names are added
(under the lock) the first time a task or worker uses them and never removed. Label texts: an
open-addressed table (probe from hash % LABEL_TEXTS) of the "key=value" text of each label hash
seen, for display only; once full, further labels are shown by their hash.

Task record (TASK_DTYPE, 192 bytes)::

    off  field          type  meaning
    0    id             u8    (seq << 24) | slot; seq from H.TASK_SEQ, never reused
    8    worker_id      u8    worker of the current attempt, 0 = none
    16   submitted_at   f8    unix seconds; 0.0 = unset (all times)
    24   dispatched_at  f8
    32   finished_at    f8
    40   payload_chunk  u4    first arena chunk of the payload
    44   payload_len    u4    payload bytes (0 = none; chunks = ceil(len / 64))
    48   result_chunk   u4
    52   result_len     u4    valid when flags has F_RESULT
    56   attempt        u4    0 before the first dispatch, +1 per dispatch
    60   max_retries    u4
    64   timeout_ms     u4    0 = none
    68   worker_epoch   u4
    72   priority       i2    higher first
    74   needs          u1    resource needs in use: need_res/need_milli[:needs]
    75   nlabels        u1    labels asked: label_hash[:nlabels]
    76   state          u1    TaskState; written LAST: the commit point of a change
    77   flags          u1    F_RESULT | F_NOTIFY | F_PARKED | F_WAITING | F_TRACED
    78   losses         u1    attempts that ended with their worker lost (poison-task cap)
    80   need_res       u1[8] resource index (name table) of each need
    88   need_milli     u4[8] amount of each need, in thousandths
    120  label_hash     u8[8] blake2b-64 of each "key=value" asked (never 0)
    184  deps_chunk     u4    while F_WAITING: arena blob of the dependency ids (u8 each)
    188  deps_len       u4    its bytes (0 = none)

Worker record (WORKER_DTYPE, 520 bytes)::

    0    id             u8    (registration seq << 16) | slot
    8    registered_at  f8
    16   last_heartbeat f8
    24   deadline       f8    declared dead when passed
    32   tasks_done     u8
    40   last_pick      u8    H.PICK stamp of the last dispatch (tie-break: least recent)
    48   epoch          u4    global registration counter (fencing)
    52   pid            i4
    56   slots          u4
    60   in_flight      u4    DERIVED: DISPATCHED/RUNNING tasks of this worker
    64   state          u1    WorkerState; written last
    65   nlabels        u1    labels carried: label_hash[:nlabels]
    72   address        S128  utf-8, <= 127 bytes
    200  hostname       S64   utf-8, <= 63 bytes
    264  offer_milli    u4[16] offered amount per resource index, in thousandths
    328  used_milli     u4[16] DERIVED: sum of the needs of its DISPATCHED/RUNNING tasks
    392  label_hash     u8[16] blake2b-64 of each "key=value" it carries

Derived (rebuilt by `shm.repair` from the tables): both heaps and their position
indexes, both free stacks, in-flight counts, resources in use (used_milli), the arena map
and H.ARENA_USED, the completion ring (= terminal tasks with F_NOTIFY), H.MIN_QUEUED_PRIORITY,
H.TASK_HWM (one past the highest slot in use: free slots are taken lowest first);
F_PARKED and H.PARKED are cleared (every QUEUED task back on the heap: the scheduler parks
again what still fits nowhere).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from heapd.shm import trace
from heapd.shm.types import CHUNK_BYTES, Capacities

MAGIC = int.from_bytes(b"HEAPDSHM", "little")
# 2: task record gained `losses`; 3: scheduling (aging, parking, resources); 4: latency
# histograms in the header, H.TASK_HWM; 5: doorbells are FIFOs (shm.doorbell), not semaphores;
# 6: the registration key (shm.secret); 7: trace rings (shm.trace), F_TRACED
VERSION = 7
HEADER_BYTES = 4096
HEADER_WORDS = 64
PAGE = 4096
ALIGN = 64

Field = tuple[str, str | tuple[str, tuple[int]], int]  # name, numpy format, byte offset

F_RESULT = 1  # the task has a result blob (possibly empty)
F_NOTIFY = 2  # terminal and not yet taken from the completion ring
F_PARKED = 4  # QUEUED but off the heap: no live worker could ever run it (see shm.dispatch)
F_WAITING = 8  # PENDING on its dependencies (shm.deps), not on a retry's backoff
F_TRACED = 16  # submitted with `trace`: roles record its hops (shm.trace)

ADDRESS_BYTES = 127
HOSTNAME_BYTES = 63


class H(enum.IntEnum):
    """Header word indexes (int64 each)."""

    MAGIC = 0  # written last on create: a zero magic means "being created"
    VERSION = 1
    TOTAL_BYTES = 2
    TASKS = 3
    WORKERS = 4
    ARENA_BYTES = 5
    MAX_BLOB = 6
    CHUNK = 7
    GENERATION = 8  # time_ns of creation: tells a recreated cell from the old one
    TASK_SEQ = 9  # last submission seq used
    WORKER_SEQ = 10  # last registration seq used
    EPOCH = 11  # last worker epoch used
    PICK = 12  # last dispatch stamp
    TASK_HEAP_SIZE = 13
    WORKER_HEAP_SIZE = 14
    TASK_FREE_TOP = 15
    WORKER_FREE_TOP = 16
    RING_HEAD = 17  # monotonic; entry i lives at ring[i % T]
    RING_TAIL = 18
    ARENA_USED = 19  # chunks in use
    ARENA_CURSOR = 20  # next-fit start chunk
    OWNER_PID = 21  # lock owner; 0 = none or not yet written
    OWNER_START = 22  # owner's start time (/proc/<pid>/stat field 22)
    LOCK_COUNT = 23  # acquisitions so far
    REPAIRS = 24
    SUBMITTED = 25
    SUCCEEDED = 26
    FAILED = 27
    CANCELLED = 28
    REQUEUED = 29
    STALE = 30
    POLICY = 31  # the scheduler's placement policy (shm.types.Policy), for status
    AGING_NS = 32  # aging period in ns (0 = off): see `aged_task_key`
    MIN_QUEUED_PRIORITY = 33  # <= every priority on the task heap; NO_PRIORITY when it is empty
    REVOKED = 34  # prefetched tasks taken back from workers so a higher one could overtake
    PARKED = 35  # tasks flagged F_PARKED (derived: repair unparks them all)
    TASK_HWM = 36  # task slots [0, TASK_HWM) may be in use: monitoring scans only those


_TASK_FIELDS: list[Field] = [
    ("id", "<u8", 0),
    ("worker_id", "<u8", 8),
    ("submitted_at", "<f8", 16),
    ("dispatched_at", "<f8", 24),
    ("finished_at", "<f8", 32),
    ("payload_chunk", "<u4", 40),
    ("payload_len", "<u4", 44),
    ("result_chunk", "<u4", 48),
    ("result_len", "<u4", 52),
    ("attempt", "<u4", 56),
    ("max_retries", "<u4", 60),
    ("timeout_ms", "<u4", 64),
    ("worker_epoch", "<u4", 68),
    ("priority", "<i2", 72),
    ("needs", "u1", 74),
    ("nlabels", "u1", 75),
    ("state", "u1", 76),
    ("flags", "u1", 77),
    ("losses", "u1", 78),
    ("need_res", ("u1", (8,)), 80),
    ("need_milli", ("<u4", (8,)), 88),
    ("label_hash", ("<u8", (8,)), 120),
    ("deps_chunk", "<u4", 184),
    ("deps_len", "<u4", 188),
]

_WORKER_FIELDS: list[Field] = [
    ("id", "<u8", 0),
    ("registered_at", "<f8", 8),
    ("last_heartbeat", "<f8", 16),
    ("deadline", "<f8", 24),
    ("tasks_done", "<u8", 32),
    ("last_pick", "<u8", 40),
    ("epoch", "<u4", 48),
    ("pid", "<i4", 52),
    ("slots", "<u4", 56),
    ("in_flight", "<u4", 60),
    ("state", "u1", 64),
    ("address", "S128", 72),
    ("hostname", "S64", 200),
    ("nlabels", "u1", 65),
    ("offer_milli", ("<u4", (16,)), 264),
    ("used_milli", ("<u4", (16,)), 328),
    ("label_hash", ("<u8", (16,)), 392),
]


def _record(fields: list[Field], itemsize: int) -> np.dtype[np.void]:
    names, formats, offsets = zip(*fields, strict=True)
    spec = {"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize}
    return np.dtype(spec)  # type: ignore[call-overload, no-any-return]


TASK_DTYPE = _record(_TASK_FIELDS, 192)
WORKER_DTYPE = _record(_WORKER_FIELDS, 520)

TASK_NEEDS = 8  # resource needs per task (need_res / need_milli)
TASK_LABELS = 8  # labels per task
WORKER_LABELS = 16  # labels per worker
RESOURCE_NAMES = 16  # distinct resource names per cell; also offers per worker
RESOURCE_NAME_BYTES = 31
RESOURCE_NAMES_AT = 1024  # header byte offset of the resource name table
LABEL_TEXTS = 512  # entries of the label text table
LABEL_TEXT_BYTES = 127  # "key=value": two parts of <= 63 bytes and the "="
LABEL_TEXT_DTYPE = _record([("hash", "<u8", 0), ("text", "S128", 8)], 136)

SLOT_BITS = 24
SLOT_MASK = (1 << SLOT_BITS) - 1
WORKER_SLOT_BITS = 16
WORKER_SLOT_MASK = (1 << WORKER_SLOT_BITS) - 1
MAX_SEQ = (1 << 40) - 1
PRIORITY_BITS = 47
MAX_LOAD = (1 << 31) - 1
PICK_MASK = (1 << 32) - 1


NO_PRIORITY = 1 << 15  # above every int16 priority: H.MIN_QUEUED_PRIORITY of an empty queue

# Aging: a task's effective priority is `priority + wait / A`, so ordering by it is ordering by the
# static `submitted / A - priority`: no re-keying. In key units, one priority level is AGE_TICKS
# ticks, time counts in ticks of A / AGE_TICKS from the cell's creation (clamped to
# 0..MAX_AGE_TICKS), and the low SEQ_TIE_BITS bits of the sequence break ties.
AGE_TICKS = 1024
SEQ_TIE_BITS = 24
_AGED_BITS = 63 - SEQ_TIE_BITS
MAX_AGE_TICKS = (1 << _AGED_BITS) - 1 - 0xFFFF * AGE_TICKS


def task_key(priority: int, seq: int) -> int:
    """Task heap key without aging: higher priority first, then submission order (FIFO)."""
    return ((0x7FFF - priority) << PRIORITY_BITS) | seq


def aged_task_key(priority: int, seq: int, waited_s: float, aging_s: float) -> int:
    """Task heap key with aging period `aging_s`; `waited_s` is the submission time minus the
    cell's creation (the same float operations as `derived.task_keys`, so both agree bit for
    bit)."""
    ticks = min(max(math.floor(waited_s * AGE_TICKS / aging_s), 0), MAX_AGE_TICKS)
    return (((0x7FFF - priority) * AGE_TICKS + ticks) << SEQ_TIE_BITS) | (
        seq & ((1 << SEQ_TIE_BITS) - 1)
    )


def worker_key(in_flight: int, slots: int, last_pick: int) -> int:
    """Worker heap key: load (in_flight / slots, fixed point 2**-16), then least recently picked.

    slots <= 65535, so every extra task in flight raises a worker's key. Only the low
    32 bits of the pick stamp are kept: after 2**32 dispatches a tie may briefly go to
    the wrong worker, which is harmless.
    """
    load = min((in_flight << 16) // slots, MAX_LOAD)
    return (load << 32) | (last_pick & PICK_MASK)


def _align(offset: int, to: int = ALIGN) -> int:
    return (offset + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class Layout:
    """Byte offsets of every section for given capacities."""

    tasks: int
    workers: int
    chunks: int
    label_texts: int
    task_table: int
    worker_table: int
    task_keys: int
    task_items: int
    task_pos: int
    task_free: int
    ring: int
    worker_keys: int
    worker_items: int
    worker_pos: int
    worker_free: int
    trace: int
    arena_map: int
    arena: int
    total: int

    @classmethod
    def of(cls, caps: Capacities) -> Layout:
        """Compute the layout; `caps` must be valid."""
        t, w, c = caps.tasks, caps.workers, caps.arena_bytes // CHUNK_BYTES
        sizes = [
            ("label_texts", LABEL_TEXTS * LABEL_TEXT_DTYPE.itemsize),
            ("task_table", t * TASK_DTYPE.itemsize),
            ("worker_table", w * WORKER_DTYPE.itemsize),
            ("task_keys", (t + 1) * 8),
            ("task_items", t * 4),
            ("task_pos", t * 4),
            ("task_free", t * 4),
            ("ring", t * 8),
            ("worker_keys", (w + 1) * 8),
            ("worker_items", w * 4),
            ("worker_pos", w * 4),
            ("worker_free", w * 4),
            ("trace", trace.SECTION_BYTES),
            ("arena_map", c),
        ]
        offsets: dict[str, int] = {}
        at = HEADER_BYTES
        for name, size in sizes:
            offsets[name] = at
            at = _align(at + size)
        arena = _align(at, PAGE)
        return cls(
            tasks=t, workers=w, chunks=c, **offsets, arena=arena, total=arena + c * CHUNK_BYTES
        )


def bytes_per_task() -> int:
    """Shared bytes one task slot costs, payload excluded (record, heap, free stack, ring)."""
    return TASK_DTYPE.itemsize + 8 + 4 + 4 + 4 + 8
