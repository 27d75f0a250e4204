"""The generic indexed heap against a plain dict model, on a real mmap.

Every test runs on both sift cores: the compiled one (shm/_heapcore.c, which `make test`
builds) and the Python fallback (shm/heapcore_py.py).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from heapd.shm import heap as heap_module
from heapd.shm.heap import IndexedHeap

CAP = 24
KEYS = st.integers(min_value=-(1 << 62), max_value=(1 << 62)) | st.integers(0, 5)


CORES = [pytest.param(True, id="compiled"), pytest.param(False, id="python")]


def make_heap(capacity: int, compiled: bool) -> tuple[IndexedHeap, mmap.mmap]:
    """A heap over an anonymous mapping laid out like a cell's (header word 0 = size)."""
    mm = mmap.mmap(-1, 64 + 16 * (capacity + 1))
    root = memoryview(mm)
    hdr = root[:64].cast("q")
    offsets = (64, 64 + 8 * (capacity + 1), 64 + 12 * (capacity + 1))
    heap = IndexedHeap("test heap", root, offsets, capacity, hdr, 0, compiled=compiled)
    heap.clear()
    return heap, mm


@pytest.fixture(params=CORES)
def heap(request: pytest.FixtureRequest) -> Iterator[IndexedHeap]:
    h, _ = make_heap(CAP, request.param)
    yield h


def test_the_compiled_core_is_built() -> None:
    """`make test` installs with a C compiler, so the fast path is the one under test."""
    assert heap_module.COMPILED


def test_out_of_range_items_are_refused(heap: IndexedHeap) -> None:
    for bad in (-1, CAP):
        with pytest.raises(IndexError, match="outside"):
            heap.push(bad, 0)
        with pytest.raises(IndexError, match="outside"):
            heap.remove(bad)
        with pytest.raises(IndexError, match="outside"):
            heap.update(bad, 0)
    assert len(heap) == 0
    assert heap.check() == []


def test_compiled_core_refuses_a_corrupt_heap() -> None:
    """A garbage item in shared memory raises instead of writing outside the arrays."""
    heap, _ = make_heap(CAP, compiled=True)
    for item in range(8):
        heap.push(item, item)
    heap._items[1] = CAP + 1000
    with pytest.raises(RuntimeError, match="needs repair"):
        heap.pop()
    heap._hdr[0] = CAP + 5
    with pytest.raises(RuntimeError, match="needs repair"):
        heap.push(9, 9)


def test_pop_in_key_order(heap: IndexedHeap) -> None:
    keys = [5, 3, 9, 1, 7, 3]
    for item, key in enumerate(keys):
        heap.push(item, key)
    popped = [heap.pop() for _ in keys]
    assert [keys[i] for i in popped] == sorted(keys)
    with pytest.raises(IndexError):
        heap.pop()
    assert heap.check() == []


def test_update_and_remove(heap: IndexedHeap) -> None:
    for item in range(10):
        heap.push(item, item * 10)
    heap.update(9, -1)
    heap.update(0, 1000)
    heap.remove(5)
    assert heap.check() == []
    assert heap.pop() == 9
    assert 5 not in heap
    assert heap.key_of(0) == 1000
    with pytest.raises(KeyError):
        heap.remove(5)


def test_push_twice_or_overflow(heap: IndexedHeap) -> None:
    heap.push(1, 1)
    with pytest.raises(ValueError, match="already"):
        heap.push(1, 2)
    for item in range(2, CAP):
        heap.push(item, item)
    heap.push(0, 0)
    with pytest.raises(IndexError, match="full"):
        heap.push(0, 0)


def test_rebuild_from_unsorted_arrays(heap: IndexedHeap) -> None:
    rng = np.random.default_rng(7)
    items = rng.permutation(CAP)[:20]
    keys = rng.integers(-100, 100, size=20)
    heap.rebuild(items, keys)
    assert heap.check() == []
    key_of = dict(zip(items.tolist(), keys.tolist(), strict=True))
    assert [key_of[i] for i in heap.pop_many(20)] == sorted(key_of.values())


def test_check_reports_broken_order(heap: IndexedHeap) -> None:
    for item in range(8):
        heap.push(item, item)
    heap._keys[0] = 100
    assert any("below its parent" in p for p in heap.check())
    heap._keys[0] = 0
    heap._pos[3] = 6
    assert any("has index" in p for p in heap.check())


class HeapMachine(RuleBasedStateMachine):
    """Every operation on the shared heap matches a dict of item -> key."""

    items = Bundle("items")
    compiled = True

    def __init__(self) -> None:
        super().__init__()
        self.heap, self._mm = make_heap(CAP, self.compiled)
        self.model: dict[int, int] = {}

    def _free(self) -> list[int]:
        return [i for i in range(CAP) if i not in self.model]

    @precondition(lambda self: len(self.model) < CAP)
    @rule(target=items, key=KEYS, pick=st.integers(0, CAP))
    def push(self, key: int, pick: int) -> int:
        free = self._free()
        item = free[pick % len(free)]
        self.heap.push(item, key)
        self.model[item] = key
        return item

    @precondition(lambda self: self.model)
    @rule()
    def pop(self) -> None:
        smallest = min(self.model.values())
        assert self.model.pop(self.heap.pop()) == smallest

    @rule(item=consumes(items), key=KEYS)
    def update(self, item: int, key: int) -> None:
        if item in self.model:
            self.heap.update(item, key)
            self.model[item] = key

    @rule(item=consumes(items))
    def remove(self, item: int) -> None:
        if item in self.model:
            self.heap.remove(item)
            del self.model[item]

    @rule(keys=st.lists(KEYS, max_size=CAP))
    def push_many(self, keys: list[int]) -> None:
        free = self._free()[: len(keys)]
        keys = keys[: len(free)]
        self.heap.push_many(free, keys)
        self.model.update(zip(free, keys, strict=True))

    @rule(k=st.integers(0, CAP + 2))
    def pop_many(self, k: int) -> None:
        expected = sorted(self.model.values())[:k]
        got = self.heap.pop_many(k)
        assert [self.model.pop(item) for item in got] == expected

    @invariant()
    def matches_model(self) -> None:
        assert self.heap.check() == []
        assert len(self.heap) == len(self.model)
        for item, key in self.model.items():
            assert self.heap.key_of(item) == key


class PythonHeapMachine(HeapMachine):
    """The same machine on the Python fallback core."""

    compiled = False


TestHeapMachine = HeapMachine.TestCase
TestHeapMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestPythonHeapMachine = PythonHeapMachine.TestCase
TestPythonHeapMachine.settings = TestHeapMachine.settings
