"""The pid file `heapd up` leaves for `heapd down`, and the checks before `heapd down` signals.

The file is `$XDG_RUNTIME_DIR/heapd-CELL.pid` or, without that directory, `/tmp/heapd-CELL.pid`:
a directory anyone can write in, and a pid outlives its process (pids are reused). So the file
alone proves nothing, and `heapd down` signals the pid it names only when

- the file is this user's own regular file, not a symlink, not writable by anyone else;
- the pid is a live process whose command line is `heapd up` (of this cell, when the command
  line names one: `--cell` may also come from HEAPD_CELL or a TOML file);
- that process started before the file was last written (a younger process that was given the
  same pid after the supervisor died is not the one that wrote it);

and it sends the signal through a pidfd opened before those checks, so the process checked is
the process signalled, even if it exits and its pid is reused in between. A file naming any other
process is stale: it is removed, with a message, and nothing is signalled. A file that is not
ours is left alone, with a message.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from heapd.shm.lock import process_start

MODE = 0o600
MAX_BYTES = 64  # a pid in decimal and a newline; anything longer is not ours
CLOCK_SLACK_S = 1.0  # start times have clock-tick resolution; wall clocks get adjusted
_MODULES = ("heapd", "heapd.cli", "heapd.cli.main")  # what `python -m ...` runs heapd as


class PidFileError(Exception):
    """The pid file is not this user's own private file: it was planted or may have been."""


@dataclass(frozen=True)
class PidRecord:
    """What one pid file says: the pid, and when the file was written (its mtime)."""

    pid: int
    written_at: float
    ino: tuple[int, int]  # (st_dev, st_ino): remove the file only if it is still this one


def path(cell: str) -> Path:
    """Where `heapd up` records its pid for `heapd down`."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"heapd-{cell}.pid"


def claim(cell: str) -> None:
    """Record this process as the cell's `heapd up`: a new 0600 file renamed over the old one
    (never following a symlink planted at the name). A failure is reported, not raised: the
    cell runs anyway, only `heapd down` will not find this process to stop."""
    target = path(cell)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
        try:
            os.fchmod(fd, MODE)
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        print(
            f"heapd up: cannot write the pid file {target} ({exc}): `heapd down --cell {cell}`"
            " will not be able to stop this process; stop it with SIGTERM",
            file=sys.stderr,
        )


def release(cell: str) -> None:
    """Remove the pid file if it names this process (a later `heapd up` may own it now)."""
    with contextlib.suppress(OSError, PidFileError, ValueError):
        record = read(path(cell))
        if record.pid == os.getpid():
            _remove(path(cell), record)


def read(file: Path) -> PidRecord:
    """The pid a pid file names. FileNotFoundError if there is none; PidFileError if it is not
    this user's own private regular file; ValueError if it does not hold a pid."""
    # O_NONBLOCK: a FIFO planted at the name must not block the open.
    fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        _require_private(file, st)
        text = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(text) > MAX_BYTES or not text.strip().isdigit() or int(text) <= 0:
        raise ValueError(f"{file} does not hold a pid ({text[:MAX_BYTES]!r})")
    return PidRecord(int(text), st.st_mtime, (st.st_dev, st.st_ino))


def _require_private(file: Path, st: os.stat_result) -> None:
    uid = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise PidFileError(f"{file} is not a regular file")
    if st.st_uid != uid:
        raise PidFileError(f"{file} belongs to uid {st.st_uid}, not to this user (uid {uid})")
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        raise PidFileError(f"{file} has mode {mode:04o}: others could have written it")


def stop(cell: str, timeout_s: float) -> bool:
    """SIGTERM the cell's `heapd up` and wait up to `timeout_s` for it to exit, if the pid file
    names it; True if a supervisor was signalled. A stale file is removed with a message."""
    file = path(cell)
    try:
        record = read(file)
    except FileNotFoundError:
        return False
    except (PidFileError, OSError) as exc:
        _say(f"not using the pid file: {exc}; nothing signalled")
        return False
    except ValueError as exc:
        _say(f"{exc}: removed the stale pid file; nothing signalled")
        with contextlib.suppress(OSError):
            file.unlink()
        return False
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        _remove(file, record)  # the supervisor died without cleaning up: nothing to say
        return False
    try:
        problem = why_not_supervisor(cell, record)
        if problem is not None:
            _say(
                f"{file} names pid {record.pid}, {problem}: not signalling it; removed the"
                " stale pid file"
            )
            _remove(file, record)
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except PermissionError:
            _say(f"{file} names pid {record.pid}, which this user may not signal")
            return False
        select.select([pidfd], [], [], timeout_s)  # readable once it has exited
    finally:
        os.close(pidfd)
    return True


def why_not_supervisor(cell: str, record: PidRecord) -> str | None:
    """Why the process `record` names is not the cell's `heapd up` that wrote the record, or
    None if it is."""
    try:
        raw = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return "which has exited"
    start = process_start(record.pid)
    if start is None:
        return "which has exited"
    if not raw:  # a kernel thread, or a process still in exec: not a `heapd up` that wrote
        return "which is not `heapd up` (it has no command line)"
    argv = [arg.decode(errors="surrogateescape") for arg in raw.rstrip(b"\0").split(b"\0")]
    shown = " ".join(argv)[:200]
    up_args = _heapd_up_args(argv)
    if up_args is None:
        return f"which is not `heapd up` (its command line is {shown!r})"
    named = _cell_flag(up_args)
    if named is not None and named != cell:
        return f"which is `heapd up` of cell {named!r}, not of {cell!r}"
    if started_at(start) > record.written_at + CLOCK_SLACK_S:
        return "which started after the pid file was written (the pid was reused)"
    return None


def started_at(ticks: int) -> float:
    """A process start time (clock ticks since boot, /proc/PID/stat) as wall-clock time."""
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def _heapd_up_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `up` if `argv` runs `heapd up` (the `heapd` script, or python -m
    heapd), else None."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "heapd":
            rest = list(argv[i + 1 :])
        elif arg == "-m" and i + 1 < len(argv) and argv[i + 1] in _MODULES:
            rest = list(argv[i + 2 :])
        else:
            continue
        return rest[1:] if rest[:1] == ["up"] else None
    return None


def _cell_flag(args: Sequence[str]) -> str | None:
    """The value of the last --cell in `args` (argparse's rule), None if there is none."""
    named = None
    for i, arg in enumerate(args):
        if arg == "--cell" and i + 1 < len(args):
            named = args[i + 1]
        elif arg.startswith("--cell="):
            named = arg.removeprefix("--cell=")
    return named


def _remove(file: Path, record: PidRecord) -> None:
    """Unlink the pid file if it is still the one `record` was read from."""
    with contextlib.suppress(OSError):
        st = os.lstat(file)
        if (st.st_dev, st.st_ino) == record.ino:
            file.unlink()


def _say(message: str) -> None:
    print(f"heapd down: {message}", file=sys.stderr)
