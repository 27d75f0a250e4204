"""`heapd up` and signals: a second Ctrl-C cuts the graceful stop short and leaves nothing behind.

The roles run in their own sessions (a terminal's Ctrl-C reaches only the supervisor), so a
supervisor that simply exits on the second signal would orphan them and their shared memory.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from heapd import Client
from heapd.runtime.supervisor import EXIT_KILLED
from tests import tasks_for_faults as f
from tests.conftest import StartCell
from tests.helpers import assert_eventually, is_running, marked_processes, shm_entries


@pytest.mark.timeout(60)
def test_second_sigint_kills_every_role_and_removes_the_shared_memory(
    start_cell: StartCell, tmp_path: Path
) -> None:
    cell = start_cell(workers=1, slots=1)
    assert cell.process is not None and cell.log_dir is not None
    journal = tmp_path / "journal"
    with Client(cell.address) as client:
        client.submit(f.log_pid_and_sleep, str(journal), 300)
        task_pid = int(assert_eventually(lambda: journal.exists() and journal.read_text()))
    assert shm_entries(cell.name), "the cell's shared memory exists while it runs"

    cell.process.send_signal(signal.SIGINT)
    # The first signal began the graceful stop: the worker got SIGTERM and drains, waiting for
    # its 300 s task. (Waiting for this also keeps the two signals from merging into one.)
    worker_log = cell.log_dir / "worker-0.log"
    assert_eventually(lambda: "signal received, shutting down" in worker_log.read_text())
    cell.process.send_signal(signal.SIGINT)

    assert cell.process.wait(timeout=15) == EXIT_KILLED
    assert_eventually(lambda: marked_processes(cell.name) == [], timeout_s=10)
    assert shm_entries(cell.name) == []
    assert not is_running(task_pid)
