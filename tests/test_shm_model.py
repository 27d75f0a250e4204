"""A hypothesis state machine: a cell's heaps, tables and arena against a plain model.

Every step runs the same operation on a real cell and on simple Python structures, then
`check()` must be clean and the cell must agree with the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from heapd.shm import (
    ArenaFull,
    BlobTooLarge,
    Capacities,
    Cell,
    Completion,
    NewTask,
    StaleEpoch,
    TableFull,
    TaskState,
    WorkerState,
)
from heapd.shm.layout import H, task_key, worker_key
from heapd.shm.types import MAX_WORKER_LOSSES
from heapd.shm.workers import retry_delay_s
from tests import shm_helpers

CAPS = Capacities(tasks=16, workers=4, arena_bytes=64 * 32, max_blob_bytes=512)
ACTIVE = {TaskState.DISPATCHED, TaskState.RUNNING}
DONE = {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
SIZES = st.sampled_from([0, 1, 63, 64, 65, 200, 512])
RARELY = st.integers(0, 7).map(lambda n: n == 0)


def chunks(size: int) -> int:
    return (size + 63) // 64


@dataclass
class MTask:
    id: int
    priority: int
    payload: bytes
    max_retries: int
    state: TaskState = TaskState.QUEUED
    due: float = 0.0  # PENDING: when its retry backoff ends
    attempt: int = 0
    worker: tuple[int, int] = (0, 0)
    result: bytes | None = None
    losses: int = 0  # attempts that ended with their worker lost

    @property
    def key(self) -> int:
        return task_key(self.priority, self.id >> 24)


@dataclass
class MWorker:
    id: int
    epoch: int
    slots: int
    seen: float
    in_flight: int = 0
    state: WorkerState = WorkerState.ALIVE
    last_pick: int = 0

    @property
    def key(self) -> int:
        return worker_key(self.in_flight, self.slots, self.last_pick)


class CellMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._names = shm_helpers.scratch_cell_name()
        self.cell = Cell.create(self._names.__enter__(), CAPS)
        self.tasks: dict[int, MTask] = {}
        self.workers: dict[int, MWorker] = {}
        self.ring: list[int] = []
        self.picks = 0
        self.now = 1.0

    def teardown(self) -> None:
        self.cell.close()
        self._names.__exit__(None, None, None)

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _active(self) -> list[MTask]:
        return [t for t in self.tasks.values() if t.state in ACTIVE]

    def _finish(self, task: MTask, state: TaskState) -> None:
        task.state = state
        self.ring.append(task.id)

    def _unload(self, task: MTask) -> None:
        self.workers[task.worker[0]].in_flight -= 1

    # ---- PLM side

    @precondition(lambda self: len(self.tasks) < CAPS.tasks)
    @rule(
        specs=st.lists(st.tuples(SIZES, st.integers(-2, 2), st.integers(0, 2)), max_size=5),
        oversize=RARELY,
    )
    def submit(self, specs: list[tuple[int, int, int]], oversize: bool) -> None:
        new = [NewTask(bytes([len(self.tasks) % 251]) * n, p, r) for n, p, r in specs]
        if oversize and new:
            new[-1] = NewTask(b"x" * 513)
        try:
            ids = self.cell.submit(new, self._tick())
        except BlobTooLarge:
            assert oversize
            return
        except TableFull:
            assert len(new) > CAPS.tasks - len(self.tasks)
            return
        except ArenaFull:
            return  # all or nothing: the invariant checks that nothing changed
        assert not (oversize and new)
        for task_id, t in zip(ids, new, strict=True):
            self.tasks[task_id] = MTask(task_id, t.priority, t.payload, t.max_retries)

    @precondition(lambda self: self.tasks)
    @rule(pick=st.integers(0, 100), go=RARELY)
    def cancel(self, pick: int, go: bool) -> None:
        if not go:
            return
        task = list(self.tasks.values())[pick % len(self.tasks)]
        result = self.cell.cancel(task.id, self._tick())
        assert result.cancelled == (task.state not in DONE)
        assert result.before.state == task.state
        if task.state in ACTIVE:
            self._unload(task)
        if result.cancelled:
            self._finish(task, TaskState.CANCELLED)

    @precondition(lambda self: self.ring)
    @rule(n=st.integers(0, 20))
    def take_finished(self, n: int) -> None:
        live = [i for i in self.ring if i in self.tasks]
        assert self.cell.take_finished(n) == live[:n]
        self.ring = live[n:]

    @precondition(lambda self: any(t.state in DONE for t in self.tasks.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from([*self.tasks, 7, 1 << 30])), "ids")
        freed = {i for i in ids if i in self.tasks and self.tasks[i].state in DONE}
        assert self.cell.release(ids) == len(freed)
        for i in freed:
            del self.tasks[i]

    # ---- scheduler side

    @precondition(
        lambda self: (
            any(t.state == TaskState.QUEUED for t in self.tasks.values())
            and any(w.state == WorkerState.ALIVE for w in self.workers.values())
        )
    )
    @rule(limit=st.integers(0, 6), per_slot=st.integers(1, 2))
    def dispatch(self, limit: int, per_slot: int) -> None:
        # The cell's lower bound of the queued priorities (exact or below: check() says so).
        floor = int(self.cell._m.hdr[H.MIN_QUEUED_PRIORITY])
        got = self.cell.dispatch(limit, self._tick(), per_slot)
        for d in got:
            alive = [w for w in self.workers.values() if w.state == WorkerState.ALIVE]
            best = min(w.key for w in alive)
            worker = self.workers[d.worker_id]
            queued = [t for t in self.tasks.values() if t.state == TaskState.QUEUED]
            task = min(queued, key=lambda t: t.key)
            cap = self._cap(task, floor, per_slot)
            assert worker.key == best and worker.in_flight < worker.slots * cap
            assert (d.task_id, d.payload, d.worker_epoch) == (task.id, task.payload, worker.epoch)
            task.state, task.attempt = TaskState.DISPATCHED, task.attempt + 1
            task.worker = (worker.id, worker.epoch)
            worker.in_flight += 1
            self.picks += 1
            worker.last_pick = self.picks
        queued = [t for t in self.tasks.values() if t.state == TaskState.QUEUED]
        alive = [w for w in self.workers.values() if w.state == WorkerState.ALIVE]
        if len(got) < limit and queued and alive:
            least = min(alive, key=lambda w: w.key)
            top = min(queued, key=lambda t: t.key)
            assert least.in_flight >= least.slots * self._cap(top, floor, per_slot)

    @staticmethod
    def _cap(task: MTask, floor: int, per_slot: int) -> int:
        """Tasks per slot the dispatch may fill for `task`: prefetch only when nothing of lower
        priority may be queued (it would take a freed slot first and invert the order)."""
        return per_slot if task.priority <= floor else 1

    @precondition(lambda self: self._active())
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        active = self._active()
        picked = (
            data.draw(st.lists(st.sampled_from(active), unique_by=id), "picked") if active else []
        )
        wrong = data.draw(RARELY, "wrong attempt")
        refs = [(t.id, t.attempt + (1 if wrong else 0)) for t in picked]
        assert self.cell.requeue(refs, self._tick()) == (0 if wrong else len(picked))
        if not wrong:
            for t in picked:
                self._unload(t)
                t.state, t.worker = TaskState.QUEUED, (0, 0)

    # ---- register side

    @precondition(lambda self: sum(w.state == WorkerState.ALIVE for w in self.workers.values()) < 3)
    @rule(slots=st.integers(1, 3))
    def register(self, slots: int) -> None:
        now = self._tick()
        used = [w for w in self.workers.values() if w.state != WorkerState.FREE]
        try:
            info = self.cell.register_worker("h:1", slots, 1, "host", now, now + 5)
        except TableFull:
            assert len(used) == CAPS.workers
            assert all(w.state != WorkerState.DEAD for w in used)
            return
        reused = [w for w in used if (w.id & 0xFFFF) == (info.worker_id & 0xFFFF)]
        if reused:
            dead = [w for w in used if w.state == WorkerState.DEAD]
            assert reused[0].state == WorkerState.DEAD
            assert reused[0].seen == min(w.seen for w in dead)
            del self.workers[reused[0].id]
        self.workers[info.worker_id] = MWorker(info.worker_id, info.epoch, slots, now)

    @precondition(lambda self: self._active())
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        picked = data.draw(st.lists(st.sampled_from(self._active()), min_size=1, unique_by=id))
        worker = self.workers[picked[0].worker[0]]
        mine = [t for t in picked if t.worker[0] == worker.id]
        stale = data.draw(RARELY, "stale attempt")
        outcome = data.draw(st.sampled_from(["ok", "fail", "retry"]), "outcome")
        size = data.draw(st.sampled_from([0, 5, 200, 300, 513]), "result size")
        state = TaskState.SUCCEEDED if outcome == "ok" else TaskState.FAILED
        retry = outcome == "retry"
        done = [Completion(t.id, t.attempt + stale, state, b"r" * size, retry) for t in mine]
        now = self._tick()
        out = self.cell.complete(worker.id, worker.epoch, done, now)
        if stale:
            assert (out.accepted, out.stale) == (0, len(mine))
            return
        requeued = 0
        for t in mine:
            self._unload(t)
            if outcome == "retry" and t.attempt <= t.max_retries:
                t.state, t.worker = TaskState.PENDING, (0, 0)  # waits out its backoff
                t.due = now + retry_delay_s(t.attempt)
                requeued += 1
                continue
            self._finish(t, state)
            t.result = self.cell.read_result(t.id)
            if t.result != b"r" * size:  # no room: settled FAILED with an empty result
                assert (t.result, self.cell.get(t.id).state) == (b"", TaskState.FAILED)
                t.state = TaskState.FAILED
            if size > CAPS.max_blob_bytes:
                assert t.result == b""
        assert (out.accepted, out.stale, out.requeued) == (len(mine), 0, requeued)

    def _pick_worker(self, pick: int) -> MWorker:
        ws = list(self.workers.values())
        return ws[pick % len(ws)]

    @rule(later=st.sampled_from([0.0, 0.05, 1000.0]))
    def promote_due(self, later: float) -> None:
        """Retries whose backoff (>= 0.1 s) has passed go back to the queue in their place."""
        now = self.now + later
        self.cell.promote_due(now)
        for t in self.tasks.values():
            if t.state == TaskState.PENDING and t.due <= now:
                t.state = TaskState.QUEUED
            assert self.cell.get(t.id).state == t.state

    @precondition(lambda self: self.workers)
    @rule(pick=st.integers(0, 10), event=st.sampled_from(["beat"] * 6 + ["lost", "deregister"]))
    def worker_event(self, pick: int, event: str) -> None:
        worker = self._pick_worker(pick)
        now = self._tick()
        if event == "beat":
            try:
                self.cell.heartbeat(worker.id, worker.epoch, now, now + 5)
            except StaleEpoch:
                assert worker.state == WorkerState.DEAD
                return
            worker.seen = now
            return
        mine = [t for t in self._active() if t.worker[0] == worker.id]
        call = self.cell.deregister if event == "deregister" else self.cell.worker_lost
        lost = call(worker.id, worker.epoch, now, b"lost")
        for t in mine:
            t.losses += 1
        poisoned = [t for t in mine if t.losses > MAX_WORKER_LOSSES]
        assert sorted(lost.failed) == sorted(t.id for t in poisoned)
        assert sorted(lost.requeued) == sorted(t.id for t in mine if t not in poisoned)
        for t in mine:
            t.worker = (0, 0)
            if t in poisoned:
                self._finish(t, TaskState.FAILED)
                t.result = b"lost"
                assert self.cell.read_result(t.id) == b"lost"
            else:
                t.state = TaskState.QUEUED
        worker.in_flight, worker.state = 0, WorkerState.DEAD
        if event == "deregister":
            del self.workers[worker.id]

    @precondition(lambda self: any(t.state == TaskState.DISPATCHED for t in self.tasks.values()))
    @rule(data=st.data())
    def mark_running(self, data: st.DataObject) -> None:
        dispatched = [t for t in self.tasks.values() if t.state == TaskState.DISPATCHED]
        if not dispatched:
            return
        t = data.draw(st.sampled_from(dispatched))
        worker = self.workers[t.worker[0]]
        started = self.cell.mark_running(worker.id, worker.epoch, [(t.id, t.attempt)], self.now)
        assert len(started) == 1
        t.state = TaskState.RUNNING

    # ---- agreement

    @invariant()
    def consistent(self) -> None:
        assert self.cell.check() == []

    @invariant()
    def agrees_with_model(self) -> None:
        infos = {t.task_id: t for t in self.cell.list_tasks(limit=1000)}
        assert infos.keys() == self.tasks.keys()
        for task in self.tasks.values():
            info = infos[task.id]
            assert (info.state, info.attempt) == (task.state, task.attempt)
            assert info.priority == task.priority
            if task.state in ACTIVE:
                assert (info.worker_id, info.worker_epoch) == task.worker
        queued = sum(t.state == TaskState.QUEUED for t in self.tasks.values())
        assert self.cell.queue_depth() == queued
        for w in self.cell.workers():
            model = self.workers[w.worker_id]
            assert (w.state, w.in_flight, w.epoch) == (model.state, model.in_flight, model.epoch)
        payloads = sum(chunks(len(t.payload)) for t in self.tasks.values() if t.state not in DONE)
        results = sum(chunks(len(t.result or b"")) for t in self.tasks.values() if t.state in DONE)
        assert self.cell.stats().arena_used_bytes == 64 * (payloads + results)


TestCellMachine = CellMachine.TestCase
TestCellMachine.settings = settings(
    max_examples=40,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
