"""The PLM's status page and the history behind its charts: points computed from real samples
of a small cell (stamped with a test clock where exact rates are checked), and the page parsed
back as HTML: well formed, charts drawn, every worker listed, every status string escaped."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest

from heapd import shm
from heapd.runtime import status_page
from heapd.runtime.history import History, HistoryPoint
from heapd.shm import latency
from heapd.status import ClusterStatus, WorkerStatus

CAPS = shm.Capacities(tasks=1024, workers=16, arena_bytes=1 << 20, max_blob_bytes=4096)
T0 = 1_000_000.0  # the test clock's start (unix seconds)
STEP_S = 2.0
ROUNDS = 5
# Per round: RUN tasks at high priority are dispatched, all but one completed (after
# RUN_S); of the low-priority ones, CANCEL are cancelled (after CANCEL_S), the rest stay queued.
RUN, LOW, CANCEL = 3, 4, 2
RUN_S, CANCEL_S = 1.0, 0.5
EVIL = "<script>alert(1)</script>"

VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "wbr", "source"}


@pytest.fixture
def cell(cell_name: str) -> Iterator[shm.Cell]:
    """A small cell, unlinked by `cell_name`'s finalizer; it must still be consistent."""
    with shm.Cell.create(cell_name, CAPS) as c:
        yield c
        assert c.check() == []


def _workers(cell: shm.Cell) -> None:
    """Two ALIVE workers (4 slots each) and a DRAINING one (2 slots)."""
    added = [
        cell.register_worker(f"10.0.0.{n}:7000", slots, 100 + n, f"host{n}", T0, T0 + 1e6)
        for n, slots in ((1, 4), (2, 4), (3, 2))
    ]
    assert cell.drain_worker(added[-1].worker_id, added[-1].epoch)


def _round(cell: shm.Cell, t: float) -> None:
    """One interval of work starting at test time t."""
    run = cell.submit([shm.NewTask(b"run", priority=5) for _ in range(RUN)], t)
    low = cell.submit([shm.NewTask(b"low") for _ in range(LOW)], t)
    dispatched = cell.dispatch(RUN, t)
    assert sorted(d.task_id for d in dispatched) == run
    for d in dispatched[1:]:  # the first one keeps running
        done = shm.Completion(d.task_id, d.attempt, shm.TaskState.SUCCEEDED, b"r")
        cell.complete(d.worker_id, d.worker_epoch, [done], t + RUN_S)
    for task_id in low[:CANCEL]:
        assert cell.cancel(task_id, t + CANCEL_S).cancelled


def _stamped(cell: shm.Cell, at: float) -> shm.CellSample:
    """A real sample of the cell, dated by the test clock so that rates are exact."""
    return dataclasses.replace(cell.sample(), at=at)


def _history(cell: shm.Cell) -> History:
    """ROUNDS intervals of work, each recorded as one point."""
    _workers(cell)
    history = History()
    assert history.record(_stamped(cell, T0)) is None  # the baseline makes no point
    for i in range(ROUNDS):
        t = T0 + i * STEP_S
        _round(cell, t + 0.1)
        assert history.record(_stamped(cell, t + STEP_S)) is not None
    return history


def _within_bucket(value: float, seconds: float) -> bool:
    index = latency.bucket_of(seconds)
    return latency.lower_bound(index) <= value <= latency.lower_bound(index + 1)


def test_points_from_real_samples(cell: shm.Cell) -> None:
    points = _history(cell).points()
    assert len(points) == ROUNDS
    assert [p.at for p in points] == [T0 + (i + 1) * STEP_S for i in range(ROUNDS)]
    for i, p in enumerate(points, start=1):
        assert p.queued == i * (LOW - CANCEL)
        assert (p.pending, p.running) == (0, i)  # one run task per round left running
        # The draining worker counts for neither workers nor slots.
        assert (p.workers_alive, p.slots_total, p.slots_free) == (2, 8, 8 - i)
        assert p.submitted_per_s == (RUN + LOW) / STEP_S
        assert p.settled_per_s == (RUN - 1 + CANCEL) / STEP_S
        # Two tasks settled after CANCEL_S and two after RUN_S: the median is among the first.
        assert _within_bucket(p.p50_s, CANCEL_S)
        assert _within_bucket(p.p99_s, RUN_S)


