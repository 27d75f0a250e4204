"""The heap's sift loops in Python: the fallback where shm/_heapcore.c was not compiled.

Same algorithm, same arrays and same errors as the C `HeapCore`; `shm.heap.IndexedHeap` uses
whichever is present, and the heap tests run both. The arrays are `memoryview.cast` views
(the cheapest element access Python has on shared memory); see shm/heap.py for the layout.
"""

from __future__ import annotations

INF = (1 << 63) - 1


class HeapCore:
    """push / pop / update / remove on one heap's keys, items and positions."""

    __slots__ = ("_hdr", "_items", "_keys", "_pos", "_size_word", "capacity", "name")

    def __init__(
        self,
        name: str,
        keys: memoryview,
        items: memoryview,
        pos: memoryview,
        hdr: memoryview,
        size_word: int,
        capacity: int,
    ) -> None:
        self.name = name
        self._keys, self._items, self._pos = keys, items, pos
        self._hdr, self._size_word = hdr, size_word
        self.capacity = capacity

    def release(self) -> None:
        """Nothing to release: the views belong to the caller."""

    def push(self, item: int, key: int) -> None:
        """Insert an absent item."""
        hdr, word = self._hdr, self._size_word
        if not 0 <= item < self.capacity:
            raise IndexError(f"{self.name}: item {item} outside 0..{self.capacity - 1}")
        i = hdr[word]
        if i >= self.capacity:
            raise IndexError(f"{self.name} is full ({self.capacity})")
        if self._pos[item] >= 0:
            raise ValueError(f"item {item} is already in the {self.name}")
        hdr[word] = i + 1
        self._keys[i + 1] = INF
        self._sift_up(i, item, key)

    def pop(self) -> int:
        """Remove and return the item with the smallest key (IndexError if empty).

        Bottom-up: the hole left at the root sinks along the smaller children to a leaf
        (one comparison per level), then the last entry climbs from there; it usually
        belongs near the bottom, so this beats comparing it at every level on the way down.
        """
        hdr, word, keys, items, pos = self._hdr, self._size_word, self._keys, self._items, self._pos
        n = hdr[word] - 1
        if n < 0:
            raise IndexError(f"{self.name} is empty")
        top = items[0]
        pos[top] = -1
        hdr[word] = n
        last_key = keys[n]
        last = items[n]
        keys[n] = INF
        if n == 0:
            return top
        i = 0
        child = 1
        while child < n:  # keys[n] is INF, so keys[child + 1] always exists
            child_key = keys[child]
            right_key = keys[child + 1]
            if right_key < child_key:
                child += 1
                child_key = right_key
            keys[i] = child_key
            items[i] = moved = items[child]
            pos[moved] = i
            i = child
            child = 2 * child + 1
        self._sift_up(i, last, last_key)
        return top

    def update(self, item: int, key: int) -> None:
        """Change the key of an item in the heap."""
        at = self._pos[self._checked(item)]
        if at < 0:
            raise KeyError(item)
        if key < self._keys[at]:
            self._sift_up(at, item, key)
        else:
            self._sift_down(at, item, key)

    def remove(self, item: int) -> None:
        """Remove an item from anywhere in the heap."""
        hdr, word, keys, items, pos = self._hdr, self._size_word, self._keys, self._items, self._pos
        at = pos[self._checked(item)]
        if at < 0:
            raise KeyError(item)
        n = hdr[word] - 1
        hdr[word] = n
        pos[item] = -1
        last_key = keys[n]
        last = items[n]
        keys[n] = INF
        if at == n:
            return
        if at and keys[(at - 1) >> 1] > last_key:
            self._sift_up(at, last, last_key)
        else:
            self._sift_down(at, last, last_key)

    def _checked(self, item: int) -> int:
        if not 0 <= item < self.capacity:
            raise IndexError(f"{self.name}: item {item} outside 0..{self.capacity - 1}")
        return item

    def _sift_up(self, i: int, item: int, key: int) -> None:
        keys, items, pos = self._keys, self._items, self._pos
        while i:
            parent = (i - 1) >> 1
            parent_key = keys[parent]
            if parent_key <= key:
                break
            keys[i] = parent_key
            items[i] = moved = items[parent]
            pos[moved] = i
            i = parent
        keys[i] = key
        items[i] = item
        pos[item] = i

    def _sift_down(self, i: int, item: int, key: int) -> None:
        keys, items, pos = self._keys, self._items, self._pos
        n = self._hdr[self._size_word]
        child = 2 * i + 1
        while child < n:
            child_key = keys[child]
            right_key = keys[child + 1]
            if right_key < child_key:
                child += 1
                child_key = right_key
            if key <= child_key:
                break
            keys[i] = child_key
            items[i] = moved = items[child]
            pos[moved] = i
            i = child
            child = 2 * child + 1
        keys[i] = key
        items[i] = item
        pos[item] = i
