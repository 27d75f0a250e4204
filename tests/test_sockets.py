"""Where a cell's Unix sockets live (`heapd.runtime.sockets`): the directory chosen, refused
when another user could have planted or can reach it (by `heapd up` too), paths within
sun_path, a live socket never taken over, a stale one reused, and the directory removed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from heapd.runtime import sockets
from heapd.runtime.sockets import SocketPathError
from heapd.runtime.supervisor import CellPlan
from tests.helpers import shm_entries


def test_the_directory_is_under_xdg_runtime_dir_when_it_is_usable(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    assert sockets.cell_dir("c1", {"XDG_RUNTIME_DIR": str(runtime)}) == runtime / "heapd" / "c1"


@pytest.mark.parametrize("mode", [0o755, 0o770])
def test_else_under_tmp_per_user(tmp_path: Path, mode: int) -> None:
    fallback = Path(f"/tmp/heapd-{os.getuid()}") / "c1"
    assert sockets.cell_dir("c1", {}) == fallback
    assert sockets.cell_dir("c1", {"XDG_RUNTIME_DIR": "relative/run"}) == fallback
    assert sockets.cell_dir("c1", {"XDG_RUNTIME_DIR": str(tmp_path / "missing")}) == fallback
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)  # not private, as the XDG spec requires: not used
    assert sockets.cell_dir("c1", {"XDG_RUNTIME_DIR": str(shared)}) == fallback


@pytest.mark.parametrize("cell", ["..", ".", "a/b", ""])
def test_a_cell_name_never_escapes_the_directory(cell: str) -> None:
    with pytest.raises(ValueError):
        sockets.cell_dir(cell, {})


def test_ensure_dir_makes_both_levels_private_whatever_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "heapd" / "c1"
    umask = os.umask(0o277)  # mkdir alone would make them 0500
    try:
        assert sockets.ensure_dir(directory) == directory
    finally:
        os.umask(umask)
    assert {(d.stat().st_mode & 0o777) for d in (directory, directory.parent)} == {0o700}
    assert sockets.ensure_dir(directory) == directory  # again: already there, ours


def test_ensure_dir_refuses_a_directory_others_can_reach(tmp_path: Path) -> None:
    parent = tmp_path / "heapd"
    parent.mkdir()
    parent.chmod(0o755)
    with pytest.raises(SocketPathError, match=r"open to group or others \(mode 755\)"):
        sockets.ensure_dir(parent / "c1")


def test_ensure_dir_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "heapd").mkdir(mode=0o700)
    (tmp_path / "heapd" / "c1").symlink_to(target)
    with pytest.raises(SocketPathError, match="is a symlink"):
        sockets.ensure_dir(tmp_path / "heapd" / "c1")


def test_ensure_dir_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    if os.getuid() != 0:  # / is root's: somebody else's
        with pytest.raises(SocketPathError, match="belongs to uid 0"):
            sockets.ensure_dir(Path("/tmp"))
        return
    planted = tmp_path / "heapd"  # as root, give one away
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)
    with pytest.raises(SocketPathError, match="belongs to uid 65534"):
        sockets.ensure_dir(planted / "c1")


def test_a_socket_path_must_fit_sun_path(tmp_path: Path) -> None:
    room = sockets.SUN_PATH_MAX - len(os.fsencode(tmp_path)) - 1
    assert sockets.socket_path(tmp_path, "a" * room) == tmp_path / ("a" * room)
    with pytest.raises(SocketPathError, match=f"at most {sockets.SUN_PATH_MAX}") as refused:
        sockets.socket_path(tmp_path, "a" * (room + 1))
    assert str(tmp_path / ("a" * (room + 1))) in str(refused.value), "the message names it"


def test_unix_addresses() -> None:
    assert sockets.address("/run/x.sock") == "unix:/run/x.sock"
    assert sockets.is_unix("unix:/run/x.sock") and sockets.is_unix("unix:")
    assert not sockets.is_unix("127.0.0.1:7070") and not sockets.is_unix("unix-abstract:x")
    assert sockets.path_of("unix:/run/x.sock") == "/run/x.sock"
    with pytest.raises(SocketPathError):
        sockets.path_of("127.0.0.1:7070")
    assert sockets.worker_name(3) == "worker-3.sock"


def test_a_live_socket_is_never_taken_over_a_stale_one_is(tmp_path: Path) -> None:
    path = str(tmp_path / "plm.sock")
    assert sockets.check_listenable(path) == path  # nothing there yet
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        with pytest.raises(SocketPathError, match="in use by a running server"):
            sockets.check_listenable(path)
    assert os.path.exists(path), "closing a socket leaves its file: a stale socket"
    assert sockets.check_listenable(path) == path


def test_a_path_that_is_not_a_socket_or_has_no_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SocketPathError, match="not a socket"):
        sockets.check_listenable(str(tmp_path / "file"))
    with pytest.raises(SocketPathError, match="does not exist"):
        sockets.check_listenable(str(tmp_path / "missing" / "plm.sock"))


def test_a_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sockets.check_listenable("w.sock") == str(tmp_path / "w.sock")


def test_a_role_given_an_unusable_socket_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sockets.role_socket("plm", "") == ""
    with pytest.raises(SystemExit) as exited:
        sockets.role_socket("plm", str(tmp_path / "missing" / "plm.sock"))
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("heapd plm: the directory of the socket")


def test_remove_dir_takes_sockets_and_leaves_anything_else(tmp_path: Path) -> None:
    directory = sockets.ensure_dir(tmp_path / "heapd" / "c1")
    for name in ("plm.sock", "worker-0.sock"):
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(directory / name))  # left behind, as by a SIGKILLed role
    assert sockets.remove_dir(directory)
    assert not directory.exists()
    assert sockets.remove_dir(directory), "already gone"
    sockets.ensure_dir(directory)
    (directory / "notes.txt").write_text("not ours to delete")
    assert not sockets.remove_dir(directory)
    assert (directory / "notes.txt").exists()


def test_up_checks_the_longest_socket_path_first() -> None:
    deep = Path("/" + "d" * 85)
    assert CellPlan(cell="c1", workers=10, socket_dir=deep).socket_problem() == ""
    problem = CellPlan(cell="c1", workers=1000, socket_dir=deep / "cell-dir").socket_problem()
    assert "worker-999.sock" in problem and "sun_path" in problem
    assert CellPlan(cell="c1", workers=1000).socket_problem() == "", "tcp: no sockets"


def test_up_refuses_a_socket_directory_others_can_reach(cell_name: str) -> None:
    """`heapd up` exits 2 naming the directory, and leaves neither shared memory nor the
    directory's contents changed."""
    directory = sockets.cell_dir(cell_name, os.environ)
    directory.parent.mkdir(mode=0o700)
    directory.mkdir()
    directory.chmod(0o755)
    argv = [
        sys.executable, "-m", "heapd", "up", "--cell", cell_name, "--port", "0",
        "--register-port", "0", "--workers", "1", "--durability", "none", "--auth", "none",
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"the socket directory {directory} is open to group or others" in done.stderr
    assert directory.is_dir() and not shm_entries(cell_name)
    directory.rmdir()
