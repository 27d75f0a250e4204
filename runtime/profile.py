"""`heapd profile`: sample a running cell from its shared memory and write one CSV row per
interval, for plots and for reading a benchmark run after the fact.

The sampler reads the segment without the cell lock (`shm.Cell.sample`), so profiling never
slows the roles down; it runs outside the cell, so it is the one place in heapd where a timed
loop is right. Ticks follow a monotonic deadline schedule (tick k is due at start + k x
interval: no drift; a tick missed because the machine stalled is skipped, and the next row
spans the gap). Each row is flushed as it is written, so `tail -f` follows a run.

Columns, in this order (rates are per second over the row's interval; counts are as the
segment reads at the end of the interval):

    time             unix seconds at the end of the interval
    elapsed_s        seconds from the first (baseline) sample to the end of the interval
    submitted_per_s  tasks submitted
    succeeded_per_s  tasks that settled SUCCEEDED
    failed_per_s     tasks that settled FAILED
    cancelled_per_s  tasks that settled CANCELLED
    requeued_per_s   attempts put back in the queue (worker lost, retry, revoked)
    queue_depth      tasks on the task heap (QUEUED and not parked)
    pending          tasks PENDING (waiting on dependencies or a retry backoff)
    running          tasks DISPATCHED or RUNNING
    parked           QUEUED tasks parked as unschedulable (off the heap)
    workers_alive    ALIVE workers
    slots_total      slots of the ALIVE workers
    slots_free       of those, slots not holding a task
    in_flight        tasks held per live (ALIVE or DRAINING) worker: "id:n;id:n"
    settled          tasks that reached a terminal state in the interval
    p50_latency_s    median end-to-end latency (submitted -> terminal) of those tasks
    p99_latency_s    their 99th percentile (both empty when no task settled)

The percentiles come from the cell's log-spaced latency histogram (`shm.latency`: two buckets
per octave), interpolated inside a bucket. The first sample is only the baseline: the sum of
`settled` over the rows is every task settled while the profiler ran, each counted once.

It stops at the duration, when asked (SIGINT/SIGTERM from the command line, `stop` from code:
the partial interval is written as a last row), or when the cell goes away (its segment
unlinked or replaced by a new cell of the same name).
"""

from __future__ import annotations

import contextlib
import csv
import enum
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import TextIO

from heapd import shm
from heapd.shm import CellSample, TaskState
from heapd.shm.sample import between

COLUMNS = (
    "time",
    "elapsed_s",
    "submitted_per_s",
    "succeeded_per_s",
    "failed_per_s",
    "cancelled_per_s",
    "requeued_per_s",
    "queue_depth",
    "pending",
    "running",
    "parked",
    "workers_alive",
    "slots_total",
    "slots_free",
    "in_flight",
    "settled",
    "p50_latency_s",
    "p99_latency_s",
)
DEFAULT_INTERVAL_S = 0.5
JOIN_TIMEOUT_S = 10.0  # a stopped sampler finishes its row in well under this


class Ending(enum.Enum):
    """Why a profiler run ended."""

    DURATION = "duration"
    STOPPED = "stopped"
    CELL_GONE = "cell gone"


def check_interval(interval_s: float) -> float:
    """`interval_s` if it is a finite number > 0, else ValueError."""
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ValueError(f"the interval must be a number of seconds > 0, got {interval_s!r}")
    return interval_s


def check_duration(duration_s: float | None) -> float | None:
    """`duration_s` if it is None (until stopped) or a finite number >= 0, else ValueError."""
    if duration_s is not None and not (duration_s >= 0 and math.isfinite(duration_s)):
        raise ValueError(f"the duration must be a number of seconds >= 0, got {duration_s!r}")
    return duration_s


