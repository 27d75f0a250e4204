"""Resource needs and labels in the cell: validation, the name table, fitting, unschedulable
reasons, hold/free, and check/repair agreeing on what is in use."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from heapd import options
from heapd.errors import InvalidArgument
from heapd.plm import convert as plm_convert
from heapd.plm import recovery
from heapd.plm.journal import FILE_NAME, Batch, Durability, Journal, Submitted
from heapd.register import convert as register_convert
from heapd.runtime import status
from heapd.shm import (
    Cell,
    Completion,
    NewTask,
    ResourceNamesFull,
    TaskState,
    WorkerInfo,
    catalog,
    layout,
    resources,
)
from heapd.shm.memory import CellMemory
from heapd.v1 import register_service_pb2, task_pb2
from tests import shm_helpers
from tests.shm_helpers import SMALL


@pytest.fixture
def cell() -> Iterator[Cell]:
    with shm_helpers.scratch_cell_name() as name, Cell.create(name, SMALL) as c:
        yield c
        assert c.check() == []


def mem_of(cell: Cell) -> CellMemory:
    return cell._m


def worker(
    cell: Cell,
    slots: int = 2,
    res: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
    address: str = "10.0.0.1:7000",
) -> WorkerInfo:
    return cell.register_worker(address, slots, 1, "host", 1.0, 100.0, res, labels)


def task(res: dict[str, float] | None = None, labels: dict[str, str] | None = None) -> NewTask:
    return NewTask(b"p", resources=res or {}, labels=labels or {})


def slot_of(task_id: int) -> int:
    return task_id & layout.SLOT_MASK


def worker_slot(w: WorkerInfo) -> int:
    return w.worker_id & layout.WORKER_SLOT_MASK


# ---- validation


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"resources": {"": 1}}, "resource name"),
        ({"resources": {"g pu": 1}}, "resource name"),
        ({"resources": {"x" * 32: 1}}, "resource name"),
        ({"resources": {"gpu": -1}}, "gpu"),
        ({"resources": {"gpu": float("nan")}}, "finite"),
        ({"resources": {"gpu": float("inf")}}, "finite"),
        ({"resources": {"gpu": True}}, "number"),
        ({"resources": {"gpu": 2e6}}, "1000000"),
        ({"resources": {f"r{i}": 1 for i in range(9)}}, "at most 8 resources"),
        ({"labels": {"": "a"}}, "label key"),
        ({"labels": {"zone": ""}}, "label value"),
        ({"labels": {"zone": "é" * 32}}, "63 bytes"),
        ({"labels": {"a=b": "c"}}, "'='"),
        ({"labels": {f"k{i}": "v" for i in range(9)}}, "at most 8 labels"),
    ],
)
def test_bad_needs_are_refused_in_shm(cell: Cell, bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cell.submit([NewTask(b"", **bad)], 1.0)
    assert cell.stats().submitted_total == 0


def test_bad_offers_are_refused_in_shm(cell: Cell) -> None:
    with pytest.raises(ValueError, match="at most 16 resources"):
        worker(cell, res={f"r{i}": 1 for i in range(17)})
    with pytest.raises(ValueError, match="at most 16 labels"):
        worker(cell, labels={f"k{i}": "v" for i in range(17)})
    with pytest.raises(ValueError, match="resource name"):
        worker(cell, res={"a b": 1})
    assert cell.workers() == []


def test_client_limits_are_the_cells() -> None:
    assert options.RESOURCES_PER_TASK == layout.TASK_NEEDS
    assert options.LABELS_PER_TASK == layout.TASK_LABELS
    assert options.RESOURCES_PER_WORKER == layout.RESOURCE_NAMES
    assert options.LABELS_PER_WORKER == layout.WORKER_LABELS
    assert options.RESOURCE_NAME_MAX == layout.RESOURCE_NAME_BYTES
    assert options.LABEL_PART_MAX == catalog.LABEL_PART_BYTES
    assert options.RESOURCE_AMOUNT_MAX == catalog.MAX_AMOUNT


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"resources": {"gpu": -1}}, "gpu"),
        ({"resources": {"bad name": 1}}, "resource name"),
        ({"resources": {"gpu": "1"}}, "number"),
        ({"labels": {"zone": 3}}, "label value"),
        ({"cpus": -1}, "cpus"),
        ({"cpus": 2, "resources": {"cpus": 3}}, "cpus"),
    ],
)
def test_client_refuses_what_the_cell_would(given: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        options.task_options(**given)


def test_client_cpus_becomes_the_cpus_resource() -> None:
    assert options.task_options().resources == {}
    assert options.task_options(cpus=2).resources == {"cpus": 2.0}
    checked = options.task_options(cpus=2, resources={"gpu": 0.5}, labels={"zone": "a"})
    assert checked.resources == {"cpus": 2.0, "gpu": 0.5}
    assert checked.labels == {"zone": "a"}


def test_amounts_in_milli_units() -> None:
    assert catalog.milli("gpu", 0.5) == 500
    assert catalog.milli("gpu", 0.0001) == 1  # a need never rounds away
    assert catalog.milli("gpu", 0) == 0
    assert catalog.amount_text(1500) == "1.5"
    assert catalog.label_hash("zone=a") == catalog.label_hash("zone=a") != 0
    assert catalog.label_hash("zone=a") != catalog.label_hash("zone=b")


# ---- the name table


def test_name_table_interns_once_and_refuses_a_17th_name(cell: Cell) -> None:
    worker(cell, res={"gpu": 1})  # cpus (from slots) and gpu
    cell.submit([task({"gpu": 1, "mem_gb": 2})], 1.0)
    cell.submit([task({"gpu": 1})], 1.0)
    assert catalog.names(mem_of(cell)) == ["cpus", "gpu", "mem_gb"]
    cell.submit([task({f"r{i}": 1}) for i in range(13)], 1.0)
    assert len(catalog.names(mem_of(cell))) == 16
    before = cell.stats().submitted_total
    with pytest.raises(ResourceNamesFull, match="16 resource names"):
        cell.submit([task({"gpu": 1}), task({"one_more": 1})], 1.0)
    assert cell.stats().submitted_total == before  # all or nothing
    with pytest.raises(ResourceNamesFull):
        worker(cell, res={"another": 1}, address="10.0.0.2:1")
    assert len(cell.workers()) == 1
    cell.submit([task({"r3": 1})], 1.0)  # known names still work


# ---- fitting and hold/free


def test_worker_without_cpus_offers_its_slots(cell: Cell) -> None:
    w = worker(cell, slots=3, res={"gpu": 0.5}, labels={"zone": "a"})
    assert w.resources == {"cpus": 3.0, "gpu": 0.5}
    assert w.resources_free == w.resources
    assert w.labels == {"zone": "a"}
    w2 = worker(cell, slots=3, res={"cpus": 8}, address="10.0.0.2:1")
    assert w2.resources == {"cpus": 8.0}


def test_unconstrained_tasks_hold_nothing(cell: Cell) -> None:
    (tid,) = cell.submit([task()], 1.0)
    assert not resources.constrained(mem_of(cell), slot_of(tid))
    assert cell.get(tid).resources == {} and cell.get(tid).labels == {}


def test_fitting_by_free_amounts_and_labels(cell: Cell) -> None:
    mem = mem_of(cell)
    a = worker(cell, res={"gpu": 1}, labels={"zone": "a"}, address="10.0.0.1:1")
    b = worker(cell, res={"gpu": 2}, labels={"zone": "b", "arch": "x86_64"}, address="10.0.0.2:1")
    c = worker(cell, labels={"zone": "b"}, address="10.0.0.3:1")
    ws = np.array([worker_slot(x) for x in (a, b, c)], dtype=np.int64)
    ids = cell.submit(
        [
            task({"gpu": 1}),
            task({"gpu": 1.5}),
            task(labels={"zone": "b"}),
            task({"gpu": 1}, {"zone": "b", "arch": "x86_64"}),
            task({"cpus": 2}),
        ],
        1.0,
    )
    fits = [resources.fitting(mem, slot_of(t), ws).tolist() for t in ids]
    assert fits == [
        ws[[0, 1]].tolist(),
        ws[[1]].tolist(),
        ws[[1, 2]].tolist(),
        ws[[1]].tolist(),
        ws.tolist(),
    ]
    # holding gpu=1.5 on b leaves 0.5 there: a gpu=1 task now fits only on a
    resources.hold(mem, slot_of(ids[1]), int(ws[1]))
    assert resources.fitting(mem, slot_of(ids[0]), ws).tolist() == ws[[0]].tolist()
    assert cell.worker(b.worker_id).resources_free["gpu"] == 0.5
    resources.free(mem, slot_of(ids[1]), int(ws[1]))
    assert resources.fitting(mem, slot_of(ids[0]), ws).tolist() == ws[[0, 1]].tolist()
    assert cell.worker(b.worker_id).resources_free == {"cpus": 2.0, "gpu": 2.0}


def test_task_status_shows_needs_and_labels(cell: Cell) -> None:
    (tid,) = cell.submit([task({"gpu": 0.5, "cpus": 2}, {"zone": "a"})], 1.0)
    info = cell.get(tid)
    assert info.resources == {"gpu": 0.5, "cpus": 2.0}
    assert info.labels == {"zone": "a"}


# ---- unschedulable reasons


def reason(cell: Cell, task_id: int) -> str:
    return cell.unschedulable_reason(task_id)


def test_unschedulable_reasons(cell: Cell) -> None:
    ids = cell.submit(
        [
            task({"gpu": 1}),
            task({"cpus": 4}),
            task(labels={"zone": "b"}),
            task({"gpu": 1}, {"zone": "b"}),
            task({"cpus": 1}),
            task(),
        ],
        1.0,
    )
    assert reason(cell, ids[0]) == "needs gpu=1: no live worker offers gpu"  # no worker at all
    worker(cell, slots=2, labels={"zone": "a"})
    worker(cell, slots=1, res={"gpu": 1}, labels={"zone": "b"}, address="10.0.0.2:1")
    worker(cell, slots=1, res={"gpu": 1}, labels={"zone": "c"}, address="10.0.0.3:1")
    assert reason(cell, ids[0]) == ""
    assert reason(cell, ids[1]) == "needs cpus=4: the largest live offer is 2"
    assert reason(cell, ids[2]) == ""
    assert reason(cell, ids[3]) == ""
    assert reason(cell, ids[4]) == "" and reason(cell, ids[5]) == ""
    ids2 = cell.submit(
        [
            task(labels={"zone": "d"}),
            task({"cpus": 2}, {"zone": "b"}),
            task({"cpus": 2, "gpu": 1}, {"zone": "a"}),
            task({"cpus": 9, "gpu": 1}, {"zone": "q"}),
        ],
        1.0,
    )
    assert reason(cell, ids2[0]) == "needs label zone=d: no live worker has it"
    assert reason(cell, ids2[1]) == "no live worker offers both cpus=2 and label zone=b"
    assert reason(cell, ids2[2]) == "no live worker offers all of cpus=2, gpu=1 and label zone=a"
    assert reason(cell, ids2[3]) == (
        "needs cpus=9: the largest live offer is 2; needs label zone=q: no live worker has it"
    )
    stats = cell.stats()
    assert stats.unschedulable == 5
    assert [t for t, _ in stats.unschedulable_examples] == [ids[1], *ids2]
    assert dict(stats.unschedulable_examples)[ids[1]] == reason(cell, ids[1])
    assert [t for t, _ in cell.stats(unschedulable_examples=2).unschedulable_examples] == [
        ids[1],
        ids2[0],
    ]


def test_only_alive_workers_count(cell: Cell) -> None:
    w = worker(cell, res={"gpu": 1})
    (tid,) = cell.submit([task({"gpu": 1})], 1.0)
    assert reason(cell, tid) == ""
    cell.drain_worker(w.worker_id, w.epoch)
    assert reason(cell, tid) == "needs gpu=1: no live worker offers gpu"
    worker(cell, res={"gpu": 1}, address="10.0.0.2:1")
    assert reason(cell, tid) == ""


def test_label_text_table_full_shows_the_hash(cell: Cell) -> None:
    mem = mem_of(cell)
    catalog.remember_labels(mem, [f"k={i}" for i in range(layout.LABEL_TEXTS)])
    (tid,) = cell.submit([task(labels={"zone": "new"})], 1.0)
    h = catalog.label_hash("zone=new")
    assert cell.get(tid).labels == {f"#{h:016x}": "?"}
    assert catalog.label_of(mem, catalog.label_hash("k=7")) == "k=7"


# ---- through dispatch, and check/repair


def test_dispatch_holds_and_completion_frees(cell: Cell) -> None:
    w = worker(cell, slots=4, res={"gpu": 1})
    ids = cell.submit([task({"gpu": 1}), task({"gpu": 1}), task()], 1.0)
    sent = cell.dispatch(10, 1.0)
    assert sorted(d.task_id for d in sent) == [ids[0], ids[2]]  # the second gpu task waits
    assert cell.worker(w.worker_id).resources_free["gpu"] == 0.0
    assert cell.check() == []
    cell.complete(w.worker_id, w.epoch, [Completion(ids[0], 1, TaskState.SUCCEEDED, b"")], 2.0)
    assert cell.worker(w.worker_id).resources_free["gpu"] == 1.0
    assert [d.task_id for d in cell.dispatch(10, 2.0)] == [ids[1]]
    assert cell.check() == []


def test_check_and_repair_agree_on_resources_in_use(cell: Cell) -> None:
    mem = mem_of(cell)
    w = worker(cell, slots=4, res={"gpu": 2})
    w2 = worker(cell, slots=4, res={"gpu": 2}, address="10.0.0.2:1")
    cell.submit([task({"gpu": 1}), task({"gpu": 0.5}), task()], 1.0)
    assert len(cell.dispatch(10, 1.0)) == 3
    expect = mem.workers.rec["used_milli"].copy()
    assert expect[:, 1].sum() == 1500
    # A kill between the state byte and `hold`/`free` leaves the sum wrong: check says so ...
    mem.workers.rec["used_milli"][worker_slot(w)] = 0
    mem.workers.rec["used_milli"][worker_slot(w2), 1] = 4000
    problems = cell.check()
    assert any("gpu in use" in p for p in problems), problems
    # ... and repair rebuilds it from the task table.
    cell.repair()
    assert cell.check() == []
    assert (mem.workers.rec["used_milli"] == expect).all()
    # A lost worker holds nothing.
    cell.worker_lost(w.worker_id, w.epoch, 2.0, b"lost")
    cell.worker_lost(w2.worker_id, w2.epoch, 2.0, b"lost")
    assert mem.workers.rec["used_milli"].sum() == 0
    assert cell.check() == []


# ---- the journal keeps needs and labels across a host restart


def test_journal_keeps_needs_and_a_new_cell_gets_them_back(tmp_path: Path) -> None:
    needs, labels = {"gpu": 0.5, "cpus": 2.0}, {"zone": "a"}
    with shm_helpers.scratch_cell_name() as name:
        with Cell.create(name, SMALL) as old:
            (tid,) = old.submit([task(needs, labels)], 1.0)
            journal = Journal.open(tmp_path, name, Durability.OS)
            record = Submitted(tid, "s", 1.0, 0, 0, 0, b"p", resources=needs, labels=labels)
            journal.write(Batch(submitted=[record]))
        Cell.unlink(name)
        with Cell.create(name, SMALL) as new:
            assert recovery.rebuild(new, journal) is not None
            info = new.get(tid)
            assert (info.state, info.resources, info.labels) == (TaskState.QUEUED, needs, labels)
            assert new.unschedulable_reason(tid) == (
                "needs gpu=0.5: no live worker offers gpu; needs cpus=2: no live worker offers "
                "cpus; needs label zone=a: no live worker has it"
            )
            assert new.check() == []
        journal.close()


def test_a_schema_1_journal_is_upgraded(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / FILE_NAME)
    for statement in SCHEMA_1.split(";"):
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta(name, value) VALUES (?, ?)",
        [("schema", 1), ("cell", "c"), ("task_seq", 1)],
    )
    conn.execute(
        "INSERT INTO tasks(id, session, submitted_at, priority, max_retries, timeout_ms, cpus,"
        " payload) VALUES (?, 's', 1.0, 0, 0, 0, 1, x'70')",
        ((1 << 24) | 1,),
    )
    conn.commit()
    conn.close()
    reader = Journal.open_existing(tmp_path, "c")  # a reader takes it as it is
    assert reader is not None and reader.open_ids() == [(1 << 24) | 1]
    reader.close()
    with Journal.open(tmp_path, "c", Durability.OS) as journal:
        (old,) = journal.tasks()
        assert (old.resources, old.labels) == ({}, {})  # the old cpus=1 was no need at all
        journal.write(
            Batch(submitted=[Submitted((2 << 24) | 2, "s", 2.0, 0, 0, 0, b"q", labels={"z": "b"})])
        )
        assert [t.labels for t in journal.tasks()] == [{}, {"z": "b"}]
    with Journal.open(tmp_path, "c", Durability.OS) as again:  # schema 2 now
        assert len(list(again.tasks())) == 2


SCHEMA_1 = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    priority INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    timeout_ms INTEGER NOT NULL,
    cpus INTEGER NOT NULL,
    payload BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    outcome BLOB,
    finished_at REAL
);
CREATE TABLE keys (key TEXT PRIMARY KEY, task_id INTEGER NOT NULL) WITHOUT ROWID
"""


