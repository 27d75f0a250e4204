"""Resource needs and labels: what a task asks, what a worker offers, whether one fits the other.

Functions over a CellMemory; the caller holds the cell lock. The scheduler's placement
(`shm.dispatch`) asks `constrained` / `fitting` / `unschedulable_reason`; the transitions call
`hold` when a task is placed on a worker and `free` when it leaves it (settled, requeued,
revoked, lost). What a worker has in use is DERIVED: `derived`/`repair` recompute it from the
task table. Names, amounts and label hashes are encoded by `shm.catalog`.

A task fits a worker when, for each need, offered minus used is at least the need, and every
label it asks is among the worker's. A task with no needs and no labels holds nothing: it is
bounded by the worker's slots only, and the per-task calls cost a byte read for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from heapd.shm import catalog
from heapd.shm.layout import RESOURCE_NAMES, TASK_LABELS, TASK_NEEDS, WORKER_LABELS
from heapd.shm.memory import CellMemory
from heapd.shm.types import TaskState, WorkerState

Ints = npt.NDArray[np.int64]
_U32_MAX = (1 << 32) - 1
ALIVE = int(WorkerState.ALIVE)
QUEUED = int(TaskState.QUEUED)


def constrained(mem: CellMemory, slot: int) -> bool:
    """Whether the task in `slot` has any resource need or label (False: slots only)."""
    tasks = mem.tasks
    return bool(tasks.needs[slot] or tasks.nlabels[slot])


def _needs_of(mem: CellMemory, slot: int) -> tuple[npt.NDArray[np.intp], Ints]:
    rec = mem.tasks.rec
    n = int(rec["needs"][slot])
    idx = rec["need_res"][slot, :n].astype(np.intp)
    amount = rec["need_milli"][slot, :n].astype(np.int64)
    return idx, amount


def _labels_of(mem: CellMemory, slot: int) -> npt.NDArray[np.uint64]:
    rec = mem.tasks.rec
    hashes: npt.NDArray[np.uint64] = rec["label_hash"][slot, : int(rec["nlabels"][slot])]
    return hashes


def _carry(
    worker_hashes: npt.NDArray[np.uint64], wanted: npt.NDArray[np.uint64]
) -> npt.NDArray[np.bool_]:
    """Per worker row: which of `wanted` it carries (rows x len(wanted))."""
    found: npt.NDArray[np.bool_] = (worker_hashes[:, :, None] == wanted[None, None, :]).any(axis=1)
    return found


def _fits_when_idle(mem: CellMemory, slot: int, ws: Ints) -> npt.NDArray[np.bool_]:
    """Per worker of `ws`: whether it offers every need and carries every label of the task
    (what it has in use aside)."""
    wrec = mem.workers.rec
    ok = np.ones(len(ws), dtype=np.bool_)
    idx, amount = _needs_of(mem, slot)
    if len(idx) and len(ws):
        ok &= (wrec["offer_milli"][ws[:, None], idx[None, :]] >= amount[None, :]).all(axis=1)
    wanted = _labels_of(mem, slot)
    if len(wanted) and len(ws):
        ok &= _carry(wrec["label_hash"][ws], wanted).all(axis=1)
    return ok


def fitting(mem: CellMemory, slot: int, candidates: Ints) -> Ints:
    """The worker slots among `candidates` (ALIVE workers with room) where the task's needs fit
    in what is free now and whose labels include every label it asks for, in the same order."""
    if not len(candidates) or not constrained(mem, slot):
        return candidates
    wrec = mem.workers.rec
    ok = np.ones(len(candidates), dtype=np.bool_)
    idx, amount = _needs_of(mem, slot)
    if len(idx):
        rows, cols = candidates[:, None], idx[None, :]
        free = wrec["offer_milli"][rows, cols].astype(np.int64) - wrec["used_milli"][rows, cols]
        ok &= (free >= amount[None, :]).all(axis=1)
    wanted = _labels_of(mem, slot)
    if len(wanted):
        ok &= _carry(wrec["label_hash"][candidates], wanted).all(axis=1)
    out: Ints = candidates[ok]
    return out


def unschedulable_reason(mem: CellMemory, slot: int) -> str:
    """Why no live (ALIVE) worker could ever run the task, even idle; "" if one could."""
    if not constrained(mem, slot):
        return ""
    wrec = mem.workers.rec
    alive = np.flatnonzero(wrec["state"] == ALIVE)
    if _fits_when_idle(mem, slot, alive).any():  # the common answer, without building text
        return ""
    names = catalog.names(mem)
    asked: list[str] = []  # each need and label, as the user wrote it
    alone: list[str] = []  # what no live worker satisfies even by itself
    fits = np.ones(len(alive), dtype=np.bool_)
    idx, amount = _needs_of(mem, slot)
    for i, units in zip(idx.tolist(), amount.tolist(), strict=True):
        name = names[i] if i < len(names) else f"#{i}"
        text = f"{name}={catalog.amount_text(units)}"
        asked.append(text)
        offered = wrec["offer_milli"][alive, i].astype(np.int64)
        fits &= offered >= units
        top = int(offered.max()) if len(offered) else 0
        if top == 0:
            alone.append(f"needs {text}: no live worker offers {name}")
        elif top < units:
            alone.append(f"needs {text}: the largest live offer is {catalog.amount_text(top)}")
    wanted = _labels_of(mem, slot)
    if len(wanted):
        carried = _carry(wrec["label_hash"][alive], wanted)
        fits &= carried.all(axis=1)
        for j, h in enumerate(wanted.tolist()):
            text = f"label {catalog.label_of(mem, h)}"
            asked.append(text)
            if not carried[:, j].any():
                alone.append(f"needs {text}: no live worker has it")
    if fits.any():
        return ""
    if alone:
        return "; ".join(alone)
    if len(asked) == 2:
        return f"no live worker offers both {asked[0]} and {asked[1]}"
    return f"no live worker offers all of {', '.join(asked[:-1])} and {asked[-1]}"


def hold(mem: CellMemory, slot: int, w: int) -> None:
    """The task in `slot` was placed on worker slot `w`: its needs are now in use there."""
    if not mem.tasks.needs[slot]:
        return
    idx, amount = _needs_of(mem, slot)
    used = mem.workers.rec["used_milli"][w]
    used[idx] = np.minimum(used[idx].astype(np.int64) + amount, _U32_MAX)


def free(mem: CellMemory, slot: int, w: int) -> None:
    """The task in `slot` left worker slot `w` (same registration): its needs are free again."""
    if not mem.tasks.needs[slot]:
        return
    idx, amount = _needs_of(mem, slot)
    used = mem.workers.rec["used_milli"][w]
    used[idx] = np.maximum(used[idx].astype(np.int64) - amount, 0)


# ---- writing needs and offers (the caller validated them with shm.catalog)


def write_task(
    mem: CellMemory, slot: int, needs: Sequence[tuple[str, int]], labels: Sequence[str]
) -> None:
    """Store a task's needs and labels (names interned beforehand by `intern_all`)."""
    if not needs and not labels:  # the common case: two bytes (stale arrays are never read)
        mem.tasks.needs[slot] = 0
        mem.tasks.nlabels[slot] = 0
        return
    rec = mem.tasks.rec
    index = catalog.intern(mem, (n for n, _ in needs)) if needs else {}
    res = np.zeros(TASK_NEEDS, dtype=np.uint8)
    amounts = np.zeros(TASK_NEEDS, dtype=np.uint32)
    for i, (name, units) in enumerate(needs):
        res[i], amounts[i] = index[name], units
    hashes = np.zeros(TASK_LABELS, dtype=np.uint64)
    hashes[: len(labels)] = [catalog.label_hash(text) for text in labels]
    rec["need_res"][slot] = res
    rec["need_milli"][slot] = amounts
    rec["label_hash"][slot] = hashes
    mem.tasks.needs[slot] = len(needs)
    mem.tasks.nlabels[slot] = len(labels)
    if labels:
        catalog.remember_labels(mem, labels)


