"""The transport between the processes of one host (issue 12, item 2), on real cells: with
`--transport unix` the roles and local workers talk gRPC over Unix sockets in the cell's socket
directory, with `tcp` over TCP; the same tasks, the same faults, the same outcome.

The rest of the suite runs over the session's transport (HEAPD_TEST_TRANSPORT, default unix);
these tests run over both. `start_cell` checks after each that the shared memory is consistent
and that no process, /dev/shm entry, socket or socket directory survived.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from heapd import Client
from heapd.runtime import sockets, supervisor
from heapd.runtime.launch import LocalCell
from tests import tasks_for_tests as t
from tests.conftest import TRANSPORTS, StartCell
from tests.helpers import assert_eventually, is_running, role_pids


def threads(pid: int) -> int:
    """How many threads of `pid` are left (a zombie's leader counts; 0 once reaped)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def alive_addresses(client: Client) -> list[str]:
    return sorted(w.address for w in client.cluster_status().workers if w.state == "ALIVE")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tasks_and_a_killed_worker_over_each_transport(
    start_cell: StartCell, transport: str
) -> None:
    """Tasks come back over each transport; SIGKILL one of two workers mid-run and every task
    still completes, and the supervisor's restart of the worker joins again at the same
    address (over unix, its socket path: the file the killed one left is replaced)."""
    cell = start_cell(workers=2, slots=1, transport=transport)
    with Client(cell.local_address) as client:
        assert client.gather(client.map(t.square, range(20)), timeout=60) == [
            i * i for i in range(20)
        ]
        command = client.submit_command(["sh", "-c", "echo over-$0", transport])
        assert command.result(timeout=60).stdout == f"over-{transport}\n".encode()
        before = {w.pid: w.address for w in client.cluster_status().workers}
        check_addresses(cell, sorted(before.values()), transport)

        n = 200
        futures = [client.submit(t.add_after_sleep, i, 1, 0.002) for i in range(n)]
        assert_eventually(lambda: sum(f.done() for f in futures) >= n // 8, timeout_s=30)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        assert client.gather(futures, timeout=60) == [i + 1 for i in range(n)]

        def rejoined() -> bool:
            pids = role_pids(cell.name, "worker")
            return len(pids) == 2 and victim not in pids and len(alive_addresses(client)) == 2

        assert_eventually(rejoined, timeout_s=30)
        if transport == "unix":
            assert alive_addresses(client) == sorted(before.values()), "the same socket paths"
        assert client.submit(t.square, 9).result(timeout=30) == 81


def check_addresses(cell: LocalCell, workers: list[str], transport: str) -> None:
    """With tcp: no socket anywhere. With unix: the PLM, register and workers on sockets of
    the cell's private directory, each 0600, and the command line takes a unix: address."""
    if transport == "tcp":
        assert cell.local_address == cell.address
        assert not any(sockets.is_unix(a) for a in workers)
        assert not cell.socket_dir.exists()
        return
    directory = cell.socket_dir
    assert cell.local_address == f"unix:{directory}/plm.sock"
    assert cell.info["register_socket"] == f"unix:{directory}/register.sock"
    assert workers == [f"unix:{directory}/worker-{i}.sock" for i in range(2)]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    names = ["plm.sock", "register.sock", "worker-0.sock", "worker-1.sock"]
    assert modes == dict.fromkeys(names, 0o600)
    shown = subprocess.run(
        [sys.executable, "-m", "heapd", "status", "--json", "--address", cell.local_address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"{directory}/worker-0.sock" in shown.stdout


def test_a_stale_socket_left_by_a_killed_register_does_not_stop_its_restart(
    start_cell: StartCell,
) -> None:
    """The register SIGKILLed leaves its socket file behind (nothing unlinks it); held there
    by stopping the supervisor until the register is dead, then let go: the restarted register
    binds the same path, the workers join it again over it, and tasks flow."""
    cell = start_cell(workers=2, slots=1, transport="unix")
    assert cell.process is not None
    path = sockets.path_of(cell.info["register_socket"])
    with Client(cell.local_address) as client:
        assert client.submit(t.square, 3).result(timeout=30) == 9
        (register,) = role_pids(cell.name, "register")
        os.kill(cell.process.pid, signal.SIGSTOP)  # no reaping, no restart for now
        try:
            os.kill(register, signal.SIGKILL)
            # Its sockets are closed once its last thread has exited: the leader shows as a
            # zombie while the others may still be on their way out.
            assert_eventually(lambda: not is_running(register) and threads(register) <= 1)
            assert stat.S_ISSOCK(os.lstat(path).st_mode), "the killed register's stale socket"
            assert sockets.check_listenable(path) == path, "stale: nobody answers there"
        finally:
            os.kill(cell.process.pid, signal.SIGCONT)
        assert_eventually(lambda: role_pids(cell.name, "register") not in ([], [register]))
        assert_eventually(lambda: len(alive_addresses(client)) == 2, timeout_s=30)
        assert client.gather(client.map(t.square, range(50)), timeout=60) == [
            i * i for i in range(50)
        ]
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_down_removes_a_socket_directory_left_behind() -> None:
    """A `heapd up` that was SIGKILLed leaves its cell's socket directory; `heapd down` takes it
    away with the shared memory."""
    name = f"t{os.getpid()}-down"
    directory = sockets.ensure_dir(sockets.cell_dir(name, os.environ))
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(directory / sockets.PLM))
    assert supervisor.down(name, timeout_s=1.0, env=os.environ) == 0
    assert not directory.exists()
