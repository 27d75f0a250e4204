"""CellMemory: typed views of every section of one mapped cell segment."""

from __future__ import annotations

import mmap

import numpy as np

from heapd.shm import latency
from heapd.shm.arena import Arena
from heapd.shm.freelist import SlotStack
from heapd.shm.heap import IndexedHeap
from heapd.shm.layout import (
    HEADER_WORDS,
    LABEL_TEXT_DTYPE,
    LABEL_TEXTS,
    RESOURCE_NAME_BYTES,
    RESOURCE_NAMES,
    RESOURCE_NAMES_AT,
    H,
    Layout,
)
from heapd.shm.ring import CompletionRing
from heapd.shm.tables import TaskTable, WorkerTable
from heapd.shm.trace import SECTION_BYTES, TraceRings


class CellMemory:
    """The header words, tables, heaps, free lists, ring and arena of one segment."""

    def __init__(self, mm: mmap.mmap, layout: Layout) -> None:
        self.layout = layout
        self.root = memoryview(mm)
        self.hdr = self.root[: HEADER_WORDS * 8].cast("q")
        self.hdr_np = np.frombuffer(self.hdr, dtype=np.int64)
        hist_end = latency.HISTOGRAMS_AT + latency.WORDS * 8
        self.latency = self.root[latency.HISTOGRAMS_AT : hist_end].cast("q")
        self.latency_sums = self.root[latency.HISTOGRAMS_AT : hist_end].cast("d")
        self.latency_np = np.frombuffer(self.latency, dtype=np.int64)
        self.latency_sums_np = self.latency_np.view(np.float64)
        # The cell's constraint vocabulary (see shm.catalog): resource names, label texts.
        names_end = RESOURCE_NAMES_AT + RESOURCE_NAMES * (RESOURCE_NAME_BYTES + 1)
        self.resource_names = np.frombuffer(
            self.root[RESOURCE_NAMES_AT:names_end], dtype=f"S{RESOURCE_NAME_BYTES + 1}"
        )
        texts_end = layout.label_texts + LABEL_TEXTS * LABEL_TEXT_DTYPE.itemsize
        self.label_texts = np.frombuffer(
            self.root[layout.label_texts : texts_end], dtype=LABEL_TEXT_DTYPE
        )
        t, w = layout.tasks, layout.workers
        self.tasks = TaskTable(self.root, layout.task_table, t)
        self.workers = WorkerTable(self.root, layout.worker_table, w)
        self.task_heap = IndexedHeap(
            "task heap",
            self.root,
            (layout.task_keys, layout.task_items, layout.task_pos),
            t,
            self.hdr,
            H.TASK_HEAP_SIZE,
        )
        self.worker_heap = IndexedHeap(
            "worker heap",
            self.root,
            (layout.worker_keys, layout.worker_items, layout.worker_pos),
            w,
            self.hdr,
            H.WORKER_HEAP_SIZE,
        )
        self.task_free = SlotStack(
            "task free list", self.root, layout.task_free, t, self.hdr, H.TASK_FREE_TOP
        )
        self.worker_free = SlotStack(
            "worker free list", self.root, layout.worker_free, w, self.hdr, H.WORKER_FREE_TOP
        )
        self.ring = CompletionRing(self.root, layout.ring, self.tasks, self.hdr)
        self.arena = Arena(mm, self.root, layout.arena_map, layout.arena, layout.chunks, self.hdr)
        self.trace_words = self.root[layout.trace : layout.trace + SECTION_BYTES].cast("q")
        self.trace = TraceRings(self.trace_words)

    def bump(self, word: H, by: int = 1) -> int:
        """Add to a header counter and return the new value."""
        value = int(self.hdr[word]) + by
        self.hdr[word] = value
        return value

    def release(self) -> None:
        """Release every view so the mmap can be closed."""
        for part in (
            self.tasks,
            self.workers,
            self.task_heap,
            self.worker_heap,
            self.task_free,
            self.worker_free,
            self.ring,
            self.arena,
        ):
            part.release()
        del self.hdr_np, self.resource_names, self.label_texts
        del self.latency_np, self.latency_sums_np
        self.hdr.release()
        self.latency.release()
        self.latency_sums.release()
        self.trace_words.release()
        self.root.release()
