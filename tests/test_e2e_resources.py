"""End to end: resources and labels in a real cell (`heapd up`, and extra `heapd worker`s that
offer other resources or labels)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heapd import AsyncClient, Client
from heapd.runtime.launch import LocalCell
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import MARK, assert_eventually, gated_command, release_gate

STOP_TIMEOUT_S = 20.0


@contextlib.contextmanager
def extra_worker(cell: LocalCell, log: Path, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    """One more `heapd worker` (1 slot) joining the cell's register; stopped (SIGTERM: drain
    and deregister) on exit."""
    argv = [
        sys.executable, "-m", "heapd.worker", "--register", cell.register, "--slots", "1",
        "--port", "0", *flags,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, MARK: cell.name},
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def worker_pid_offering(client: Client, name: str) -> int:
    """The pid of the ALIVE worker that offers resource `name` (AssertionError until one does)."""
    pids = [
        w.pid for w in client.cluster_status().workers if w.state == "ALIVE" and name in w.resources
    ]
    assert len(pids) == 1, pids
    return pids[0]


def test_gpu_task_waits_for_a_gpu_worker_while_others_pass(
    start_cell: StartCell, tmp_path: Path
) -> None:
    cell = start_cell(workers=1, slots=2)
    with Client(cell.address) as client:
        gpu = client.submit(t.whoami, resources={"gpu": 1})
        why = "needs gpu=1: no live worker offers gpu"
        status = client.get_task(gpu.task_id)
        assert (status.state, status.unschedulable) == ("QUEUED", why)
        assert status.resources == {"gpu": 1.0}
        # Tasks behind it that fit run: it blocks nothing.
        assert client.gather(client.map(t.square, range(20)), timeout=60) == [
            i * i for i in range(20)
        ]
        assert client.get_task(gpu.task_id).state == "QUEUED"
        cluster = client.cluster_status()
        assert cluster.unschedulable == 1
        (plain,) = cluster.workers
        assert plain.resources == {"cpus": 2.0} and plain.labels == {}
        assert [(s.task_id, s.unschedulable) for s in client.list_tasks(["QUEUED"])] == [
            (gpu.task_id, why)
        ]
        shown = subprocess.run(
            [sys.executable, "-m", "heapd", "status", "--address", cell.address],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert "1 queued task(s) no live worker can run" in shown
        assert f"task {gpu.task_id}: {why}" in shown
        as_json = json.loads(
            subprocess.run(
                [sys.executable, "-m", "heapd", "status", "--json", "--address", cell.address],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        assert as_json["unschedulable_examples"] == [{"task_id": gpu.task_id, "reason": why}]
        # A worker offering a gpu joins: the task runs there, and nothing is unschedulable.
        with extra_worker(cell, tmp_path / "gpu-worker.log", "--resources", "gpu=1"):
            gpu_pid = assert_eventually(lambda: worker_pid_offering(client, "gpu"), 30)
            assert gpu.result(timeout=60) == gpu_pid
            cluster = client.cluster_status()
            assert cluster.unschedulable == 0
            gpu_worker = next(w for w in cluster.workers if w.pid == gpu_pid)
            assert gpu_worker.resources == {"cpus": 1.0, "gpu": 1.0}
            assert gpu_worker.resources_free == gpu_worker.resources  # held no more


def test_labels_pick_the_worker(start_cell: StartCell, tmp_path: Path) -> None:
    cell = start_cell(workers=1, slots=2, extra_args=("--labels", "zone=a,arch=x86_64"))
    with Client(cell.address) as client:
        (zone_a,) = client.cluster_status().workers
        assert zone_a.labels == {"zone": "a", "arch": "x86_64"}
        assert client.submit(t.whoami, labels={"zone": "a"}).result(timeout=60) == zone_a.pid
        elsewhere = client.submit(t.whoami, labels={"zone": "b"})
        assert client.get_task(elsewhere.task_id).unschedulable == (
            "needs label zone=b: no live worker has it"
        )
        assert client.get_task(elsewhere.task_id).labels == {"zone": "b"}
        # The command line takes the same needs.
        shell = subprocess.run(
            [sys.executable, "-m", "heapd", "submit", "--address", cell.address,
             "--labels", "zone=a", "--resources", "cpus=1", "--", "echo", "hi"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert shell.stdout == "hi\n"
        with extra_worker(cell, tmp_path / "zone-b.log", "--labels", "zone=b"):
            zone_b = elsewhere.result(timeout=60)
            assert zone_b != zone_a.pid
            assert client.submit(t.whoami, labels={"zone": "b"}).result(timeout=60) == zone_b


def test_a_worker_offering_two_cpus_runs_one_cpus2_task_at_a_time(
    start_cell: StartCell, tmp_path: Path
) -> None:
    cell = start_cell(workers=1, slots=2, extra_args=("--resources", "cpus=2"))
    gates = [tmp_path / "gate-0", tmp_path / "gate-1"]
    for gate in gates:
        os.mkfifo(gate)
    with Client(cell.address) as client:
        first, second = [client.submit_command(gated_command(gate), cpus=2) for gate in gates]
        assert_eventually(lambda: client.get_task(first.task_id).state == "RUNNING", 30)
        # The first holds both cpus: the second waits although a slot is free ...
        assert client.get_task(second.task_id).state == "QUEUED"
        assert client.get_task(second.task_id).unschedulable == ""  # it fits, later
        (worker,) = client.cluster_status().workers
        assert (worker.resources, worker.resources_free) == ({"cpus": 2.0}, {"cpus": 0.0})
        # ... and a task with no needs takes that free slot meanwhile.
        assert client.submit(t.square, 7).result(timeout=60) == 49
        assert client.get_task(second.task_id).state == "QUEUED"
        assert_eventually(lambda: release_gate(gates[0]), 30)
        assert first.result(timeout=60).returncode == 0
        assert_eventually(lambda: release_gate(gates[1]), 30)
        assert second.result(timeout=60).returncode == 0


async def _async_client_takes_the_same_needs(address: str) -> int:
    async with AsyncClient(address) as client:
        future = await client.submit(t.whoami, resources={"cpus": 0.5}, labels={"zone": "a"})
        status = await client.get_task(future.task_id)
        assert (status.resources, status.labels) == ({"cpus": 0.5}, {"zone": "a"})
        return int(await asyncio.wait_for(future, 60))


def test_async_client_and_fractional_needs(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1, extra_args=("--labels", "zone=a"))
    with Client(cell.address) as client:
        (worker,) = client.cluster_status().workers
    assert asyncio.run(_async_client_takes_the_same_needs(cell.address)) == worker.pid


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--resources", "gpu=lots"), "not a number"),
        (("--resources", "bad name=1"), "resource name"),
        (("--labels", "zone"), "not name=value"),
    ],
)
def test_bad_worker_flags_exit_2(flags: tuple[str, ...], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "heapd.worker", "--register", "127.0.0.1:1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