def test_unstamped_samples_give_positive_rates(cell: shm.Cell) -> None:
    """Samples dated by the real clock: whatever the intervals, the work shows as rates."""
    _workers(cell)
    history = History()
    history.record(cell.sample())
    for i in range(3):
        _round(cell, T0 + i)
        history.record(cell.sample())
    points = history.points()
    assert len(points) == 3
    assert all(p.submitted_per_s > 0 and p.settled_per_s > 0 for p in points)
    assert all(math.isfinite(p.p50_s) and p.p50_s <= p.p99_s for p in points)


def test_quiet_interval_has_no_latency(cell: shm.Cell) -> None:
    history = History()
    history.record(_stamped(cell, T0))
    point = history.record(_stamped(cell, T0 + STEP_S))
    assert point is not None
    assert (point.submitted_per_s, point.settled_per_s) == (0.0, 0.0)
    assert math.isnan(point.p50_s) and math.isnan(point.p99_s)


def test_window_bounds_points_by_count_and_by_time(cell: shm.Cell) -> None:
    sample = cell.sample()
    fast = History(window_s=10.0, interval_s=2.0)  # at most 10 / 2 + 1 points
    for i in range(40):
        fast.record(dataclasses.replace(sample, at=T0 + i * 0.5))
    assert len(fast) == 6
    assert [p.at for p in fast.points()] == [T0 + i * 0.5 for i in range(34, 40)]

    slow = History(window_s=10.0, interval_s=2.0)  # points older than 10 s go
    for i in range(40):
        slow.record(dataclasses.replace(sample, at=T0 + i * 5.0))
    assert [p.at for p in slow.points()] == [T0 + i * 5.0 for i in range(37, 40)]


def test_clock_stepping_back_only_moves_the_baseline(cell: shm.Cell) -> None:
    history = History()
    history.record(_stamped(cell, T0))
    assert history.record(_stamped(cell, T0 - 5)) is None
    assert history.record(_stamped(cell, T0 - 5)) is None
    assert history.record(_stamped(cell, T0 - 3)) is not None
    assert len(history) == 1


@pytest.mark.parametrize(("window_s", "interval_s"), [(600, 0), (1, 2), (math.inf, 2)])
def test_history_refuses_bad_sizes(window_s: float, interval_s: float) -> None:
    with pytest.raises(ValueError, match="history"):
        History(window_s, interval_s)


# ---- the page


def _status(unschedulable: int = 2) -> dict[str, Any]:
    """What `heapd status --json` prints, with hostile strings wherever a user chooses them."""
    workers = [
        WorkerStatus(
            worker_id=n,
            epoch=n + 10,
            address=f"10.0.0.{n}:7000",
            hostname=f"host{n} & co",
            pid=100 + n,
            slots=4,
            in_flight=n % 4,
            state="ALIVE",
            last_heartbeat=T0 + 11.5,
            tasks_done=10 * n,
            resources={"cpus": 4.0, "gpu": 1.0},
            resources_free={"cpus": 4.0 - n % 4, "gpu": 1.0},
            labels={"team": EVIL, "zone": f"z{n}"},
        )
        for n in (3, 1, 2)
    ]
    workers.append(
        dataclasses.replace(
            workers[0], worker_id=9, address=f'evil:1"><{EVIL}', state="DEAD", last_heartbeat=0
        )
    )
    cluster = ClusterStatus(
        cell=f"c{EVIL}",
        workers=workers,
        queued=10,
        running=5,
        pending=1,
        submitted_total=40,
        succeeded_total=20,
        failed_total=2,
        cancelled_total=2,
        held_results=3,
        task_capacity=1024,
        unschedulable=unschedulable,
        policy="power-of-two",
        aging_s=30.0,
    )
    examples = [{"task_id": 77, "reason": f"needs label team={EVIL}"}]
    return {**dataclasses.asdict(cluster), "unschedulable_examples": examples}