def row(first: CellSample, before: CellSample, after: CellSample) -> list[str]:
    """The CSV cells (in COLUMNS order) of the interval from `before` to `after`; `first` is
    the baseline `elapsed_s` counts from."""
    interval = between(before, after)
    settled = interval.settled_per_s
    live = [w for w in after.workers if w.state in shm.LIVE_WORKER_STATES]
    return [
        f"{after.at:.6f}",
        f"{after.at - first.at:.6f}",
        _rate(interval.submitted_per_s),
        _rate(settled["succeeded"]),
        _rate(settled["failed"]),
        _rate(settled["cancelled"]),
        _rate(interval.requeued_per_s),
        str(after.queued),
        str(after.states.get(TaskState.PENDING, 0)),
        str(after.running),
        str(after.parked),
        str(len(after.alive)),
        str(after.slots),
        str(after.slots_free),
        ";".join(f"{w.worker_id}:{w.in_flight}" for w in live),
        str(interval.settled),
        _latency(interval.p50_s),
        _latency(interval.p99_s),
    ]


def _rate(per_s: float) -> str:
    return f"{per_s:.3f}"


def _latency(seconds: float) -> str:
    return "" if math.isnan(seconds) else f"{seconds:.6f}"


class Profiler:
    """Samples one cell into CSV rows on `out`: `run()` on a schedule, or `begin()` then
    `step()` by hand. Attaches on construction (shm.CellNotFound if there is no such cell)."""

    def __init__(self, cell_name: str, interval_s: float, out: TextIO) -> None:
        self.cell_name = cell_name
        self.interval_s = check_interval(interval_s)
        self._out = out
        self._writer = csv.writer(out, lineterminator="\n")
        self._segment_path = shm.CellNames(cell_name).dev_shm_paths()[0]
        identity = _identity(self._segment_path)
        self._cell = shm.Cell.attach(cell_name)
        # The file as attached: if it was replaced between the stat and the attach, the first
        # step sees a mismatch and stops, which is what a replaced cell deserves anyway.
        self._identity = identity
        self._first: CellSample | None = None
        self._last: CellSample | None = None
        self._started = 0.0  # time.monotonic() at the baseline

    def close(self) -> None:
        """Detach from the cell (the output stays open: it belongs to the caller)."""
        self._cell.close()

    def __enter__(self) -> Profiler:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def begin(self) -> None:
        """Take the baseline sample, then write the header (a reader that sees the header
        knows that whatever happens from then on is counted in the rows)."""
        self._first = self._last = self._cell.sample()
        self._started = time.monotonic()
        self._writer.writerow(COLUMNS)
        self._out.flush()

    def step(self) -> bool:
        """Sample, write the row of the interval since the last sample, flush; False if the
        cell has gone away since (that last row still holds what its segment said)."""
        if self._first is None or self._last is None:
            raise RuntimeError("Profiler.step before begin")
        now = self._cell.sample()
        self._writer.writerow(row(self._first, self._last, now))
        self._out.flush()
        self._last = now
        return _identity(self._segment_path) == self._identity

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> Ending:
        """Header, baseline, then a row per interval until `duration_s` has passed (None:
        until stopped), `stop` is set (the partial interval becomes a last row) or the cell
        goes away."""
        check_duration(duration_s)
        self.begin()
        return self.follow(duration_s, stop)

    def follow(
        self, duration_s: float | None = None, stop: threading.Event | None = None
    ) -> Ending:
        """After `begin`: a row per interval on the grid from the baseline, until `duration_s`
        from the baseline has passed, `stop` is set or the cell goes away (as `run`)."""
        duration_s = check_duration(duration_s)
        stop = stop or threading.Event()
        if self._first is None:
            raise RuntimeError("Profiler.follow before begin")
        start = self._started
        if duration_s == 0:
            return Ending.DURATION
        end = math.inf if duration_s is None else start + duration_s
        tick = 0
        while True:
            # The next tick on the grid still ahead (ticks missed in a stall are skipped).
            tick = max(tick + 1, math.floor((time.monotonic() - start) / self.interval_s) + 1)
            due = min(start + tick * self.interval_s, end)
            if stop.wait(max(due - time.monotonic(), 0.0)):
                return Ending.STOPPED if self.step() else Ending.CELL_GONE
            if not self.step():
                return Ending.CELL_GONE
            if due >= end:
                return Ending.DURATION


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the cell's segment file, None if it is gone: a cell unlinked, or
    unlinked and created again under the same name, no longer matches."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class ProfilerThread:
    """A profiler's `run` on a daemon thread: `start()` (which takes the baseline before it
    returns: whatever happens after is counted), later `stop()`, then `join()` for how it
    ended (raising what the run raised)."""

    def __init__(self, profiler: Profiler, duration_s: float | None = None) -> None:
        self.profiler = profiler
        self._duration_s = check_duration(duration_s)
        self._stop = threading.Event()
        self._ending: Ending | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"heapd-profile-{profiler.cell_name}", daemon=True
        )

    def _run(self) -> None:
        try:
            self._ending = self.profiler.follow(self._duration_s, self._stop)
        except BaseException as exc:  # handed to join(), in the thread that owns the run
            self._error = exc

    def start(self) -> None:
        """Take the baseline and write the header here, then sample on the thread."""
        self.profiler.begin()
        self._thread.start()

    def stop(self) -> None:
        """Ask the run to end (it writes the partial interval as its last row)."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> Ending:
        """Wait for the run to end; TimeoutError if it has not within `timeout_s`."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the profiler of cell {self.profiler.cell_name!r} did not end")
        if self._error is not None:
            raise self._error
        assert self._ending is not None
        return self._ending


