"""Tracing's parts without a cell: the rings, which tasks a client traces, what the register
accepts as a worker's stamps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from heapd import shm
from heapd.core import ClientCore
from heapd.errors import InvalidArgument
from heapd.register.convert import beat_from_proto
from heapd.register.service import Acks
from heapd.runtime.bench import trace
from heapd.runtime.bench.trace import ClientStamps
from heapd.shm.trace import TRACE_ENTRIES
from heapd.v1 import register_service_pb2 as pb
from heapd.v1 import task_pb2


@pytest.fixture
def cell() -> Iterator[shm.Cell]:
    name = f"t-trace-{uuid.uuid4().hex[:8]}"
    handle = shm.Cell.create(
        name, shm.Capacities(tasks=64, workers=4, arena_bytes=1 << 16, max_blob_bytes=1 << 12)
    )
    try:
        yield handle
    finally:
        handle.close()
        shm.Cell.unlink(name)


def test_each_role_writes_its_own_ring_and_the_reader_sees_all(cell: shm.Cell) -> None:
    cell.trace(shm.Writer.PLM, shm.Hop.PLM_RECEIVED, [1, 2], 10)
    cell.trace(shm.Writer.SCHEDULER, shm.Hop.SCHEDULER_POPPED, [1], 20)
    cell.trace(shm.Writer.REGISTER, shm.Hop.REGISTER_SETTLED, [2], 30)
    assert sorted(cell.trace_stamps()) == [
        shm.Stamp(1, shm.Hop.PLM_RECEIVED, 10),
        shm.Stamp(1, shm.Hop.SCHEDULER_POPPED, 20),
        shm.Stamp(2, shm.Hop.PLM_RECEIVED, 10),
        shm.Stamp(2, shm.Hop.REGISTER_SETTLED, 30),
    ]


def test_a_ring_keeps_the_newest_entries_in_order(cell: shm.Cell) -> None:
    for task_id in range(TRACE_ENTRIES + 5):
        cell.trace(shm.Writer.REGISTER, shm.Hop.REGISTER_RECEIVED, [task_id], task_id + 1)
    stamps = cell.trace_stamps()
    assert [s.task_id for s in stamps] == list(range(5, TRACE_ENTRIES + 5))


def test_the_traced_flag_reaches_the_dispatch_and_survives_repair(cell: shm.Cell) -> None:
    cell.register_worker("127.0.0.1:1", 2, 1, "h", 0.0, 10.0)
    traced, plain = cell.submit([shm.NewTask(b"a", traced=True), shm.NewTask(b"b")], 1.0)
    cell.repair()
    done = {d.task_id: d.traced for d in cell.dispatch(2, 2.0)}
    assert done == {traced: True, plain: False}
    assert cell.check() == []


def test_a_client_traces_every_nth_task_across_requests() -> None:
    core: ClientCore[object] = ClientCore("localhost:1", trace_every=3)
    flags = []
    for count in (1, 4, 2, 5):
        requests = core.map_requests(
            print, range(count), priority=0, retries=0, timeout=None, retry_on=(), cpus=None,
            batch_size=100,
        )  # fmt: skip
        flags += [t.options.trace for r in requests for t in r.tasks]
    assert [i for i, flag in enumerate(flags) if flag] == [2, 5, 8, 11]
    with pytest.raises(InvalidArgument, match="trace_every"):
        ClientCore("localhost:1", trace_every=-1)


def _beat(*stamps: int) -> pb.HeartbeatRequest:
    completion = pb.TaskCompletion(
        task_id=7, attempt=1, state=task_pb2.SUCCEEDED, outcome=b"", trace_ns=stamps
    )
    return pb.HeartbeatRequest(worker_id=1, epoch=1, completions=[completion])


def test_the_register_takes_six_worker_stamps_and_refuses_other_counts() -> None:
    beat = beat_from_proto(_beat(1, 2, 3, 4, 5, 6))
    assert beat.traces == [(7, (1, 2, 3, 4, 5, 6))]
    assert beat.received_ns > 0
    assert beat_from_proto(_beat()).traces == []
    with pytest.raises(InvalidArgument, match="trace_ns has 2 stamps"):
        beat_from_proto(_beat(1, 2))
    with pytest.raises(InvalidArgument, match="non-negative"):
        beat_from_proto(_beat(1, 2, 3, -4, 5, 6))


def test_a_cell_without_a_journal_reports_the_path_without_the_commit() -> None:
    client = ClientStamps(every=1)
    client.stamps[9] = {shm.Hop.CLIENT_SENT: 100, shm.Hop.CLIENT_RECEIVED: 900}
    client.stamps[9][shm.Hop.CLIENT_RESOLVED] = 950
    cell_hops = [h for h in shm.Hop if h not in client.stamps[9] and h != shm.Hop.PLM_COMMITTED]
    stamps = [shm.Stamp(9, hop, 100 + 40 * i) for i, hop in enumerate(cell_hops, start=1)]
    joined = trace.join(stamps, client)
    assert list(joined) == [9]
    summary = trace.summarize(joined)
    assert "plm_queued -> plm_committed" not in summary
    assert summary["round trip"]["p50_us"] == (950 - 100) / 1000


def test_a_heartbeat_reply_acknowledges_every_message_since_the_last() -> None:
    acks = Acks()
    acks.count(shm.CompleteOutcome(2, 0, 0))
    acks.count(shm.CompleteOutcome(1, 1, 0))
    assert acks.take() == (2, 3, 1)
    assert acks.take() == (0, 0, 0)