class _Page(HTMLParser):
    """What the tests look at in a page; `problems` lists tags that do not nest."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.problems: list[str] = []
        self.tags: list[str] = []
        self.doctype = ""
        self.refresh = ""
        self.paths: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        self.problems += [f"<{tag}> never closed" for tag in self.open]

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_startendtag(tag, attrs)
        if tag not in VOID:
            self.open.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "meta" and values.get("http-equiv") == "refresh":
            self.refresh = values.get("content") or ""
        if tag == "path" and "class" not in values:
            self.paths.append(values.get("d") or "")

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:]}")
            return
        self.open.pop()
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def test_page_from_a_real_history(cell: shm.Cell) -> None:
    status = _status()
    text = status_page.render(status, _history(cell).points(), now=T0 + 12.0)
    page = _Page(text)
    assert page.problems == []
    assert page.doctype.lower() == "doctype html"
    assert page.refresh == "2"
    assert "script" not in page.tags
    assert "<script" not in text.lower()
    # Three charts: queued, pending, running; settled/s, submitted/s; p50, p99. Pending stayed
    # 0 and is drawn flat; every line has a point per interval.
    assert len(page.paths) == 7
    for d in page.paths:
        assert re.fullmatch(r"M\d+ \d+(L\d+ \d+){4}", d), d
    # Every worker has a row with its id and address (as text, unescaped back by the parser).
    rows = {row[0]: row for row in page.rows if row}
    for w in status["workers"]:
        row = rows[str(w["worker_id"])]
        assert row[1] == w["address"]
        assert EVIL in row[-1]  # the label, shown as text
    assert rows["1"][7] == "0.5 s ago" and rows["9"][7] == "-"
    body = "".join(page.text)
    assert "needs label team=" + EVIL in body  # the unschedulable example, as text
    assert f"heapd cell c{EVIL}" in body


def test_page_without_history_or_workers() -> None:
    status = {**_status(unschedulable=0), "workers": [], "unschedulable_examples": []}
    for points in ([], [_point(T0)]):
        text = status_page.render(status, points, refresh_s=5)
        page = _Page(text)
        assert page.problems == []
        assert page.paths == []
        assert "Charts appear once the cell has been sampled twice." in text
        assert "no worker registered" in text
        assert "Unschedulable" not in text
        assert page.refresh == "5"


def _point(at: float, settled: bool = True) -> HistoryPoint:
    p50, p99 = (0.01, 0.1) if settled else (math.nan, math.nan)
    return HistoryPoint(at, 3, 0, 2, 1, 2, 4, 1.5, 1.5, p50, p99)


def test_long_history_is_downsampled_and_gaps_break_lines() -> None:
    """A full window of points (forty seconds of it without settled tasks) stays a small page."""
    points = [_point(T0 + 2 * i, settled=not 100 <= i < 120) for i in range(301)]
    text = status_page.render(_status(), points)
    page = _Page(text)
    assert page.problems == []
    assert len(text) < 30_000
    for d in page.paths:
        assert d.count("M") + d.count("L") <= status_page.MAX_CHART_POINTS
    latency_lines = page.paths[-2:]
    assert all(d.count("M") > 1 for d in latency_lines)  # the quiet groups break them


def test_latency_chart_with_nothing_settled() -> None:
    text = status_page.render(_status(), [_point(T0, False), _point(T0 + 2, False)])
    assert "nothing settled in the window" in text
    assert len(_Page(text).paths) == 5


def test_refresh_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh_s"):
        status_page.render(_status(), [], refresh_s=0)
