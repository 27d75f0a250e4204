"""Free lists: a stack of free table slots in shared memory, top in a header word.

Derived state: the free slots are exactly the records whose state is FREE, so repair
rebuilds the stack from the table. A slot popped by a process killed before it wrote
the record is still FREE in the table and comes back on rebuild.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class SlotStack:
    """Stack of free slot numbers; pops the lowest slot first after a rebuild."""

    __slots__ = ("_hdr", "_stack", "_stack_np", "_top_word", "capacity", "name")

    def __init__(
        self, name: str, root: memoryview, at: int, capacity: int, hdr: memoryview, top_word: int
    ) -> None:
        self.name = name
        self.capacity = capacity
        self._hdr = hdr
        self._top_word = top_word
        self._stack = root[at : at + 4 * capacity].cast("i")
        self._stack_np = np.frombuffer(self._stack, dtype=np.int32)

    def release(self) -> None:
        """Drop the views so the segment can be unmapped."""
        del self._stack_np
        self._stack.release()

    def __len__(self) -> int:
        return int(self._hdr[self._top_word])

    def pop(self) -> int:
        """A free slot, or -1 if none."""
        top = self._hdr[self._top_word] - 1
        if top < 0:
            return -1
        self._hdr[self._top_word] = top
        return int(self._stack[top])

    def push(self, slot: int) -> None:
        """Give a slot back (its record must already say FREE)."""
        top = self._hdr[self._top_word]
        self._stack[top] = slot
        self._hdr[self._top_word] = top + 1

    def rebuild(self, free: npt.NDArray[np.bool_]) -> None:
        """Make the stack hold exactly the slots where `free` is true."""
        slots = np.flatnonzero(free)[::-1].astype(np.int32)
        self._stack_np[: len(slots)] = slots
        self._hdr[self._top_word] = len(slots)

    def check(self, free: npt.NDArray[np.bool_]) -> list[str]:
        """Problems: bad top, bad or repeated entries, stack != FREE slots of the table."""
        top = len(self)
        if not 0 <= top <= self.capacity:
            return [f"{self.name}: top {top} outside 0..{self.capacity}"]
        entries = self._stack_np[:top]
        if np.any((entries < 0) | (entries >= self.capacity)):
            return [f"{self.name}: an entry is outside 0..{self.capacity - 1}"]
        problems: list[str] = []
        on_stack = np.zeros(self.capacity, dtype=np.bool_)
        on_stack[entries] = True
        if len(np.unique(entries)) != top:
            problems.append(f"{self.name}: a slot is on the free list twice")
        busy = np.flatnonzero(on_stack & ~free)
        problems += [f"{self.name}: slot {int(s)} is on the free list but in use" for s in busy[:5]]
        lost = np.flatnonzero(free & ~on_stack)
        if len(lost):
            problems.append(
                f"{self.name}: {len(lost)} FREE slots are missing from the free list "
                f"(first {int(lost[0])})"
            )
        return problems
