"""A generic indexed binary min-heap over shared-memory arrays.

Three arrays: `keys` (int64, heap order, one +inf sentinel after the last entry so the
sift-down loop never tests for a missing right child), `items` (int32, the item at each
heap position) and `pos` (int32, the heap position of each item, -1 = absent), plus the
size in a header word. Used twice: task heap (item = task slot, key = `task_key`) and
worker heap (item = worker slot, key = `worker_key`).

The per-element paths (push, pop, update, remove) run in `HeapCore`: compiled C
(shm/_heapcore.c) where the extension was built, else the same loops in Python over
`memoryview.cast` arrays (shm/heapcore_py.py). A Python sift level costs ~0.3 us and a
1e6 heap has 20 levels; in C the whole push+pop is well under a microsecond. Bulk work
(rebuild, batch paths on large batches, check) uses numpy. A sorted array is a valid
min-heap, so `rebuild` is one numpy argsort: O(n log n) at C speed, faster here than a
Python O(n) heapify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from heapd.shm import heapcore_py
from heapd.shm.heapcore_py import INF


class SiftCore(Protocol):
    """What both cores provide: HeapCore(name, keys, items, pos, hdr, size_word, capacity)."""

    def push(self, item: int, key: int) -> None:
        """Insert an absent item (IndexError when full, ValueError when present)."""

    def pop(self) -> int:
        """Remove and return the item with the smallest key (IndexError if empty)."""

    def update(self, item: int, key: int) -> None:
        """Change the key of an item in the heap (KeyError if absent)."""

    def remove(self, item: int) -> None:
        """Remove an item from anywhere in the heap (KeyError if absent)."""

    def release(self) -> None:
        """Drop the core's views of the shared arrays."""


CompiledCore: Callable[..., SiftCore] | None
try:
    from heapd.shm._heapcore import HeapCore as _Compiled

    CompiledCore = _Compiled
except ImportError:  # built without a C compiler: the Python loops, same behaviour
    CompiledCore = None

COMPILED = CompiledCore is not None
_BATCH_REBUILD = 16  # a batch of k is merged by numpy when k * this >= the heap size


