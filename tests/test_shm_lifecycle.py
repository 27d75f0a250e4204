"""Creating, attaching and removing cells; bad input gives clear errors and leaves nothing."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator

import posix_ipc
import pytest

from heapd.shm import (
    Capacities,
    Cell,
    CellExists,
    CellNames,
    CellNotFound,
    InvalidCapacity,
    LayoutMismatch,
    NewTask,
    ShmError,
    validate_cell_name,
)
from heapd.shm import repair as shm_repair
from heapd.shm.layout import H
from tests import shm_helpers
from tests.shm_helpers import SMALL, leftovers


@pytest.fixture
def cell_name() -> Iterator[str]:
    with shm_helpers.scratch_cell_name() as name:
        yield name


def test_create_attach_share_one_state(cell_name: str) -> None:
    with Cell.create(cell_name, SMALL) as a, Cell.attach(cell_name) as b:
        assert (b.capacities, b.generation) == (SMALL, a.generation)
        [task_id] = a.submit([NewTask(b"x")], 1.0)
        assert b.get(task_id).task_id == task_id
        assert b.queue_depth() == 1
        assert Cell.exists(cell_name)


def test_unlink_removes_everything(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    assert len(leftovers(cell_name)) == 5
    assert sorted(Cell.unlink(cell_name)) == sorted(CellNames(cell_name).all())
    assert leftovers(cell_name) == []
    assert not Cell.exists(cell_name)
    assert Cell.unlink(cell_name) == []


def test_objects_are_private_to_the_user(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    for path in leftovers(cell_name):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_create_twice_fails_and_keeps_the_first(cell_name: str) -> None:
    with Cell.create(cell_name, SMALL) as cell:
        cell.submit([NewTask(b"x")], 1.0)
        with pytest.raises(CellExists, match=cell_name):
            Cell.create(cell_name, SMALL)
        assert cell.queue_depth() == 1
        assert cell.check() == []


def test_open_creates_then_attaches(cell_name: str) -> None:
    with Cell.open(cell_name, SMALL) as a, Cell.open(cell_name) as b:
        assert b.generation == a.generation
        assert b.capacities == SMALL


def test_attach_missing_cell(cell_name: str) -> None:
    with pytest.raises(CellNotFound, match=rf"{cell_name}.*heapd up --cell {cell_name}"):
        Cell.attach(cell_name)


def test_close_is_idempotent_and_final(cell_name: str) -> None:
    cell = Cell.create(cell_name, SMALL)
    cell.close()
    cell.close()
    with pytest.raises(ShmError, match="closed"):
        cell.queue_depth()


@pytest.mark.parametrize("name", ["", "a/b", "x" * 41, "sp ace", "ü"])
def test_bad_cell_names(name: str) -> None:
    with pytest.raises(ValueError, match="cell name"):
        validate_cell_name(name)
    with pytest.raises(ValueError):
        Cell.create(name, SMALL)


@pytest.mark.parametrize(
    "caps",
    [
        Capacities(tasks=0),
        Capacities(tasks=-1),
        Capacities(tasks=1 << 25),
        Capacities(workers=0),
        Capacities(workers=1 << 17),
        Capacities(arena_bytes=0),
        Capacities(max_blob_bytes=0),
        Capacities(arena_bytes=4096, max_blob_bytes=8192),
        Capacities(tasks=True),
        Capacities(tasks=1.5),  # type: ignore[arg-type]
    ],
)
def test_bad_capacities(cell_name: str, caps: Capacities) -> None:
    with pytest.raises(InvalidCapacity) as err:
        Cell.create(cell_name, caps)
    assert isinstance(err.value, ValueError)
    assert "capacity" in str(err.value) or "max_blob_bytes" in str(err.value)
    assert leftovers(cell_name) == []


def test_capacities_larger_than_shared_memory(cell_name: str) -> None:
    caps = Capacities(tasks=1 << 24, workers=1 << 16, arena_bytes=1 << 38)
    with pytest.raises(InvalidCapacity, match="/dev/shm"):
        Cell.create(cell_name, caps)
    assert leftovers(cell_name) == []


def test_failed_create_leaves_nothing(cell_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(mem: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(shm_repair, "repair", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        Cell.create(cell_name, SMALL)
    assert leftovers(cell_name) == []


def test_leftover_semaphore_blocks_create_but_is_not_ours_to_remove(cell_name: str) -> None:
    names = CellNames(cell_name)
    posix_ipc.Semaphore(names.repair, posix_ipc.O_CREX, 0o600).close()
    with pytest.raises(CellExists, match=r"leftover semaphore .*heapd down --cell"):
        Cell.create(cell_name, SMALL)
    assert leftovers(cell_name) == [names.dev_shm_paths()[2]]


def test_leftover_doorbell_blocks_create_but_is_not_ours_to_remove(cell_name: str) -> None:
    names = CellNames(cell_name)
    os.mkfifo(names.plm_bell, 0o600)
    with pytest.raises(CellExists, match=r"leftover doorbell .*heapd down --cell"):
        Cell.create(cell_name, SMALL)
    assert leftovers(cell_name) == [names.plm_bell]


def _foreign_segment(name: str, data: bytes) -> None:
    shm = posix_ipc.SharedMemory(CellNames(name).segment, posix_ipc.O_CREX, 0o600, len(data))
    os.pwrite(shm.fd, data, 0)
    shm.close_fd()


def test_foreign_segment(cell_name: str) -> None:
    _foreign_segment(cell_name, os.urandom(8192))
    with pytest.raises(LayoutMismatch, match=rf"{cell_name}.*no heapd header.*heapd down"):
        Cell.attach(cell_name)
    with pytest.raises(LayoutMismatch):
        Cell.open(cell_name, SMALL)


def test_segment_too_small_for_a_header(cell_name: str) -> None:
    _foreign_segment(cell_name, b"\x01" * 100)
    with pytest.raises(LayoutMismatch, match="too small"):
        Cell.attach(cell_name)


def _segment_path(name: str) -> str:
    return CellNames(name).dev_shm_paths()[0]


def test_truncated_segment(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    path = _segment_path(cell_name)
    os.truncate(path, os.path.getsize(path) - 4096)
    with pytest.raises(LayoutMismatch, match="truncated"):
        Cell.attach(cell_name)


def _poke_header(name: str, word: int, value: int) -> None:
    with open(_segment_path(name), "r+b") as f:
        f.seek(8 * word)
        f.write(struct.pack("<q", value))


def test_other_layout_version(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    _poke_header(cell_name, H.VERSION, 99)
    with pytest.raises(LayoutMismatch, match="layout version 99"):
        Cell.attach(cell_name)


def test_unfinished_segment(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    _poke_header(cell_name, H.MAGIC, 0)
    with pytest.raises(LayoutMismatch, match="never finished"):
        Cell.attach(cell_name)


def test_impossible_capacities_in_header(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    _poke_header(cell_name, H.TASKS, -5)
    with pytest.raises(LayoutMismatch, match="impossible capacities"):
        Cell.attach(cell_name)


def test_missing_semaphore(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    posix_ipc.unlink_semaphore(CellNames(cell_name).repair)
    with pytest.raises(LayoutMismatch, match=r"semaphore .* missing"):
        Cell.attach(cell_name)


def test_missing_doorbell(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    os.unlink(CellNames(cell_name).scheduler_bell)
    with pytest.raises(LayoutMismatch, match=r"doorbell .* missing"):
        Cell.attach(cell_name)


def test_a_doorbell_that_is_not_a_fifo_is_refused(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    bell = CellNames(cell_name).plm_bell
    os.unlink(bell)
    with open(bell, "w") as planted:
        planted.write("not a fifo")
    os.chmod(bell, 0o600)
    with pytest.raises(ShmError, match="not a doorbell FIFO"):
        Cell.attach(cell_name)


def test_nothing_of_the_cell_remains_in_dev_shm() -> None:
    with shm_helpers.scratch_cell_name() as name:
        with Cell.create(name, SMALL) as cell:
            cell.submit([NewTask(b"x")], 1.0)
        assert len(leftovers(name)) == 5
    assert leftovers(name) == []
    assert not [f for f in os.listdir("/dev/shm") if name in f]
