"""Fixtures: a clean environment, a unique cell per test, real cells torn down even on failure.

Test cells use the transport HEAPD_TEST_TRANSPORT names (unix, the default, or tcp), so
`HEAPD_TEST_TRANSPORT=tcp make test` runs the whole suite over TCP; a test may ask for one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from heapd import shm
from heapd.runtime import sockets
from heapd.runtime.bench.cells import OpenCell
from heapd.runtime.config import Transport
from heapd.runtime.launch import LocalCell
from tests.helpers import MARK, kill_all, marked_processes, shm_entries

TEST_TOKEN = f"test-{uuid.uuid4().hex}"
TRANSPORTS = [t.value for t in Transport]  # for tests parametrized by transport


@pytest.fixture(scope="session")
def test_transport() -> str:
    """The session's transport for test cells: HEAPD_TEST_TRANSPORT (unix or tcp; default
    unix). A session fixture is set up before `_no_heapd_env` clears HEAPD_* for a test."""
    transport = os.environ.get("HEAPD_TEST_TRANSPORT", Transport.UNIX.value)
    if transport not in TRANSPORTS:
        raise pytest.UsageError(f"HEAPD_TEST_TRANSPORT={transport!r}: expected one of {TRANSPORTS}")
    return transport


@pytest.fixture(autouse=True)
def _no_heapd_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests never see the developer's HEAPD_* settings, and never write a journal into the
    developer's ~/.local/state (a cell's default state directory) nor sockets and pid files
    into their XDG_RUNTIME_DIR (a private directory of the test instead). Every cell and client
    of a test shares one token through HEAPD_TOKEN, as a deployment may hand it out (the token
    files `heapd up` makes itself are tested in test_auth without it)."""
    for key in list(os.environ):
        if key.startswith("HEAPD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
    runtime = tmp_path_factory.mktemp("xdg-run")
    runtime.chmod(0o700)  # what XDG_RUNTIME_DIR must be, or the sockets go to /tmp
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("HEAPD_TOKEN", TEST_TOKEN)


@pytest.fixture
def cell_name() -> Iterator[str]:
    """A cell name no other test (or run) uses; its shared memory is removed afterwards."""
    name = f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        shm.Cell.unlink(name)


StartCell = Callable[..., LocalCell]


@pytest.fixture
def start_cell(tmp_path: Path, test_transport: str) -> Iterator[StartCell]:
    """Factory: start a real cell (`heapd up` and its processes); on teardown check the shared
    memory is consistent, stop everything, and fail if any process, /dev/shm entry, socket or
    socket directory survived."""
    started: list[LocalCell] = []

    def start(
        workers: int = 2,
        slots: int = 2,
        extra_args: tuple[str, ...] = (),
        name: str | None = None,
        state_dir: Path | None = None,
        transport: str | None = None,
    ) -> LocalCell:
        """`name` and `state_dir` given: the same cell again (a restart of a stopped one).
        `transport` None: the session's (`test_transport`)."""
        name = name or f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, MARK: name}
        cell = LocalCell(
            name,
            workers=workers,
            slots=slots,
            log_dir=tmp_path / name,
            state_dir=state_dir or tmp_path / name / "state",
            extra_args=extra_args,
            env=env,
            transport=transport or test_transport,
        )
        started.append(cell)
        cell.start()
        return cell

    yield start
    problems: list[str] = []
    for cell in started:
        if cell.process is not None and cell.info and shm.Cell.exists(cell.name):
            with shm.Cell.attach(cell.name) as handle:
                problems += [f"{cell.name}: {p}" for p in handle.check()]
        cell.stop()
    for name in dict.fromkeys(cell.name for cell in started):  # a cell restarted counts once
        leftovers = marked_processes(name)
        kill_all(leftovers)
        if leftovers:
            problems.append(f"{name}: processes left running: {leftovers}")
        entries = shm_entries(name)
        shm.Cell.unlink(name)
        if entries:
            problems.append(f"{name}: /dev/shm entries left: {entries}")
    for cell in started:
        if cell.socket_dir.exists():
            left = sorted(p.name for p in cell.socket_dir.iterdir())
            problems.append(f"{cell.name}: socket directory {cell.socket_dir} left: {left}")
            sockets.remove_dir(cell.socket_dir)
    assert not problems, "\n".join(problems)


@pytest.fixture
def open_cell(start_cell: StartCell) -> OpenCell:
    """A bench `OpenCell` over `start_cell`: the workloads that start their own cells get
    checked, cleaned-up test cells, one at a time as the bench runs them."""

    @contextlib.contextmanager
    def open_one(
        label: str, workers: int, slots: int, extra_args: Sequence[str]
    ) -> Iterator[LocalCell]:
        cell = start_cell(workers=workers, slots=slots, extra_args=tuple(extra_args))
        try:
            yield cell
        finally:
            cell.stop()

    return open_one
