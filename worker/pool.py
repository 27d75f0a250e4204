"""The worker's pool of child processes, driven by the worker daemon's asyncio loop.

One child per slot, spawned (never forked) and each leading its own process group. The pool keeps
a local queue in (priority, task id) order and hands jobs only to idle children: one job each
while the queue is shallow, small batches (up to `max_batch`) once it is deeper than the idle
children, which saves pipe hand-offs on many short tasks. Everything happens on the loop thread:
each child's pipe and exit watcher are registered with `loop.add_reader`, timeouts are
`loop.call_later` handles, nothing polls.

What the pool reports, through the two callbacks given to `bind`:

- `on_started([(task_id, attempt), ...])` when children start jobs;
- `on_results([JobResult, ...])` for every job that finishes, times out (FAILED TIMEOUT) or loses
  its child (FAILED CRASHED, with the decoded exit status) — both retryable — or is cancelled
  (FAILED CANCELLED_BY_USER, not retryable). The control plane has usually settled a cancelled
  attempt already (the PLM's cancel, an expired lease) and drops that report as stale; but
  whoever else cancels it here must not leave the task RUNNING until the worker dies.

A job given back (`revoke`) or dropped with everything (`cancel_all`: the worker lost its
membership) is reported by nobody. A child that is killed (timeout, cancel) or dies is replaced
at once; the jobs it had not started go back to the front of the local queue, so they keep
their turn. The first job of each hand-off counts as started when it is handed over (the child
starts it on arrival, without a message): a child that dies before it really starts that job
(killed from outside in those microseconds) fails it as CRASHED, retryable.

Each outcome a child reports weighs at most `max_result_bytes` (`heapd.worker.execute.capped`).
"""

from __future__ import annotations

import asyncio
import atexit
import heapq
import logging
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import cast

from heapd.runtime.channels import MAX_MESSAGE_BYTES
from heapd.worker import child as child_main
from heapd.worker.child import Ready, Report, ResultTuple, Run, Skip
from heapd.worker.execute import DEFAULT_MAX_RESULT_BYTES, MIN_RESULT_BYTES
from heapd.worker.failure import FailureInfo, cancelled, crashed, describe_exitcode, timed_out
from heapd.worker.jobs import Job, JobResult

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (task_id, attempt)

_START_TIMEOUT_S = 60.0  # a child that is not ready by then is broken (bad sys.path, no memory)
_REAP_TIMEOUT_S = 1.0  # after SIGKILL a child is gone in microseconds; bound it all the same
_RESPAWN_RETRY_S = 1.0  # fork/exec failed, or a child died starting: retry without spinning
TRACED_MAX = 4096  # traced jobs whose stamps a pool keeps at once (shm.trace)
# One result must fit a heartbeat with room to spare (heapd.worker.heartbeats packs by size).
MAX_RESULT_BYTES = MAX_MESSAGE_BYTES // 4


@dataclass(eq=False)
class _Child:
    """One child process and what the pool has handed to it."""

    index: int
    process: BaseProcess
    conn: Connection
    pidfd: int  # -1 where pidfd_open is missing; the process sentinel is watched instead
    ready: bool = False
    eof: bool = False  # its pipe closed: it is exiting, the exit watcher will retire it
    retired: bool = False
    assigned: dict[Key, Job] = field(default_factory=dict)  # handed over, not finished, in order
    running: Key | None = None  # reported started, not finished
    exitcode: int | None = None  # once reaped
    started_at: float = 0.0
    timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def exit_fd(self) -> int:
        return self.pidfd if self.pidfd >= 0 else self.process.sentinel

    @property
    def idle(self) -> bool:
        return self.ready and not self.eof and not self.retired and not self.assigned


@dataclass
class _Events:
    """Callbacks gathered while handling one wake-up, delivered together afterwards."""

    started: list[Key] = field(default_factory=list)
    results: list[JobResult] = field(default_factory=list)