@contextlib.contextmanager
def to_file(cell_name: str, path: Path, interval_s: float = DEFAULT_INTERVAL_S) -> Iterator[None]:
    """Profile the cell into the CSV file `path` while the body runs (the benchmarks wrap each
    run in this). Raises at entry if there is no such cell; at exit, what the sampler raised
    (unless the body raised: its error wins)."""
    with open(path, "w", newline="") as out, Profiler(cell_name, interval_s, out) as profiler:
        background = ProfilerThread(profiler)
        background.start()
        try:
            yield
        finally:
            background.stop()
            sampler_error: BaseException | None = None
            try:
                background.join(JOIN_TIMEOUT_S)
            except BaseException as exc:
                sampler_error = exc
        if sampler_error is not None:
            raise sampler_error


def main(cell_name: str, interval_s: float, out_path: str, duration_s: float | None) -> int:
    """`heapd profile`: 0 when it ends (duration, SIGINT/SIGTERM, the cell gone), 1 if the cell
    cannot be read or the output written, 2 for a bad argument (`out_path` "-": standard
    output)."""
    try:
        check_interval(interval_s)
        check_duration(duration_s)
        shm.validate_cell_name(cell_name)
    except ValueError as exc:
        return _fail(str(exc), code=2)
    try:
        with shm.Cell.attach(cell_name):
            pass  # a missing cell fails here, before the output file is created
        with _output(out_path) as out, Profiler(cell_name, interval_s, out) as profiler:
            ending = _run_until_signalled(profiler, duration_s)
    except shm.CellNotFound:
        return _fail(f"no cell named {cell_name!r} is running on this host")
    except shm.ShmError as exc:
        return _fail(f"cannot read cell {cell_name!r}: {exc}")
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        return _fail(f"cannot write {out_path}: {exc.strerror or exc}")
    if ending is Ending.CELL_GONE:
        print(f"heapd profile: cell {cell_name!r} went away; stopped", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(path: str) -> Iterator[TextIO]:
    """The file to write ("-": standard output, left open)."""
    if path == "-":
        yield sys.stdout
        return
    with open(path, "w", newline="") as out:
        yield out


def _run_until_signalled(profiler: Profiler, duration_s: float | None) -> Ending:
    """Run on a thread while this (main) thread waits, so that a SIGINT/SIGTERM handler can set
    the stop event: setting an Event from a handler that interrupted that same thread's own
    wait on it can deadlock on the Event's lock."""
    background = ProfilerThread(profiler, duration_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        background.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        background.start()
        return background.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(message: str, code: int = 1) -> int:
    print(f"heapd profile: {message}", file=sys.stderr)
    return code
