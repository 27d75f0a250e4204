"""The blob arena: payloads and results in fixed 64-byte chunks of shared memory.

A one-byte-per-chunk map (1 = used) sits before the chunks. Allocation is next-fit from
a cursor: `mmap.find` looks for a run of zero map bytes at C speed, wrapping once. The
map is derived: every used chunk belongs to a blob ref (chunk, length) in the task
table, so `rebuild` recomputes it from those refs with numpy (`shm.repair`).
"""

from __future__ import annotations

import mmap

import numpy as np
import numpy.typing as npt

from heapd.shm.errors import ArenaFull, BlobTooLarge
from heapd.shm.layout import H
from heapd.shm.types import CHUNK_BYTES


def chunks_for(size: int) -> int:
    """Chunks a blob of `size` bytes occupies."""
    return (size + CHUNK_BYTES - 1) // CHUNK_BYTES


class Arena:
    """Allocate, write, read and free blobs; accounting in header words."""

    __slots__ = ("_data_at", "_hdr", "_map", "_map_at", "_mm", "chunks", "max_blob")

    def __init__(
        self,
        mm: mmap.mmap,
        root: memoryview,
        map_at: int,
        data_at: int,
        chunks: int,
        hdr: memoryview,
    ) -> None:
        self._mm = mm
        self._map_at = map_at
        self._data_at = data_at
        self._hdr = hdr
        self.chunks = chunks
        self.max_blob = int(hdr[H.MAX_BLOB])
        self._map = np.frombuffer(root[map_at : map_at + chunks], dtype=np.uint8)

    def release(self) -> None:
        """Drop the numpy view so the segment can be unmapped."""
        del self._map

    @property
    def used_bytes(self) -> int:
        return int(self._hdr[H.ARENA_USED]) * CHUNK_BYTES

    @property
    def free_bytes(self) -> int:
        return (self.chunks - int(self._hdr[H.ARENA_USED])) * CHUNK_BYTES

    def check_size(self, size: int) -> None:
        """Raise BlobTooLarge if one blob of `size` bytes can never be stored."""
        if size > self.max_blob:
            raise BlobTooLarge(size, self.max_blob)

    def store(self, data: bytes) -> int:
        """Allocate room for `data`, copy it in and return its first chunk."""
        size = len(data)
        self.check_size(size)
        if size == 0:
            return 0
        n = chunks_for(size)
        chunk = self._find(n)
        if chunk < 0:
            raise ArenaFull(size, self.free_bytes)
        mm, at = self._mm, self._map_at + chunk
        mm[at : at + n] = b"\x01" * n
        hdr = self._hdr
        hdr[H.ARENA_USED] += n
        hdr[H.ARENA_CURSOR] = (chunk + n) % self.chunks
        start = self._data_at + chunk * CHUNK_BYTES
        mm[start : start + size] = data
        return chunk

    def _find(self, n: int) -> int:
        """First run of n free chunks at or after the cursor, wrapping once; -1 if none."""
        if n > self.chunks - int(self._hdr[H.ARENA_USED]):
            return -1
        hole = b"\x00" * n
        base, end = self._map_at, self._map_at + self.chunks
        cursor = base + int(self._hdr[H.ARENA_CURSOR])
        found = self._mm.find(hole, cursor, end)
        if found < 0:
            found = self._mm.find(hole, base, min(end, cursor + n - 1))
        return found - base if found >= 0 else -1

    def read(self, chunk: int, size: int) -> bytes:
        """A copy of the blob at `chunk`."""
        start = self._data_at + chunk * CHUNK_BYTES
        return self._mm[start : start + size]

    def free(self, chunk: int, size: int) -> None:
        """Give a blob's chunks back (size 0 = nothing)."""
        n = chunks_for(size)
        if n == 0:
            return
        at = self._map_at + chunk
        self._mm[at : at + n] = b"\x00" * n
        self._hdr[H.ARENA_USED] -= n

    # ---- derived state

    def derive(
        self, chunks: npt.NDArray[np.uint32], sizes: npt.NDArray[np.uint32]
    ) -> tuple[npt.NDArray[np.int32], list[str]]:
        """Per-chunk use counts from blob refs, and refs that fall outside the arena."""
        n = (sizes.astype(np.int64) + CHUNK_BYTES - 1) // CHUNK_BYTES
        start = chunks.astype(np.int64)
        live = n > 0
        start, n = start[live], n[live]
        outside = start + n > self.chunks
        problems = [
            f"arena: blob at chunk {int(s)} of {int(k)} chunks runs past the arena end"
            for s, k in zip(start[outside][:5], n[outside][:5], strict=True)
        ]
        start, n = start[~outside], n[~outside]
        delta = np.zeros(self.chunks + 1, dtype=np.int32)
        np.add.at(delta, start, 1)
        np.add.at(delta, start + n, -1)
        return np.cumsum(delta[:-1], dtype=np.int32), problems

    def rebuild(self, chunks: npt.NDArray[np.uint32], sizes: npt.NDArray[np.uint32]) -> None:
        """Recompute the map and the used count from the blob refs of live tasks."""
        counts, _ = self.derive(chunks, sizes)
        self._map[:] = counts > 0
        self._hdr[H.ARENA_USED] = int(np.count_nonzero(self._map))
        if not 0 <= self._hdr[H.ARENA_CURSOR] < self.chunks:
            self._hdr[H.ARENA_CURSOR] = 0

    def check(self, chunks: npt.NDArray[np.uint32], sizes: npt.NDArray[np.uint32]) -> list[str]:
        """Arena accounting against the blob refs: overlaps, leaks, lost chunks, counter."""
        counts, problems = self.derive(chunks, sizes)
        overlap = np.flatnonzero(counts > 1)
        if len(overlap):
            problems.append(
                f"arena: {len(overlap)} chunks shared by two blobs (first {overlap[0]})"
            )
        used = self._map != 0
        leaked = np.flatnonzero(used & (counts == 0))
        if len(leaked):
            problems.append(f"arena: {len(leaked)} chunks marked used but owned by no blob")
        lost = np.flatnonzero(~used & (counts > 0))
        if len(lost):
            problems.append(f"arena: {len(lost)} chunks of live blobs marked free")
        marked = int(np.count_nonzero(used))
        if marked != int(self._hdr[H.ARENA_USED]):
            problems.append(
                f"arena: used counter says {int(self._hdr[H.ARENA_USED])} chunks, map has {marked}"
            )
        if not 0 <= self._hdr[H.ARENA_CURSOR] < self.chunks:
            problems.append(f"arena: cursor {int(self._hdr[H.ARENA_CURSOR])} outside the arena")
        return problems