# ---- the gRPC boundaries


def test_register_boundary_refuses_bad_offers_as_invalid_argument() -> None:
    ok = register_service_pb2.RegisterWorkerRequest(
        address="h:1", slots=2, resources={"gpu": 0.5}, labels={"zone": "a"}
    )
    reg = register_convert.registration_from_proto(ok)
    assert (reg.resources, reg.labels) == ({"gpu": 0.5}, {"zone": "a"})
    for bad, match in (
        ({"resources": {"bad name": 1}}, "resource name"),
        ({"resources": {"gpu": -1}}, "gpu"),
        ({"labels": {f"k{i}": "v" for i in range(17)}}, "at most 16 labels"),
    ):
        request = register_service_pb2.RegisterWorkerRequest(address="h:1", slots=1, **bad)
        with pytest.raises(InvalidArgument, match=match):
            register_convert.registration_from_proto(request)


def test_a_full_name_table_is_invalid_argument_on_the_wire() -> None:
    assert status.code_for(ResourceNamesFull(["x"], 16)) == grpc.StatusCode.INVALID_ARGUMENT


def test_plm_boundary_merges_cpus_into_resources() -> None:
    spec = task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep"))
    legacy = plm_convert.new_task_from_proto(spec, task_pb2.TaskOptions(cpus=2))
    assert legacy.resources == {"cpus": 2.0}
    plain = plm_convert.new_task_from_proto(spec, task_pb2.TaskOptions())
    assert (plain.resources, plain.labels) == ({}, {})
    both = task_pb2.TaskOptions(resources={"gpu": 1, "zero": 0}, labels={"zone": "a"})
    task_ = plm_convert.new_task_from_proto(spec, both)
    assert (task_.resources, task_.labels) == ({"gpu": 1.0}, {"zone": "a"})
