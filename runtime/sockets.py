"""Where a cell's Unix domain sockets live, how they are named, and the `unix:` addresses.

Roles and workers of one host talk gRPC over Unix domain sockets (`heapd up --transport unix`,
the default): the same gRPC, without the TCP/IP stack under it. A cell's sockets share one
private directory,

- `$XDG_RUNTIME_DIR/heapd/<cell>` when XDG_RUNTIME_DIR is set and usable (the per-user tmpfs
  the login manager makes: absolute, a directory, ours, 0700; cleared at logout and reboot),
- else `/tmp/heapd-<uid>/<cell>`,

named `plm.sock`, `register.sock` and `worker-<n>.sock`. The directory and its parent are
created 0700 and refused (`SocketPathError`) when either is a symlink, not ours, or open to group
or others: in a world-writable /tmp another user could have made them first. The directory's
mode is what keeps other users from connecting; the token check and TLS still apply on every call.

A socket path must fit `sun_path`: 108 bytes with the terminating NUL, so 107 of path; a longer
one is refused with a message naming it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from heapd.shm.names import validate_cell_name

UNIX = "unix:"  # a gRPC target or listening address naming a Unix socket path
SUN_PATH_MAX = 107  # bytes of a socket path: sun_path is 108 bytes, NUL included
PLM = "plm.sock"
REGISTER = "register.sock"
PRIVATE = 0o700
CONNECT_TIMEOUT_S = 1.0


class SocketPathError(ValueError):
    """A socket path or its directory cannot be used (too long, unsafe, in use)."""


def worker_name(index: int | str) -> str:
    """The socket name of local worker `index` ("worker-0.sock"; "worker-extra-1.sock")."""
    return f"worker-{index}.sock"


def cell_dir(cell: str, env: Mapping[str, str]) -> Path:
    """The cell's socket directory (not created): see the module docstring."""
    validate_cell_name(cell)
    if cell in (".", ".."):
        raise SocketPathError(f"cell name {cell!r} cannot name a directory")
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and _usable_runtime_dir(Path(runtime)):
        return Path(runtime) / "heapd" / cell
    return Path(f"/tmp/heapd-{os.getuid()}") / cell


def _usable_runtime_dir(path: Path) -> bool:
    """What the XDG base directory spec promises of XDG_RUNTIME_DIR, checked."""
    try:
        info = path.stat()
    except OSError:
        return False
    return (
        path.is_absolute()
        and stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & 0o077
        and os.access(path, os.W_OK | os.X_OK)
    )


def ensure_dir(directory: Path) -> Path:
    """Create `directory` and its parent 0700 if missing; SocketPathError if either is a
    symlink, not a directory, not ours, or open to group or others."""
    for path in (directory.parent, directory):
        try:
            path.mkdir(mode=PRIVATE)
            os.chmod(path, PRIVATE)  # whatever the umask took away
        except FileExistsError:
            pass
        except OSError as exc:
            raise SocketPathError(f"cannot create the socket directory {path}: {exc}") from None
        _check_private(path)
    return directory


def _check_private(path: Path) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise SocketPathError(f"the socket directory {path} is a symlink; refusing to use it")
    if not stat.S_ISDIR(info.st_mode):
        raise SocketPathError(f"{path} is not a directory; it cannot hold the cell's sockets")
    if info.st_uid != os.getuid():
        raise SocketPathError(
            f"the socket directory {path} belongs to uid {info.st_uid}, not to us"
            f" (uid {os.getuid()}); refusing to use it"
        )
    if info.st_mode & 0o077:
        raise SocketPathError(
            f"the socket directory {path} is open to group or others"
            f" (mode {stat.S_IMODE(info.st_mode):o}); make it 0700 or remove it"
        )


def socket_path(directory: Path, name: str) -> Path:
    """`directory/name`, checked to fit sun_path (SocketPathError naming it)."""
    path = directory / name
    check_length(path)
    return path


def check_length(path: str | Path) -> None:
    """SocketPathError if `path` is longer than a Unix socket path can be."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise SocketPathError(
            f"the socket path {path} is {size} bytes; a Unix socket path holds at most"
            f" {SUN_PATH_MAX} (sun_path): use a shorter directory (XDG_RUNTIME_DIR) or cell name"
        )


def address(path: str | Path) -> str:
    """The gRPC address of a socket path: "unix:/abs/path"."""
    return UNIX + str(path)


def is_unix(target: str) -> bool:
    """Whether a gRPC address or peer names a Unix socket ("unix:...")."""
    return target.startswith(UNIX)


def path_of(target: str) -> str:
    """The socket path of a "unix:PATH" address."""
    if not is_unix(target):
        raise SocketPathError(f"{target!r} is not a unix: address")
    return target[len(UNIX) :]


def check_listenable(path: str) -> str:
    """The absolute form of a path a role is asked to listen on, once checked: it fits
    sun_path, its directory exists, and no live server answers there (gRPC unlinks a socket
    file before it binds: without this check a second role would silently take the first's
    socket; a stale one, left by a killed role, is fine). SocketPathError otherwise."""
    absolute = os.path.abspath(path)
    check_length(absolute)
    if not os.path.isdir(os.path.dirname(absolute)):
        raise SocketPathError(f"the directory of the socket {absolute} does not exist")
    try:
        info = os.lstat(absolute)
    except FileNotFoundError:
        return absolute
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketPathError(f"{absolute} exists and is not a socket; refusing to replace it")
    if _answers(absolute):
        raise SocketPathError(f"the socket {absolute} is in use by a running server")
    return absolute


def role_socket(role: str, path: str) -> str:
    """The checked, absolute socket path a role was asked to listen on ("" for none); one that
    cannot be used ends the role with a one-line message (exit 2), as a bad flag does."""
    if not path:
        return ""
    try:
        return check_listenable(path)
    except SocketPathError as exc:
        print(f"heapd {role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _answers(path: str) -> bool:
    """Whether something accepts connections on the socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONNECT_TIMEOUT_S)
        try:
            probe.connect(path)
        except OSError:  # refused (stale), gone, or unreachable
            return False
    return True


def make_private(path: str) -> None:
    """Make a bound socket file 0600 (gRPC leaves it as the umask says)."""
    os.chmod(path, 0o600)


def remove_dir(directory: Path) -> bool:
    """Remove a cell's socket directory at clean shutdown: the sockets left in it (a role
    killed before it could unlink its own), then the directory. A symlink, something not ours,
    or a directory holding anything but sockets is left alone. Whether it is gone now."""
    try:
        info = directory.lstat()
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return False
    for entry in directory.iterdir():
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(entry.lstat().st_mode):
                entry.unlink()
    try:
        directory.rmdir()
    except OSError:
        return False
    return True