class Pool:
    """`slots` child processes running jobs for the worker daemon; see the module docstring."""

    def __init__(
        self,
        slots: int,
        *,
        max_batch: int = 8,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if slots < 1 or max_batch < 1:
            raise ValueError("slots and max_batch must be at least 1")
        if not MIN_RESULT_BYTES <= max_result_bytes <= MAX_RESULT_BYTES:
            raise ValueError(
                f"max_result_bytes={max_result_bytes} is out of range"
                f" {MIN_RESULT_BYTES}..{MAX_RESULT_BYTES}"
            )
        self._slots = slots
        self._max_batch = max_batch
        self._max_result_bytes = max_result_bytes
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[_Child | None] = [None] * slots
        self._queue: list[tuple[int, int, int, Job]] = []  # heap of (-priority, id, attempt, job)
        self._keys: set[Key] = set()  # queued or assigned: a duplicate submission is dropped
        # Traced jobs (shm.trace) handed to a child: when the worker received and handed them.
        self._traces: dict[Key, tuple[int, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_started: Callable[[list[Key]], None] = _ignore
        self._on_results: Callable[[list[JobResult]], None] = _ignore
        self._idle = asyncio.Event()
        self._closed = False
        self.respawns = 0  # task processes replaced (died, killed on timeout or cancel)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn every child and block until each is ready. Call before any gRPC object exists."""
        if any(self._children):
            raise RuntimeError("pool already started")
        atexit.register(self.close)  # before multiprocessing's own hook, which would join them
        for index in range(self._slots):
            self._children[index] = self._spawn(index)
        try:
            self._wait_ready(time.monotonic() + _START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def bind(
        self,
        loop: asyncio.AbstractEventLoop,
        on_started: Callable[[list[Key]], None],
        on_results: Callable[[list[JobResult]], None],
    ) -> None:
        """Attach to the daemon's loop: watch each child's pipe and exit there."""
        if self._loop is not None:
            raise RuntimeError("pool already bound")
        self._loop = loop
        self._on_started = on_started
        self._on_results = on_results
        for child in self._live():
            self._watch(child)
        self._update_idle()

    def close(self) -> None:
        """Kill every child's process group and release pipes; idempotent, reports nothing."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        children = self._live()
        for child in children:
            self._unwatch(child)
            _kill_group(child.process)
        for child in children:
            self._release(child)
        self._children = [None] * self._slots
        self._queue.clear()
        self._keys.clear()
        self._idle.set()  # nothing will run any more: wake wait_idle()

    # -- work ----------------------------------------------------------------------------------

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs (loop thread only) and hand what fits to idle children."""
        self._require_bound()
        if self._closed:
            raise RuntimeError("pool is closed")
        for job in jobs:
            key = (job.task_id, job.attempt)
            if key not in self._keys:
                self._keys.add(key)
                heapq.heappush(self._queue, _entry(job))
        self._dispatch()
        self._update_idle()

    def revoke(self, keys: Sequence[Key]) -> list[Key]:
        """Give back the jobs among `keys` that have not started: dropped from the local queue,
        or skipped by the child they were handed to (if that child takes one anyway, it is
        killed before it can run on). Returns the keys given back; the rest are running, done
        or unknown here, and are reported as usual."""
        self._require_bound()
        wanted = set(keys)
        given = self._drop_queued(wanted.__contains__)
        for child in self._live():
            for key in [k for k in child.assigned if k in wanted and k != child.running]:
                self._skip(child, key)
                given.append(key)
        self._update_idle()
        return given

    def cancel(self, task_id: int, attempt: int | None = None) -> bool:
        """Drop or kill the job(s) of `task_id` (every attempt when `attempt` is None).

        Queued locally: dropped. Running: its child's process group is killed and the child
        replaced. Handed to a child but not started: the child is told to skip it. Each job
        found is reported FAILED CANCELLED_BY_USER. Returns whether any job was found.
        """
        self._require_bound()

        def wanted(key: Key) -> bool:
            return key[0] == task_id and (attempt is None or key[1] == attempt)

        now = time.time()
        found = {key: now for key in self._drop_queued(wanted)}  # key -> when it started
        for child in self._live():
            targets = [key for key in child.assigned if wanted(key)]
            if not targets:
                continue
            found.update(
                (key, child.started_at if key == child.running else now) for key in targets
            )
            if child.running not in targets:
                for key in targets:
                    self._skip(child, key)
                continue
            for key in targets:
                del child.assigned[key]
                self._keys.discard(key)
            self._stop(child)
            self._replace(child, None)
        self._update_idle()
        if found:
            failure = cancelled()
            self._emit(
                _Events(
                    results=[
                        _failed(key, failure, at, retryable=False) for key, at in found.items()
                    ]
                )
            )
        return bool(found)

    def cancel_all(self) -> None:
        """Drop the local queue and kill every busy child; nothing is reported."""
        self._require_bound()
        self._queue.clear()
        self._keys.clear()
        for child in self._live():
            if child.assigned:
                child.assigned.clear()
                self._stop(child)
                self._replace(child, None)
        self._update_idle()

    async def wait_idle(self) -> None:
        """Return once nothing is queued or running (for Drain)."""
        self._require_bound()
        await self._idle.wait()

    # -- introspection -------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def running(self) -> int:
        """Jobs handed to children and not finished (a child runs its batch in order)."""
        return sum(len(child.assigned) for child in self._live())

    @property
    def queued(self) -> int:
        """Jobs waiting in the local queue for an idle child."""
        return len(self._queue)

    @property
    def free_slots(self) -> int:
        """Slots not spoken for by running or queued jobs."""
        return max(0, self._slots - self.running - self.queued)

    @property
    def pids(self) -> list[int]:
        """Process ids of the current children (for status and tests)."""
        return [child.pid for child in self._live()]

    # -- children ------------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Child:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=child_main.main,
            args=(child_conn, os.getpid(), self._max_result_bytes),
            name=f"heapd-slot-{index}",
        )
        try:
            process.start()
        except BaseException:
            parent_conn.close()
            raise
        finally:
            child_conn.close()  # the child holds its end; ours would hide the child's EOF
        assert process.pid is not None
        return _Child(index, process, parent_conn, _open_pidfd(process.pid))

    def _wait_ready(self, deadline: float) -> None:
        """Block (before the loop runs) until every child said Ready."""
        waiting: dict[Connection, _Child] = {child.conn: child for child in self._live()}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{len(waiting)} pool child(ren) not ready in time")
            for conn in wait(list(waiting), timeout=remaining):
                _expect_ready(waiting.pop(cast(Connection, conn)))

    def _watch(self, child: _Child) -> None:
        loop = self._require_bound()
        loop.add_reader(child.conn.fileno(), self._on_readable, child)
        loop.add_reader(child.exit_fd, self._on_exit, child)

    def _unwatch(self, child: _Child) -> None:
        if self._loop is not None:  # removing a reader that is not there is harmless
            self._loop.remove_reader(child.conn.fileno())
            self._loop.remove_reader(child.exit_fd)
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None

    def _release(self, child: _Child) -> None:
        """Reap a killed child and close its descriptors."""
        child.retired = True
        child.process.join(_REAP_TIMEOUT_S)
        child.exitcode = child.process.exitcode
        child.conn.close()
        if child.pidfd >= 0:
            os.close(child.pidfd)
        if child.exitcode is not None:  # else multiprocessing reaps it at its next start()
            child.process.close()

    def _stop(self, child: _Child) -> None:
        """Stop watching a child, kill its process group (task and grandchildren), reap it."""
        self._unwatch(child)
        _kill_group(child.process)
        self._release(child)

    def _replace(
        self, child: _Child, failure: FailureInfo | None, *, respawn_delay_s: float = 0.0
    ) -> None:
        """After `_stop`: report its running job with `failure` (if any); spawn a successor.

        Jobs handed to it but not started go back into the queue (by priority, then task id).
        """
        running = child.assigned.pop(child.running, None) if child.running else None
        for job in child.assigned.values():
            heapq.heappush(self._queue, _entry(job))
        child.assigned.clear()
        self._children[child.index] = None
        if respawn_delay_s > 0:
            self._require_bound().call_later(respawn_delay_s, self._respawn, child.index)
        else:
            self._respawn(child.index)
        if running is not None and failure is not None:
            self._keys.discard((running.task_id, running.attempt))
            key = (running.task_id, running.attempt)
            self._emit(_Events(results=[_failed(key, failure, child.started_at, retryable=True)]))
        self._dispatch()

    def _respawn(self, index: int) -> None:
        if self._closed:
            return
        try:
            fresh = self._spawn(index)
        except OSError:
            log.exception("cannot spawn pool child %d; retrying in %s s", index, _RESPAWN_RETRY_S)
            self._require_bound().call_later(_RESPAWN_RETRY_S, self._respawn, index)
            return
        self._children[index] = fresh
        self.respawns += 1
        self._watch(fresh)

    # -- loop callbacks ------------------------------------------------------------------------

    def _on_readable(self, child: _Child) -> None:
        """The child's pipe has messages (or hit EOF)."""
        if child.retired:
            return
        events = _Events()
        self._read(child, events)
        if child.running is not None and child.running not in child.assigned:
            # It started a job that was cancelled while the Skip was in flight: kill it now.
            self._stop(child)
            self._replace(child, None)
        self._dispatch()
        self._emit(events)
        self._update_idle()

    def _on_exit(self, child: _Child) -> None:
        """The child process exited on its own: report its job as CRASHED and replace it."""
        if child.retired:
            return
        events = _Events()
        self._read(child, events)  # what it sent before dying still counts
        self._emit(events)
        pid = child.pid
        self._stop(child)  # also kills the grandchildren it left behind
        failure = crashed(child.exitcode)
        log.warning("pool child %d (pid %d) died: %s", child.index, pid, failure.message)
        # One that died before it was ready will likely die again: don't respawn in a tight loop.
        delay_s = 0.0 if child.ready else _RESPAWN_RETRY_S
        self._replace(child, failure, respawn_delay_s=delay_s)
        self._update_idle()

    def _on_timeout(self, child: _Child, key: Key, timeout_s: float) -> None:
        """A job ran past its timeout: kill its whole group and report FAILED TIMEOUT."""
        child.timer = None
        if child.retired:
            return
        events = _Events()
        self._read(child, events)  # it may have finished just now
        self._emit(events)
        if child.retired or child.running != key:
            return
        log.info("task %d attempt %d timed out after %s s", key[0], key[1], timeout_s)
        self._stop(child)
        self._replace(child, timed_out(timeout_s))
        self._update_idle()

    # -- messages ------------------------------------------------------------------------------

    def _read(self, child: _Child, events: _Events) -> None:
        """Apply every message the child has sent so far."""
        try:
            while not child.eof and child.conn.poll():
                self._apply(child, child.conn.recv(), events)
        except (EOFError, OSError):
            self._mark_eof(child)

    def _apply(self, child: _Child, message: object, events: _Events) -> None:
        if isinstance(message, Report):
            self._finish(child, message.results, events, message.at_ns)
            if message.started is not None:
                self._start(child, message.started, events)
        elif isinstance(message, Ready):
            child.ready = True
        else:
            log.error("pool child %d sent an unknown message %r", child.index, message)

    def _finish(
        self, child: _Child, results: list[ResultTuple], events: _Events, at_ns: int = 0
    ) -> None:
        """Results a child reported (at `at_ns`, its clock) for the jobs it was assigned."""
        for task_id, attempt, succeeded, retryable, outcome, started_ns in results:
            key = (task_id, attempt)
            if key == child.running:
                child.running = None
                if child.timer is not None:
                    child.timer.cancel()
                    child.timer = None
            if child.assigned.pop(key, None) is not None:
                self._keys.discard(key)
                trace = self._trace_of(key, started_ns, at_ns) if self._traces else ()
                events.results.append(
                    JobResult(task_id, attempt, succeeded, retryable, outcome, trace)
                )

    def _trace_of(self, key: Key, started_ns: int, finished_ns: int) -> tuple[int, ...]:
        """A traced job's worker stamps up to reading its result (shm.WORKER_HOPS but the
        last); () for a job not traced."""
        stamps = self._traces.pop(key, None)
        if stamps is None:
            return ()
        received_ns, handed_ns = stamps
        return (received_ns, handed_ns, started_ns, finished_ns, time.time_ns())

    def _start(self, child: _Child, key: Key, events: _Events) -> None:
        child.running = key
        child.started_at = time.time()
        job = child.assigned.get(key)
        if job is None:
            # Skipped (cancelled or revoked) but the child had already taken it: it must not
            # run on (a revoked attempt runs elsewhere). Killed once this read is over.
            self._require_bound().call_soon(self._kill_skipped, child, key)
            return
        events.started.append(key)
        if job.timeout_s > 0:
            loop = self._require_bound()
            timeout_s = job.timeout_s
            child.timer = loop.call_later(timeout_s, self._on_timeout, child, key, timeout_s)

    def _kill_skipped(self, child: _Child, key: Key) -> None:
        if child.running == key and not child.retired and key not in child.assigned:
            self._stop(child)
            self._replace(child, None)
            self._dispatch()
            self._update_idle()

    def _mark_eof(self, child: _Child) -> None:
        """The pipe closed: stop reading it and let the exit watcher retire the child."""
        if not child.eof and self._loop is not None:
            self._loop.remove_reader(child.conn.fileno())
        child.eof = True

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand queued jobs to idle children: singly, or in batches when the queue is deep."""
        if self._closed or self._loop is None:
            return
        idle = [child for child in self._live() if child.idle]
        events = _Events()
        while self._queue and idle:
            size = _batch_size(len(self._queue), len(idle), self._max_batch)
            batch = [heapq.heappop(self._queue)[3] for _ in range(size)]
            self._hand(idle.pop(), batch, events)
        self._emit(events)

    def _hand(self, child: _Child, batch: list[Job], events: _Events) -> None:
        """Hand a batch to an idle child; its first job starts at once (`heapd.worker.child`
        does not report that start), so it counts as started now."""
        for job in batch:
            child.assigned[(job.task_id, job.attempt)] = job
            if job.received_ns:
                self._traced((job.task_id, job.attempt), job.received_ns)
        try:
            child.conn.send(Run([(job.task_id, job.attempt, job.spec) for job in batch]))
        except OSError:
            self._mark_eof(child)  # it died: the exit watcher puts these jobs back in the queue
            return
        self._start(child, (batch[0].task_id, batch[0].attempt), events)

    def _traced(self, key: Key, received_ns: int) -> None:
        """Start a traced job's stamps; the oldest are dropped past TRACED_MAX (jobs that never
        reported a result: killed, revoked, their child died)."""
        if len(self._traces) >= TRACED_MAX:
            del self._traces[next(iter(self._traces))]
        self._traces[key] = (received_ns, time.time_ns())

    def _skip(self, child: _Child, key: Key) -> None:
        """Cancel a job handed to a child but not started; if it starts anyway, it is killed."""
        del child.assigned[key]
        self._keys.discard(key)
        try:
            child.conn.send(Skip(*key))
        except OSError:
            self._mark_eof(child)

    def _drop_queued(self, wanted: Callable[[Key], bool]) -> list[Key]:
        """Take the wanted jobs out of the local queue (one pass); returns their keys."""
        kept, dropped = [], []
        for entry in self._queue:
            key = (entry[1], entry[2])
            if wanted(key):
                self._keys.discard(key)
                dropped.append(key)
            else:
                kept.append(entry)
        if dropped:
            heapq.heapify(kept)
            self._queue = kept
        return dropped

    # -- helpers -------------------------------------------------------------------------------

    def _live(self) -> list[_Child]:
        return [child for child in self._children if child is not None]

    def _emit(self, events: _Events) -> None:
        if events.started:
            self._on_started(events.started)
        if events.results:
            self._on_results(events.results)

    def _update_idle(self) -> None:
        if self._queue or any(child.assigned for child in self._live()):
            self._idle.clear()
        else:
            self._idle.set()

    def _require_bound(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("pool is not bound to an event loop; call bind() first")
        return self._loop


def _entry(job: Job) -> tuple[int, int, int, Job]:
    """A job's place in the local queue: higher priority first, then task id (= submission)."""
    return (-job.priority, job.task_id, job.attempt, job)


def _batch_size(depth: int, idle: int, max_batch: int) -> int:
    """One job per idle child while they suffice; then share the queue out, capped."""
    if depth <= idle:
        return 1
    return min(max_batch, math.ceil(depth / idle))


def _expect_ready(child: _Child) -> None:
    """Take a starting child's first message, which must be Ready."""
    try:
        message = child.conn.recv()
    except (EOFError, OSError):
        child.process.join(_REAP_TIMEOUT_S)
        status = describe_exitcode(child.process.exitcode)
        raise RuntimeError(f"pool child died while starting ({status})") from None
    if not isinstance(message, Ready):
        raise RuntimeError(f"pool child sent {message!r} before Ready")
    child.ready = True


def _failed(key: Key, failure: FailureInfo, started_at: float, retryable: bool) -> JobResult:
    """A failure the pool decided: retryable for a timeout or crash, not for a cancel."""
    outcome = child_main.outcome_bytes(failure, started_at)
    return JobResult(key[0], key[1], False, retryable, outcome)


def _kill_group(process: BaseProcess) -> None:
    """SIGKILL the child's process group (task and grandchildren); the child alone if it has none.

    Before `setsid` ran (a child still starting) no group carries its pid: kill the process.
    Called before the child is reaped, so its pid cannot have been reused.
    """
    pid = process.pid
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        if process.exitcode is None:
            process.kill()
    except PermissionError:  # pid reused by a group that is not ours: never kill it
        log.error("process group %d is not ours any more", pid)


def _open_pidfd(pid: int) -> int:
    """A descriptor readable when `pid` exits, even if a grandchild holds the child's pipes."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _ignore(_: object) -> None:
    return None
