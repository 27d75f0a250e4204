"""`heapd down` signals only the cell's own `heapd up`: a pid file naming any other process
(stale, reused pid, planted) is refused and removed, and that process survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from heapd.runtime import pidfile, supervisor
from tests.conftest import StartCell
from tests.helpers import assert_eventually

STOP_S = 30.0
# A stand-in whose command line reads `heapd up --cell X`: it just waits to be signalled.
PAUSE = "import signal; signal.pause()"


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pid files go to a directory of this test (XDG_RUNTIME_DIR), not to /tmp."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def cell() -> str:
    return f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed afterwards whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _start(spawn: list[subprocess.Popen[bytes]], argv: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    spawn.append(process)
    # Popen returns once the child has exec'd, but its /proc cmdline may read empty a moment
    # longer (a process still starting); a real `heapd up` writes its pid file much later.
    assert_eventually(lambda: Path(f"/proc/{process.pid}/cmdline").read_bytes())
    return process


def _fake_up(spawn: list[subprocess.Popen[bytes]], cell: str) -> subprocess.Popen[bytes]:
    return _start(spawn, [sys.executable, "-c", PAUSE, "heapd", "up", "--cell", cell])


def _write(cell: str, pid: int, mode: int = 0o600) -> Path:
    path = pidfile.path(cell)
    path.write_text(str(pid))
    os.chmod(path, mode)
    return path


@pytest.mark.usefixtures("run_dir")
def test_an_unrelated_process_survives_down_and_the_stale_file_goes(
    cell: str, spawn: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    sleeper = _start(spawn, ["sleep", "1000"])
    path = _write(cell, sleeper.pid)
    assert supervisor.down(cell, timeout_s=STOP_S) == 0
    assert sleeper.poll() is None
    assert not path.exists()
    err = capsys.readouterr().err
    assert f"names pid {sleeper.pid}" in err and "not `heapd up`" in err and "sleep 1000" in err


@pytest.mark.usefixtures("run_dir")
def test_the_supervisor_of_another_cell_survives(
    cell: str, spawn: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    other = _fake_up(spawn, "other")
    _write(cell, other.pid)
    assert not pidfile.stop(cell, STOP_S)
    assert other.poll() is None
    assert "`heapd up` of cell 'other'" in capsys.readouterr().err


@pytest.mark.usefixtures("run_dir")
def test_the_cells_supervisor_is_signalled(cell: str, spawn: list[subprocess.Popen[bytes]]) -> None:
    up = _fake_up(spawn, cell)
    _write(cell, up.pid)
    assert pidfile.stop(cell, STOP_S)
    assert up.wait(STOP_S) == -signal.SIGTERM


@pytest.mark.usefixtures("run_dir")
def test_a_process_younger_than_the_file_reused_the_pid(
    cell: str, spawn: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    up = _fake_up(spawn, cell)
    path = _write(cell, up.pid)
    an_hour_ago = path.stat().st_mtime - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    assert not pidfile.stop(cell, STOP_S)
    assert up.poll() is None
    assert not path.exists()
    assert "started after the pid file was written" in capsys.readouterr().err


@pytest.mark.usefixtures("run_dir")
@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_file_others_could_write_is_not_used(
    cell: str, spawn: list[subprocess.Popen[bytes]], mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    up = _fake_up(spawn, cell)
    path = _write(cell, up.pid, mode)
    assert not pidfile.stop(cell, STOP_S)
    assert up.poll() is None
    assert path.exists()  # not ours to judge: left for its owner
    assert f"mode {mode:04o}" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
@pytest.mark.usefixtures("run_dir")
def test_a_file_of_another_user_is_not_used(
    cell: str, spawn: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    up = _fake_up(spawn, cell)
    os.chown(_write(cell, up.pid), 12345, -1)
    assert not pidfile.stop(cell, STOP_S)
    assert up.poll() is None
    assert "belongs to uid 12345" in capsys.readouterr().err


@pytest.mark.usefixtures("run_dir")
def test_a_symlink_is_neither_followed_nor_written_through(
    cell: str, spawn: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    up = _fake_up(spawn, cell)
    victim = tmp_path / "victim"
    victim.write_text(str(up.pid))
    pidfile.path(cell).symlink_to(victim)
    assert not pidfile.stop(cell, STOP_S)
    assert up.poll() is None
    pidfile.claim(cell)  # `heapd up` replaces the link, it does not write into its target
    assert victim.read_text() == str(up.pid)
    assert not pidfile.path(cell).is_symlink()
    assert pidfile.read(pidfile.path(cell)).pid == os.getpid()
    assert pidfile.path(cell).stat().st_mode & 0o777 == 0o600


@pytest.mark.usefixtures("run_dir")
@pytest.mark.parametrize("content", ["", "garbage", "-1", "0", "9" * 100])
def test_a_file_without_a_pid_is_removed(cell: str, content: str) -> None:
    path = pidfile.path(cell)
    path.write_text(content)
    assert not pidfile.stop(cell, STOP_S)
    assert not path.exists()


@pytest.mark.usefixtures("run_dir")
def test_release_removes_only_its_own_file(cell: str) -> None:
    pidfile.claim(cell)
    assert pidfile.path(cell).read_text() == str(os.getpid())
    pidfile.release(cell)
    assert not pidfile.path(cell).exists()
    _write(cell, 1)  # a later `heapd up` took it over
    pidfile.release(cell)
    assert pidfile.path(cell).exists()


def test_down_stops_a_real_cell(start_cell: StartCell) -> None:
    cell = start_cell(workers=0)
    assert cell.process is not None
    assert pidfile.path(cell.name).read_text() == str(cell.process.pid)
    assert supervisor.down(cell.name, timeout_s=STOP_S) == 0
    assert cell.process.wait(STOP_S) == supervisor.EXIT_OK
    assert not pidfile.path(cell.name).exists()
