"""A cell's shared memory is trusted only if it is this user's own, mode 0600: a segment,
semaphore or doorbell planted by another user (a valid header is easy to forge), or one others
could read or write, is refused at attach before it is used."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from heapd.shm import Cell, CellNames, NewTask, ShmError
from heapd.shm.errors import UntrustedObject
from tests import shm_helpers
from tests.shm_helpers import SMALL, leftovers

OTHER_UID = 12345
KINDS = ["segment", "lock", "repair", "scheduler_bell", "plm_bell"]


@pytest.fixture
def cell_name() -> Iterator[str]:
    with shm_helpers.scratch_cell_name() as name:
        yield name


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after a test changes it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _path(cell: str, kind: str) -> str:
    names = CellNames(cell)
    name = getattr(names, kind)
    assert isinstance(name, str)
    return names.path(name)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_created_objects_are_ours_and_exactly_0600_whatever_the_umask(
    cell_name: str, mask: int
) -> None:
    os.umask(mask)
    with Cell.create(cell_name, SMALL):
        paths = leftovers(cell_name)
        assert len(paths) == len(KINDS)
        for path in paths:
            st = os.stat(path)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600), path
        with Cell.attach(cell_name) as again:  # and so attachable by their owner
            assert again.queue_depth() == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [0o644, 0o660, 0o606, 0o400, 0o700])
def test_an_object_with_another_mode_is_refused(cell_name: str, kind: str, mode: int) -> None:
    with Cell.create(cell_name, SMALL) as cell:
        cell.submit([NewTask(b"x")], 1.0)
        path = _path(cell_name, kind)
        os.chmod(path, mode)
        with pytest.raises(
            UntrustedObject, match=rf"{cell_name}.*{path}.*mode is {mode:04o}"
        ) as err:
            Cell.attach(cell_name)
        assert isinstance(err.value, ShmError)
        assert err.value.path == path
        os.chmod(path, 0o600)  # put right, it is accepted again
        with Cell.attach(cell_name) as again:
            assert again.queue_depth() == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
@pytest.mark.parametrize("kind", KINDS)
def test_an_object_of_another_user_is_refused(cell_name: str, kind: str) -> None:
    with Cell.create(cell_name, SMALL):
        path = _path(cell_name, kind)
        os.chown(path, OTHER_UID, -1)
        with pytest.raises(UntrustedObject, match=rf"{path}.*belongs to uid {OTHER_UID}"):
            Cell.attach(cell_name)
        with pytest.raises(UntrustedObject):
            Cell.open(cell_name, SMALL)  # not taken for "missing" and recreated either


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_planted_segment_with_a_valid_header_is_refused(cell_name: str) -> None:
    """Another user's cell, header and all: the layout is right, the owner is not."""
    Cell.create(cell_name, SMALL).close()
    for path in leftovers(cell_name):
        os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(UntrustedObject, match=f"belongs to uid {OTHER_UID}"):
        Cell.attach(cell_name)


def test_a_doorbell_replaced_by_a_symlink_is_refused(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    bell = CellNames(cell_name).plm_bell
    os.unlink(bell)
    target = f"{bell}.target"
    os.mkfifo(target, 0o600)
    try:
        os.symlink(target, bell)
        with pytest.raises(UntrustedObject, match="not a doorbell FIFO"):
            Cell.attach(cell_name)
    finally:
        os.unlink(target)


def test_a_semaphore_replaced_by_a_symlink_is_refused(cell_name: str) -> None:
    Cell.create(cell_name, SMALL).close()
    lock = _path(cell_name, "repair")
    target = f"{lock}.target"
    os.rename(lock, target)
    try:
        os.symlink(target, lock)
        with pytest.raises(UntrustedObject, match="not a semaphore file"):
            Cell.attach(cell_name)
    finally:
        os.unlink(target)


def test_refused_attach_leaves_the_cell_untouched(cell_name: str) -> None:
    """Refusing is all attach does: the objects stay for their owner to inspect or remove."""
    with Cell.create(cell_name, SMALL) as cell:
        os.chmod(_path(cell_name, "segment"), 0o644)
        with pytest.raises(UntrustedObject, match=f"heapd down --cell {cell_name}"):
            Cell.attach(cell_name)
        assert len(leftovers(cell_name)) == len(KINDS)
        assert cell.check() == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_attach_leaks_no_descriptor(cell_name: str, kind: str) -> None:
    """The objects opened before the refused one are closed again (the last doorbell refused
    leaves the first one's descriptor behind otherwise)."""
    with Cell.create(cell_name, SMALL):
        os.chmod(_path(cell_name, kind), 0o644)
        before = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(UntrustedObject):
            Cell.attach(cell_name)
        assert sorted(os.listdir("/proc/self/fd")) == before
