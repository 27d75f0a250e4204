"""The CPU work of the policies experiment (`heapd.runtime.bench.experiment`): its task, which a
busy CPU slows down, and the hog that keeps one CPU busy.

`spin(seconds)` takes `seconds` on an idle CPU, of which the fraction `DUTY` is CPU time (a
fixed amount of work, counted on the thread's CPU clock) and the rest sleep, in periods of at
most `PERIOD_S`: a task whose CPU time comes in short bursts that contention stretches. Mostly
sleep, so a 2-core machine still runs six slots of it side by side; yet each burst of CPU only
advances when the scheduler lets it run. It reports when it ran and in which process, as W4's
`logged_sleep` does, because the cell forgets a task once its client has the result.
"""

from __future__ import annotations

import math
import os
import time
from multiprocessing.connection import Connection
from typing import NamedTuple

DUTY = 0.2  # CPU time / duration on an idle CPU
PERIOD_S = 0.01  # one burst of CPU and one sleep


class Ran(NamedTuple):
    """When and where one `spin` ran: unix seconds, the worker daemon (the task process's
    parent) and the task process (one per slot)."""

    started_at: float
    finished_at: float
    worker_pid: int
    pid: int


def spin(seconds: float) -> Ran:
    """Burn `seconds * DUTY` of CPU time in bursts, sleeping between them; see the module
    docstring."""
    started = time.time()
    periods = max(1, math.ceil(seconds / PERIOD_S))
    burst_s = seconds / periods * DUTY
    rest_s = seconds / periods - burst_s
    for _ in range(periods):
        until = time.thread_time() + burst_s
        while time.thread_time() < until:
            pass
        time.sleep(rest_s)
    return Ran(started, time.time(), os.getppid(), os.getpid())


def hog(cpu: int, ready: Connection) -> None:
    """Spin forever on CPU `cpu` in a session of its own (so that, under Linux's autogroup
    scheduling, it weighs as one session against the others); says so on `ready` first."""
    os.setsid()
    os.sched_setaffinity(0, {cpu})
    ready.send(os.getpid())
    ready.close()
    while True:
        pass
