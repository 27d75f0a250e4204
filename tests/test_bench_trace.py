"""`heapd bench --trace`: every hop of a traced round trip is recorded by the role it passes,
joined with the client's stamps, and reported (a tiny W2 run on a real cell)."""

from __future__ import annotations

import itertools

import pytest

from heapd import shm
from heapd.runtime.bench import runner, trace
from heapd.runtime.bench.trace import BRANCHES, PATH, ClientStamps
from tests.conftest import StartCell

ROUNDS = 12
EVERY = 3


def test_a_traced_w2_reports_every_hop(
    start_cell: StartCell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "W2_ROUNDS", ROUNDS)
    monkeypatch.setattr(runner, "W2_WARMUP", 0)
    cell = start_cell(workers=1, slots=2)
    runner.run_w2(cell)  # not traced: nothing recorded
    with shm.Cell.attach(cell.name) as handle:
        assert handle.trace_stamps() == []
    stamps = ClientStamps(every=EVERY)
    figures = runner.run_w2(cell, traced=stamps)
    assert figures["p50_ms"] > 0
    with shm.Cell.attach(cell.name) as handle:
        recorded = handle.trace_stamps()
    traced_ids = {s.task_id for s in recorded}
    assert len(traced_ids) == ROUNDS // EVERY  # every 3rd task, and only those
    assert traced_ids <= set(stamps.stamps)
    joined = trace.join(recorded, stamps)
    assert set(joined) == traced_ids  # each has a stamp at every hop
    for hops in joined.values():
        assert hops[shm.Hop.CLIENT_SENT] <= hops[shm.Hop.PLM_RECEIVED]
        assert hops[shm.Hop.WORKER_HANDED] <= hops[shm.Hop.CHILD_STARTED]
        assert hops[shm.Hop.CHILD_STARTED] <= hops[shm.Hop.CHILD_FINISHED]
        assert hops[shm.Hop.PLM_SENT] <= hops[shm.Hop.CLIENT_RECEIVED]
        assert hops[shm.Hop.CLIENT_RECEIVED] <= hops[shm.Hop.CLIENT_RESOLVED]

    summary = trace.report(cell.name, stamps)
    steps = [f"{a.name.lower()} -> {b.name.lower()}" for a, b in itertools.pairwise(PATH)]
    steps += [f"{b.name.lower()} -> {h.name.lower()}" for h, b in BRANCHES.items()]
    assert list(summary) == [*steps, "round trip"]
    assert summary["round trip"]["tasks"] == ROUNDS // EVERY
    assert summary["round trip"]["p50_us"] > 0
    table = trace.render(summary)
    assert table.row_count == len(steps) + 1
