"""End to end: task dependencies (`after=`, futures as arguments) on a real cell, through
failures, cancellations, a SIGKILLed worker, a PLM SIGKILL and a host restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from heapd import Client, CommandResult, DependencyFailed, InvalidArgument
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import (
    assert_eventually,
    gated_command,
    kill_all,
    marked_processes,
    release_gate,
    role_pids,
)


def test_a_diamond_runs_in_order_with_values_passed(start_cell: StartCell, tmp_path: Path) -> None:
    cell = start_cell(workers=2, slots=2)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Client(cell.address) as client:
        a = client.submit(t.add_after_gate, 3, 0, str(gate))  # runs until the gate opens
        b = client.submit(t.add, a, 1)  # a future as an argument: its value, once done
        c = client.submit(t.add, a, b=2)
        d = client.submit(t.add, b, c)
        assert client.get_task(d.task_id).state == "PENDING"
        assert client.get_task(d.task_id).after == [b.task_id, c.task_id]
        assert_eventually(lambda: release_gate(gate))
        assert d.result(timeout=60) == (3 + 1) + (3 + 2)
        assert [f.result() for f in (a, b, c)] == [3, 4, 5]


def test_futures_nested_in_arguments_and_after_without_arguments(
    start_cell: StartCell, tmp_path: Path
) -> None:
    cell = start_cell(workers=1, slots=2)
    marker = tmp_path / "marker"
    with Client(cell.address) as client:
        parts = [client.submit(t.square, i) for i in range(4)]
        nested = client.submit(t.nested_total, [parts[0], (parts[1], {"k": parts[2]}), 10])
        assert nested.result(timeout=60) == 0 + 1 + 4 + 10
        write = client.submit_command(["sh", "-c", f"echo done > {marker}"])
        read = client.submit_command(["cat", str(marker)], after=[write])
        assert read.result(timeout=60) == CommandResult(0, b"done\n", b"")
        # A command's result is passed as the CommandResult the client would get.
        echoed = client.submit(t.identity, client.submit_command(["echo", "hi"]))
        assert echoed.result(timeout=60) == CommandResult(0, b"hi\n", b"")
        again = client.submit(t.add, parts[3], 1)  # a dependency already done: value inlined
        assert again.result(timeout=60) == 10


def test_a_failed_dependency_fails_its_dependents_naming_it(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        bad = client.submit(t.fail_with, "ValueError", "boom", retries=2)
        child = client.submit(t.add, bad, 1, retries=3)
        grandchild = client.submit(t.add, child, 1)
        with pytest.raises(ValueError, match="boom"):
            bad.result(timeout=60)
        with pytest.raises(DependencyFailed, match=f"dependency {bad.task_id} failed") as err:
            child.result(timeout=60)
        assert err.value.dependency_id == bad.task_id
        assert "boom" in str(err.value)
        with pytest.raises(DependencyFailed) as err2:
            grandchild.result(timeout=60)
        assert err2.value.dependency_id == child.task_id
        assert client.get_task(child.task_id).attempt == 0, "never ran, never retried"


def test_cancelling_a_dependency_fails_its_dependents(
    start_cell: StartCell, tmp_path: Path
) -> None:
    cell = start_cell(workers=1, slots=1)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Client(cell.address) as client:
        busy = client.submit_command(gated_command(gate))
        queued = client.submit(t.square, 2)
        dependent = client.submit(t.add, queued, 1)
        assert queued.cancel()
        with pytest.raises(DependencyFailed, match="was cancelled") as err:
            dependent.result(timeout=60)
        assert err.value.dependency_id == queued.task_id
        assert_eventually(lambda: release_gate(gate))
        busy.result(timeout=30)


def test_an_unknown_dependency_is_refused(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1)
    with Client(cell.address) as client:
        with pytest.raises(InvalidArgument, match="unknown dependency"):
            client.submit(t.square, 2, after=[(987654 << 24) | 5])
        assert client.submit(t.square, 3).result(timeout=30) == 9


def test_a_chain_survives_a_sigkilled_worker(start_cell: StartCell, tmp_path: Path) -> None:
    """A chain of 6 tasks; the worker running the middle one (held on a gate) is SIGKILLed: the
    task runs again on another worker and the chain completes with the right values."""
    cell = start_cell(workers=2, slots=1)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Client(cell.address) as client:
        link = client.submit(t.add_after_sleep, 0, 1, 0.1)
        chain = [link]
        for i in range(5):
            link = (
                client.submit(t.add_after_gate, link, 1, str(gate))
                if i == 1
                else client.submit(t.add_after_sleep, link, 1, 0.1)
            )
            chain.append(link)
        middle = chain[2]
        assert_eventually(lambda: client.get_task(middle.task_id).state == "RUNNING", 30)
        victim = client.get_task(middle.task_id).worker_id
        [pid] = [w.pid for w in client.cluster_status().workers if w.worker_id == victim]
        os.kill(pid, signal.SIGKILL)

        def running_elsewhere() -> bool:
            again = client.get_task(middle.task_id)
            return again.state == "RUNNING" and again.worker_id != victim

        assert_eventually(running_elsewhere, timeout_s=30)
        assert_eventually(lambda: release_gate(gate))
        assert chain[-1].result(timeout=120) == 6
        assert [f.result() for f in chain] == [1, 2, 3, 4, 5, 6]


def test_dependents_survive_a_plm_sigkill(start_cell: StartCell, tmp_path: Path) -> None:
    cell = start_cell(workers=1, slots=1)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Client(cell.address) as client:
        first = client.submit_command(gated_command(gate))
        second = client.submit_command(["echo", "after"], after=[first])
        third = client.submit(t.identity, second)
        assert client.get_task(third.task_id).state == "PENDING"
        (plm,) = role_pids(cell.name, "plm")
        os.kill(plm, signal.SIGKILL)
        assert_eventually(lambda: role_pids(cell.name, "plm") not in ([], [plm]), timeout_s=10)
        assert_eventually(lambda: release_gate(gate), timeout_s=30)
        assert third.result(timeout=60) == CommandResult(0, b"after\n", b"")


def test_dependents_survive_a_host_restart(start_cell: StartCell, tmp_path: Path) -> None:
    """Power cut with one dependent waiting (its dependency is gated) and one already given its
    input (its dependency done and delivered) but not yet run (it asks for a label no worker of
    the first cell has): the rebuilt cell runs both, with the right values."""
    state = tmp_path / "state"
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = start_cell(workers=1, slots=2, state_dir=state)
    with Client(first.address) as client:
        blocker = client.submit_command(gated_command(gate))
        waiting = client.submit(t.identity, blocker)
        done = client.submit(t.square, 7)
        given = client.submit(t.add, done, 1, labels={"zone": "later"})
        assert done.result(timeout=60) == 49  # delivered: the journal may drop it now
        assert_eventually(lambda: client.get_task(given.task_id).state == "QUEUED")
        assert client.get_task(waiting.task_id).state == "PENDING"
        ids = (given.task_id, waiting.task_id)
        first.crash()
        kill_all(marked_processes(first.name))
        assert_eventually(lambda: marked_processes(first.name) == [], timeout_s=10)
    second = start_cell(
        workers=1, slots=2, name=first.name, state_dir=state, extra_args=("--labels", "zone=later")
    )
    with Client(second.address) as client:
        again_given, again_waiting = (client.future(i) for i in ids)
        assert again_given.result(timeout=60) == 50
        assert client.get_task(again_waiting.task_id).state == "PENDING"
        assert_eventually(lambda: release_gate(gate), timeout_s=30)
        assert again_waiting.result(timeout=60) == CommandResult(0, b"", b"")