class IndexedHeap:
    """Min-heap of distinct int items 0..capacity-1 with int64 keys, all in shared memory.

    `push`, `pop`, `update` and `remove` (see SiftCore) are the core's own methods, bound
    here so that a heap operation on the per-task path costs no extra Python call.
    """

    push: Callable[[int, int], None]
    pop: Callable[[], int]
    update: Callable[[int, int], None]
    remove: Callable[[int], None]

    __slots__ = (
        "_core",
        "_hdr",
        "_items",
        "_items_np",
        "_keys",
        "_keys_np",
        "_pos",
        "_pos_np",
        "_size_word",
        "capacity",
        "name",
        "pop",
        "push",
        "remove",
        "update",
    )

    def __init__(
        self,
        name: str,
        root: memoryview,
        offsets: tuple[int, int, int],
        capacity: int,
        hdr: memoryview,
        size_word: int,
        compiled: bool = COMPILED,
    ) -> None:
        keys_at, items_at, pos_at = offsets
        self.name = name
        self.capacity = capacity
        self._hdr = hdr
        self._size_word = int(size_word)
        self._keys = root[keys_at : keys_at + 8 * (capacity + 1)].cast("q")
        self._items = root[items_at : items_at + 4 * capacity].cast("i")
        self._pos = root[pos_at : pos_at + 4 * capacity].cast("i")
        self._keys_np = np.frombuffer(self._keys, dtype=np.int64)
        self._items_np = np.frombuffer(self._items, dtype=np.int32)
        self._pos_np = np.frombuffer(self._pos, dtype=np.int32)
        core: Callable[..., SiftCore] = heapcore_py.HeapCore
        if compiled:
            if CompiledCore is None:
                raise RuntimeError("shm._heapcore is not built: reinstall heapd with a C compiler")
            core = CompiledCore
        self._core = core(name, self._keys, self._items, self._pos, hdr, self._size_word, capacity)
        self.push, self.pop = self._core.push, self._core.pop
        self.update, self.remove = self._core.update, self._core.remove

    def release(self) -> None:
        """Drop the views so the segment can be unmapped."""
        self._core.release()
        del self._keys_np, self._items_np, self._pos_np
        for view in (self._keys, self._items, self._pos):
            view.release()

    # ---- reads

    def __len__(self) -> int:
        return int(self._hdr[self._size_word])

    def __contains__(self, item: int) -> bool:
        return bool(self._pos[item] >= 0)

    def peek(self) -> int:
        """The item with the smallest key (IndexError if empty)."""
        if self._hdr[self._size_word] == 0:
            raise IndexError(f"{self.name} is empty")
        return int(self._items[0])

    def top(self) -> tuple[int, int]:
        """(item, key) with the smallest key (IndexError if empty): one call on a hot path."""
        if self._hdr[self._size_word] == 0:
            raise IndexError(f"{self.name} is empty")
        return self._items[0], self._keys[0]

    def key_of(self, item: int) -> int:
        """The key of an item in the heap (KeyError if absent)."""
        at = self._pos[item]
        if at < 0:
            raise KeyError(item)
        return int(self._keys[at])

    def items(self) -> npt.NDArray[np.int32]:
        """A copy of the items (task or worker slots) on the heap, in heap order."""
        return self._items_np[: len(self)].copy()

    def entries(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Copies of (items, keys) in heap order."""
        n = len(self)
        return self._items_np[:n].copy(), self._keys_np[:n].copy()

    # ---- batches

    def push_many(self, items: Sequence[int], keys: Sequence[int]) -> None:
        """Insert absent items; a batch large next to the heap is merged by numpy."""
        k = len(items)
        n = len(self)
        if n + k > self.capacity:
            raise IndexError(f"{self.name} would overflow ({n} + {k} > {self.capacity})")
        if k * _BATCH_REBUILD < n + k:
            push = self.push
            for item, key in zip(items, keys, strict=True):
                push(item, key)
            return
        new_items = np.asarray(items, dtype=np.int32)
        if np.any(self._pos_np[new_items] >= 0) or len(np.unique(new_items)) != k:
            raise ValueError(f"push_many: an item is already in the {self.name} or repeated")
        old_items, old_keys = self.entries()
        self.rebuild(
            np.concatenate([old_items, new_items]),
            np.concatenate([old_keys, np.asarray(keys, dtype=np.int64)]),
        )

    def pop_many(self, k: int) -> list[int]:
        """Remove and return up to k items in key order; a large k is done by numpy."""
        n = len(self)
        k = min(k, n)
        if k * _BATCH_REBUILD < n:
            pop = self.pop
            return [pop() for _ in range(k)]
        items, keys = self.entries()
        order = np.argsort(keys, kind="stable")
        self.rebuild(items[order[k:]], keys[order[k:]])
        return [int(x) for x in items[order[:k]]]

    def rebuild(self, items: npt.ArrayLike, keys: npt.ArrayLike) -> None:
        """Replace the whole heap with these distinct items (a sorted array is a heap)."""
        items_a = np.asarray(items, dtype=np.int32)
        keys_a = np.asarray(keys, dtype=np.int64)
        n = len(items_a)
        order = np.argsort(keys_a, kind="stable")
        self._pos_np[:] = -1
        self._keys_np[:n] = keys_a[order]
        self._keys_np[n:] = INF
        self._items_np[:n] = items_a[order]
        self._pos_np[items_a[order]] = np.arange(n, dtype=np.int32)
        self._hdr[self._size_word] = n

    def clear(self) -> None:
        """Empty the heap."""
        self.rebuild(np.empty(0, np.int32), np.empty(0, np.int64))

    # ---- consistency

    def check(self) -> list[str]:
        """Problems with the heap itself: size, order, sentinel, position index."""
        n = len(self)
        if not 0 <= n <= self.capacity:
            return [f"{self.name}: size {n} outside 0..{self.capacity}"]
        keys, items = self._keys_np[:n], self._items_np[:n]
        problems: list[str] = []
        if self._keys_np[n] != INF:
            problems.append(f"{self.name}: sentinel after position {n} is not +inf")
        bad = np.flatnonzero(keys[1:] < keys[(np.arange(1, n) - 1) >> 1]) + 1
        problems += [f"{self.name}: position {int(i)} has a key below its parent" for i in bad[:5]]
        if np.any((items < 0) | (items >= self.capacity)):
            return [*problems, f"{self.name}: an item is outside 0..{self.capacity - 1}"]
        if len(np.unique(items)) != n:
            problems.append(f"{self.name}: an item appears twice")
        wrong = np.flatnonzero(self._pos_np[items] != np.arange(n))
        problems += [
            f"{self.name}: item {int(items[i])} at position {int(i)} has index "
            f"{int(self._pos_np[items[i]])}"
            for i in wrong[:5]
        ]
        if int(np.count_nonzero(self._pos_np >= 0)) != n:
            problems.append(f"{self.name}: position index holds items that are not in the heap")
        return problems
