"""End to end: priorities are never inverted by prefetch, aging, and the placement policies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heapd import Client, NotFound, TaskFuture, shm
from tests import tasks_for_tests as t
from tests.conftest import StartCell
from tests.helpers import assert_eventually, gated_command, release_gate

WORKERS, SLOTS = 3, 2


def has_started(client: Client, future: TaskFuture) -> bool:
    """Whether the task has started (or already ended and its result was taken)."""
    if future.done():
        return True
    try:
        return client.get_task(future.task_id).state in ("RUNNING", "SUCCEEDED", "FAILED")
    except NotFound:
        return True


@pytest.mark.parametrize("prefetch", [1, 8])  # none, and deep (8 x 6 slots > the 40 low)
def test_late_high_tasks_start_before_every_prefetched_low_one(
    start_cell: StartCell, tmp_path: Path, prefetch: int
) -> None:
    """The issue's scenario: every slot of 3 workers x 2 is busy, 40 low-priority tasks are
    queued (and, with prefetch, sent to the workers' buffers), then 5 high-priority ones. As the
    slots free one at a time, the 5 high ones start first, before any low one, whatever the
    prefetch depth: the scheduler takes the prefetched low tasks back."""
    cell = start_cell(
        workers=WORKERS, slots=SLOTS, extra_args=("--prefetch-per-slot", str(prefetch))
    )
    gates = [tmp_path / f"gate{i}" for i in range(WORKERS * SLOTS)]
    for gate in gates:
        os.mkfifo(gate)
    with Client(cell.address) as client:
        # A burst of no-ops first: the scheduler sizes prefetch from the observed task rate, so
        # the low tasks below are then sent beyond the free slots (when prefetch > 1).
        assert client.gather(client.map(t.square, range(3000)), timeout=120)[-1] == 2999**2
        blockers = [client.submit_command(gated_command(gate)) for gate in gates]
        assert_eventually(
            lambda: all(client.get_task(b.task_id).state == "RUNNING" for b in blockers)
        )
        with shm.Cell.attach(cell.name) as handle:
            revoked_before = handle.stats().revoked_total  # the burst may have moved some
        low = [client.submit(t.tagged_start, f"low{i}", 0.01, priority="low") for i in range(40)]
        if prefetch > 1:  # some low tasks are in the workers' buffers before the high ones come
            assert_eventually(
                lambda: any(client.get_task(f.task_id).state == "DISPATCHED" for f in low)
            )
        # The high tasks hold their slots until the test ends them: none may end, and free a slot
        # at the moment a gate frees another, while the gates are released.
        done = str(tmp_path / "highs-may-end")
        high = [
            client.submit(t.tagged_start_until, f"high{i}", done, priority="high") for i in range(5)
        ]
        # The bound allows one dispatch round trip: a slot freed while the revocation is on its
        # way starts what its worker holds. So the slots free only once the low tasks are back
        # in the queue (with prefetch 1 none was ever sent).
        assert_eventually(
            lambda: all(client.get_task(f.task_id).state == "QUEUED" for f in low + high)
        )
        released: list[Path] = []
        try:
            for count, gate in enumerate(gates[:5], start=1):
                assert_eventually(lambda gate=gate: release_gate(gate))
                released.append(gate)
                assert_eventually(lambda n=count: sum(has_started(client, h) for h in high) == n)
        finally:  # whatever happened above, no blocker outlives the test (the 6th included)
            Path(done).touch()
            for gate in [g for g in gates if g not in released]:
                assert_eventually(lambda gate=gate: release_gate(gate))
        started = dict(client.gather(high + low, timeout=120))
        client.gather(blockers, timeout=30)
    last_high = max(started[f"high{i}"] for i in range(5))
    first_low = min(started[f"low{i}"] for i in range(40))
    assert last_high < first_low, "a low-priority task started before a high one"
    with shm.Cell.attach(cell.name) as handle:
        stats = handle.stats()
    if prefetch > 1:
        assert stats.revoked_total > revoked_before, "the low tasks were prefetched, taken back"
    else:
        assert stats.revoked_total == revoked_before, "nothing is prefetched or taken back"


def test_aging_lets_a_low_task_through_a_steady_flow_of_high_ones(
    start_cell: StartCell, tmp_path: Path
) -> None:
    """One slot, held while a flow of high-priority tasks is submitted over ~1.5 s with one low
    task early in it, then freed: the start order is then the queue's order alone. With
    `--aging-s A` the low task's priority grows by 1 per A seconds waited, so it starts after
    every high task (one level above) submitted before it, and before every one submitted
    more than A after it: without aging it would start last."""
    aging_s = 0.2
    cell = start_cell(workers=1, slots=1, extra_args=("--aging-s", str(aging_s)))
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    high: list[tuple[TaskFuture, float]] = []  # (future, wall clock just before its submit)
    with Client(cell.address) as client:
        blocker = client.submit_command(gated_command(gate))
        assert_eventually(lambda: client.get_task(blocker.task_id).state == "RUNNING")
        for i in range(150):
            if i == 30:
                low_before = time.time()
                low = client.submit(t.tagged_start, "low", 0.0, priority=0)
                low_after = time.time()
            before = time.time()
            high.append((client.submit(t.tagged_start, f"high{i}", 0.0, priority=1), before))
            time.sleep(0.01)
        assert_eventually(lambda: release_gate(gate))
        low_started = low.result(timeout=60)[1]
        starts = {tag: at for tag, at in client.gather([f for f, _ in high], timeout=120)}
    # The cell stamps each submission between these client-side clocks; one aging tick is A/1024.
    earlier = [f"high{i}" for i, (_, before) in enumerate(high) if before < low_before]
    later = [
        f"high{i}" for i, (_, before) in enumerate(high) if before > low_after + aging_s * 1.01
    ]
    assert len(earlier) == 30 and len(later) > 50, "the flow went on long after the bound"
    assert all(starts[tag] < low_started for tag in earlier), "higher and older: first"
    overtook = [tag for tag in later if starts[tag] < low_started]
    assert overtook == [], "a high task submitted after the low one's bound started first"


@pytest.mark.parametrize("policy", [p.label for p in shm.Policy])
def test_each_policy_runs_a_load_on_every_worker(start_cell: StartCell, policy: str) -> None:
    """Every policy runs a load to completion on 3 workers, spreading it over all of them, and
    the cell records (and `heapd status` shows) which policy its scheduler uses."""
    cell = start_cell(workers=3, slots=2, extra_args=("--policy", policy))
    with Client(cell.address) as client:
        # Ahead of the load: placed while every worker has room (behind it, a deep prefetch may
        # hand the last 60 to two workers' refills, whatever the policy).
        pids = [client.submit(t.whoami) for _ in range(60)]
        squares = client.map(t.square, range(300))
        assert client.gather(squares, timeout=60) == [i * i for i in range(300)]
        assert len(set(client.gather(pids, timeout=60))) == 3, "every worker took work"
        status = client.cluster_status()
    assert sum(w.tasks_done for w in status.workers) == 360
    assert (status.policy, status.aging_s) == (policy, 0.0)
    shown = subprocess.run(
        [sys.executable, "-m", "heapd", "status", "--address", cell.address],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"scheduling: {policy}" in shown.stdout