def intern_all(mem: CellMemory, named: Sequence[Sequence[tuple[str, int]]]) -> None:
    """Add every resource name of a batch to the cell's table, or none (ResourceNamesFull):
    called before a batch changes anything."""
    wanted = [name for entries in named for name, _ in entries]
    if wanted:
        catalog.intern(mem, wanted)


def write_worker(
    mem: CellMemory, w: int, offers: Sequence[tuple[str, int]], labels: Sequence[str]
) -> None:
    """Store a worker's offers (names interned beforehand) and labels; nothing in use."""
    wrec = mem.workers.rec
    index = catalog.intern(mem, (n for n, _ in offers))
    row = np.zeros(RESOURCE_NAMES, dtype=np.uint32)
    for name, units in offers:
        row[index[name]] = units
    hashes = np.zeros(WORKER_LABELS, dtype=np.uint64)
    hashes[: len(labels)] = [catalog.label_hash(text) for text in labels]
    wrec["offer_milli"][w] = row
    wrec["used_milli"][w] = 0
    wrec["label_hash"][w] = hashes
    mem.workers.nlabels[w] = len(labels)
    if labels:
        catalog.remember_labels(mem, labels)


def worker_offers(offers: Sequence[tuple[str, int]], slots: int) -> list[tuple[str, int]]:
    """A worker's offers with "cpus" = its slots unless it declared cpus itself."""
    if any(name == catalog.CPUS for name, _ in offers):
        return list(offers)
    return [(catalog.CPUS, slots * catalog.MILLI), *offers]


