"""The durable cell: a host restart, a PLM SIGKILL and bad journals, with real daemons.

A host restart is played as a power cut leaves it: every process of the cell SIGKILLed at once
and its /dev/shm entries removed; only the state directory (the journal) survives. Then
`heapd up` starts again with the same cell name and state directory.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from heapd import Client, TaskLost
from heapd.plm import recovery
from heapd.plm.journal import FILE_NAME, Durability, Journal
from heapd.runtime.launch import CellStartError, LocalCell
from heapd.shm import Cell
from heapd.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests import tasks_for_faults as f
from tests.conftest import StartCell
from tests.helpers import assert_eventually, authed_channel, kill_all, marked_processes, role_pids

TASKS = 240
SECONDS = 0.01
# A task that ended this close to the kill may run again: its outcome was still on its way to
# the journal (the PLM records it after the register settles it). Anything older must not.
SETTLE_MARGIN_S = 1.0


def read_log(path: Path) -> tuple[Counter[int], dict[int, float]]:
    """Starts per tag, and the time each tag first ended."""
    starts: Counter[int] = Counter()
    ends: dict[int, float] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        word, tag, *rest = line.split()
        if word == "start":
            starts[int(tag)] += 1
        elif word == "end":
            ends.setdefault(int(tag), float(rest[1]))
    return starts, ends


def power_cut(cell: LocalCell) -> float:
    """SIGKILL every process of the cell at once and remove its shared memory; returns when."""
    killed_at = time.time()
    cell.crash()
    kill_all(marked_processes(cell.name))  # a role the supervisor restarted since it came up
    assert_eventually(lambda: marked_processes(cell.name) == [], timeout_s=10)
    return killed_at


@pytest.mark.parametrize("done_before_kill", [0, TASKS * 2 // 3])  # before any, and mid-run
def test_a_host_restart_loses_no_acknowledged_task(
    start_cell: StartCell, tmp_path: Path, done_before_kill: int
) -> None:
    log = tmp_path / "tasks.log"
    state = tmp_path / "state"
    keys = [f"order-{i}" for i in range(TASKS)]
    first = start_cell(workers=2, slots=2, state_dir=state)
    with Client(first.address) as client:
        futures = client.map(
            f.record_item, [(i, SECONDS, str(log)) for i in range(TASKS)], keys=keys
        )
        ids = [fut.task_id for fut in futures]
        assert_eventually(lambda: len(read_log(log)[1]) >= done_before_kill, timeout_s=60)
        killed_at = power_cut(first)
        received = {tag for tag, fut in enumerate(futures) if fut.done() and not fut.exception()}

    second = start_cell(workers=2, slots=2, name=first.name, state_dir=state)
    with Client(second.address) as client:
        lost = set()
        for tag, fut in enumerate([client.future(task_id) for task_id in ids]):
            try:
                assert fut.result(timeout=120)[0] == tag
            except TaskLost:
                lost.add(tag)
        assert lost <= received, "only a result the first client had (and acknowledged) is gone"
        again = client.map(f.record_item, [(i, SECONDS, str(log)) for i in range(TASKS)], keys=keys)
        assert [fut.task_id for fut in again] == ids, "a known key returns the first task's id"
        with (
            Journal.open(state, first.name, Durability.OS) as journal,
            Cell.attach(first.name) as cell,
        ):
            assert recovery.check(cell, journal) == []

    starts, ends = read_log(log)
    assert set(starts) == set(range(TASKS)), "every task ran to completion at least once"
    assert set(ends) == set(range(TASKS))
    duplicates = {tag for tag, n in starts.items() if n > 1}
    settled_long_before = {tag for tag in duplicates if ends[tag] < killed_at - SETTLE_MARGIN_S}
    assert settled_long_before == set(), "only tasks in flight at the kill may run twice"


def test_a_key_survives_a_plm_sigkill(start_cell: StartCell, tmp_path: Path) -> None:
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        first = client.submit(f.record, 1, 0.0, str(tmp_path / "log"), key="invoice-7")
        assert first.result(timeout=30)[0] == 1
        (plm,) = role_pids(cell.name, "plm")
        os.kill(plm, signal.SIGKILL)
        assert_eventually(lambda: role_pids(cell.name, "plm") not in ([], [plm]), timeout_s=10)
        second = client.submit(f.record, 1, 0.0, str(tmp_path / "log"), key="invoice-7")
        assert second.task_id == first.task_id
    starts, _ = read_log(tmp_path / "log")
    assert starts == Counter({1: 1}), "the resubmission ran nothing"


def watch_one(stub: task_service_pb2_grpc.TaskServiceStub, session: str, ids: list[int]) -> dict:
    """Results for `ids` from a WatchTasks stream, by id (state only)."""
    request = task_service_pb2.WatchTasksRequest(session=session, task_ids=ids)
    stream = stub.WatchTasks(request, timeout=60)
    got: dict[int, int] = {}
    for reply in stream:
        got.update((r.task_id, r.state) for r in reply.results)
        if len(got) == len(ids):
            break
    stream.cancel()
    return got


def test_an_acknowledged_result_is_gone_after_a_restart_and_another_comes_back(
    start_cell: StartCell, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = start_cell(workers=1, slots=1, state_dir=state)
    spec = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep", params={"seconds": 0}))
    submissions = [task_service_pb2.TaskSubmission(spec=spec)] * 2
    with authed_channel(first.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.SubmitTasksRequest(tasks=submissions, session="s")
        acked, kept = stub.SubmitTasks(request, timeout=30).task_ids
        assert watch_one(stub, "s", [acked, kept]) == {acked: 5, kept: 5}
        ack = task_service_pb2.SubmitTasksRequest(session="s", acks=[acked])
        stub.SubmitTasks(ack, timeout=30)
    power_cut(first)
    second = start_cell(workers=1, slots=1, name=first.name, state_dir=state)
    with authed_channel(second.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        got = watch_one(stub, "new", [acked, kept])
    assert got == {acked: task_pb2.TASK_STATE_UNSPECIFIED, kept: task_pb2.SUCCEEDED}
    fsck = subprocess.run(
        [sys.executable, "-m", "heapd", "fsck", "--cell", first.name, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (fsck.returncode, fsck.stdout.strip()) == (0, f"cell {first.name!r}: consistent")


def make_foreign(path: Path) -> None:
    Journal.open(path, "somebody-else", Durability.OS).close()


def make_other_schema(path: Path) -> None:
    Journal.open(path, "placeholder", Durability.OS).close()
    with sqlite3.connect(path / FILE_NAME) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema'")


def make_garbage(path: Path) -> None:
    path.mkdir(parents=True)
    (path / FILE_NAME).write_bytes(b"not a journal at all" * 64)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (make_foreign, "belongs to cell 'somebody-else'"),
        (make_other_schema, "schema version 99"),
        (make_garbage, "file is not a database"),
    ],
    ids=["foreign", "schema", "corrupt"],
)
def test_a_bad_journal_stops_the_cell_from_starting(
    start_cell: StartCell, tmp_path: Path, spoil: object, says: str
) -> None:
    state = tmp_path / "state"
    spoil(state)  # type: ignore[operator]
    with pytest.raises(CellStartError):
        start_cell(workers=0, state_dir=state)
    logs = "".join(p.read_text() for p in tmp_path.glob("*/plm.log"))
    assert says in logs and str(state / FILE_NAME) in logs


def test_an_unusable_state_dir_stops_the_cell_from_starting(
    start_cell: StartCell, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CellStartError):
        start_cell(workers=0, state_dir=blocker / "state")
    logs = "".join(p.read_text() for p in tmp_path.glob("*/plm.log"))
    assert "cannot create the state directory" in logs and str(blocker) in logs


def test_durability_none_keeps_no_journal(start_cell: StartCell, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cell = start_cell(workers=1, slots=1, state_dir=state, extra_args=("--durability", "none"))
    with Client(cell.address) as client:
        assert client.submit(f.record, 1, 0.0, str(tmp_path / "log")).result(timeout=30)[0] == 1
    assert not (state / FILE_NAME).exists()
