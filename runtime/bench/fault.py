"""W4 (BENCHMARKS.md): 200 tasks of 0.2 s sleep on 4 workers x 1 slot; one worker is killed
(SIGKILL) — or, in the hang variant, stopped (SIGSTOP) — at t = 1.0 s.

Reports lost tasks (must be 0), duplicate executions, total time, how long the register took
to declare the worker dead (from its log), and kill -> the last of the victim's tasks done
elsewhere (from the tasks' own start/end log).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from heapd.client import Client
from heapd.runtime.bench import cells
from heapd.runtime.bench.workloads import logged_sleep
from heapd.runtime.launch import LocalCell

TASKS = 200
SECONDS = 0.2
KILL_AT_S = 1.0
WORKERS = 4

Figures = dict[str, float]


def run_w4(cell: LocalCell, hang: bool = False) -> Figures:
    """One repetition of W4 on a cell of 4 one-slot workers."""
    # ignore_cleanup_errors: in the hang variant the stopped worker's children may still write
    with (
        cells.client(cell) as client,
        tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch,
    ):
        _wait_for_workers(client, WORKERS)
        log = str(Path(scratch) / "tasks.log")
        Path(log).touch()
        start = time.time()
        futures = client.map(logged_sleep, [(i, SECONDS, log) for i in range(TASKS)])
        time.sleep(max(0.0, start + KILL_AT_S - time.time()))  # the workload's scripted moment
        victim = _busiest_worker(client)
        victim_children = _children_of(victim)  # they die with it: look before the kill
        killed_at = time.time()
        os.kill(victim, signal.SIGSTOP if hang else signal.SIGKILL)
        try:
            results = set()
            for f in futures:
                with contextlib.suppress(Exception):  # a task that never succeeded counts as lost
                    results.add(f.result(timeout=120))
            total = time.time() - start
        finally:
            if hang:
                os.kill(victim, signal.SIGCONT)
        lines = Path(log).read_text().split("\n")
    events = [line.split() for line in lines if line]
    return {
        "lost": float(TASKS - len(results & set(range(TASKS)))),
        "duplicates": float(_duplicates(events)),
        "total_s": total,
        "detect_ms": _detection_ms(cell, killed_at),
        "kill_to_reassigned_done_s": _reassigned_done(events, victim_children, killed_at),
    }


def run_w4_hang(cell: LocalCell) -> Figures:
    """The hang variant: the worker is SIGSTOPped, so only its heartbeat deadline tells."""
    return run_w4(cell, hang=True)


def _wait_for_workers(client: Client, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [w for w in client.cluster_status().workers if w.state == "ALIVE"]
        if len(alive) >= count:
            return
        threading.Event().wait(0.05)  # a replaced worker is registering
    raise TimeoutError(f"fewer than {count} workers alive")


def _busiest_worker(client: Client) -> int:
    workers = [w for w in client.cluster_status().workers if w.state == "ALIVE"]
    return max(workers, key=lambda w: w.in_flight).pid


def _duplicates(events: list[list[str]]) -> int:
    """Executions beyond one per task (a task that ran to its end more than once)."""
    ends = Counter(e[1] for e in events if e[0] == "end")
    return sum(n - 1 for n in ends.values() if n > 1)


def _reassigned_done(events: list[list[str]], victim_children: set[int], killed_at: float) -> float:
    """Seconds from the kill until the last task the victim had started (and not finished
    before the kill) was finished by another process."""
    started = {e[1] for e in events if e[0] == "start" and int(e[2]) in victim_children}
    finished_before = {
        e[1]
        for e in events
        if e[0] == "end" and int(e[2]) in victim_children and float(e[3]) < killed_at
    }
    orphaned = started - finished_before
    done_elsewhere = [
        float(e[3])
        for e in events
        if e[0] == "end" and e[1] in orphaned and int(e[2]) not in victim_children
    ]
    return max(done_elsewhere) - killed_at if done_elsewhere else 0.0


def _children_of(pid: int) -> set[int]:
    """Pids of the worker's pool children, read from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _detection_ms(cell: LocalCell, killed_at: float) -> float:
    """When the register logged the death, relative to the kill (ms); -1 if not found."""
    if cell.log_dir is None:
        return -1.0
    for line in (cell.log_dir / "register.log").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "worker dead" and entry["ts"] >= killed_at:
            return (float(entry["ts"]) - killed_at) * 1000
    return -1.0