# ---- reading them back, for status


def task_resources(mem: CellMemory, slot: int) -> tuple[dict[str, float], dict[str, str]]:
    """A task's needs {name: amount} and labels {key: value}."""
    if not constrained(mem, slot):
        return {}, {}
    names = catalog.names(mem)
    idx, amount = _needs_of(mem, slot)
    needs = {
        _name(names, i): u / catalog.MILLI
        for i, u in zip(idx.tolist(), amount.tolist(), strict=True)
    }
    labels = dict(catalog.split_label(catalog.label_of(mem, h)) for h in _labels_of(mem, slot))
    return needs, labels


def worker_resources(
    mem: CellMemory, w: int
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """A worker's offers, what is free of them now, and its labels."""
    wrec = mem.workers.rec
    names = catalog.names(mem)
    offer = wrec["offer_milli"][w].astype(np.int64)
    used = wrec["used_milli"][w].astype(np.int64)
    offered, free = {}, {}
    for i, name in enumerate(names):
        if offer[i] or used[i]:
            offered[name] = int(offer[i]) / catalog.MILLI
            free[name] = max(int(offer[i] - used[i]), 0) / catalog.MILLI
    hashes = wrec["label_hash"][w, : int(wrec["nlabels"][w])].tolist()
    labels = dict(catalog.split_label(catalog.label_of(mem, h)) for h in hashes)
    return offered, free, labels


def _name(names: Sequence[str], i: int) -> str:
    return names[i] if i < len(names) else f"#{i}"


def unschedulable(mem: CellMemory, examples: int) -> tuple[int, list[tuple[int, str]]]:
    """How many QUEUED tasks no live worker could run, and (task id, reason) of the oldest
    `examples` of them. Tasks asking the same are judged once (rows grouped with np.unique)."""
    rec = mem.tasks.rec
    queued = np.flatnonzero((rec["state"] == QUEUED) & ((rec["needs"] > 0) | (rec["nlabels"] > 0)))
    if not len(queued):
        return 0, []
    signature = np.concatenate(
        [
            rec["need_res"][queued].astype(np.uint64),
            rec["need_milli"][queued].astype(np.uint64),
            rec["label_hash"][queued],
            rec["nlabels"][queued].astype(np.uint64)[:, None],
        ],
        axis=1,
    )
    _, first, inverse = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    reasons = [unschedulable_reason(mem, int(queued[i])) for i in first]
    bad = np.array([bool(r) for r in reasons], dtype=np.bool_)[inverse.reshape(-1)]
    stuck = queued[bad]
    order = np.argsort(rec["id"][stuck], kind="stable")[:examples]
    which = inverse.reshape(-1)[bad][order]
    shown = [(int(rec["id"][s]), reasons[k]) for s, k in zip(stuck[order], which, strict=True)]
    return int(bad.sum()), shown
