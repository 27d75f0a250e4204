"""Fuzzing a live cell (issue 10): random but well-formed messages and byte-level garbage sent
to every RPC of every service, unary and streaming, authenticated like any client: TaskService
on the PLM, RegisterService on the register, WorkerService on a real worker. What is sent comes
from `heapd.runtime.bench.fuzz_requests`, made harmless by `heapd.runtime.bench.fuzz_guard`.

Meanwhile a `Canary` times GetClusterStatus (how long the PLM takes to answer while fuzzed) and
keeps one submission in flight: a PLM that stops taking tasks altogether is caught as a stall,
and the fuzz stops there. Afterwards `Fuzzer.finish` cancels every task the fuzz left alive and
takes the verdict: each daemon of the cell still the process it was (same pid and start time),
the shared memory consistent (`Cell.check`, what `heapd fsck` runs), a plain task still running.
`tests/test_fuzz.py` runs it with a small budget, `heapd bench --workload FUZZ --n N` at volume
(`bench`).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from hypothesis import HealthCheck, Phase, given, settings

from heapd import shm
from heapd.client import Client
from heapd.runtime.bench import cells
from heapd.runtime.bench.fuzz_guard import Guard
from heapd.runtime.bench.fuzz_requests import (
    BENCH_SIZES,
    RPCS,
    RPCS_BY_NAME,
    TEST_SIZES,
    Request,
    Rpc,
    Sizes,
    basic_requests,
    extreme_requests,
    requests,
)
from heapd.runtime.bench.workloads import noop
from heapd.runtime.channels import CHANNEL_OPTIONS
from heapd.runtime.config import Durability
from heapd.runtime.launch import LocalCell
from heapd.shm.lock import process_start
from heapd.v1 import (
    register_service_pb2,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
)

# Client-side limits well past the servers' own: an oversized request must reach the server
# and be refused there.
SEND_LIMIT_BYTES = 1 << 30
OPTIONS: list[tuple[str, Any]] = [
    *(o for o in CHANNEL_OPTIONS if o[0] != "grpc.max_send_message_length"),
    ("grpc.max_send_message_length", SEND_LIMIT_BYTES),
]
UNARY_DEADLINE_S = 5.0
STREAM_DEADLINE_S = 1.0  # WatchTasks and Heartbeat streams wait for more: cut them short
CANARY_INTERVAL_S = 0.2
CANARY_DEADLINE_S = 60.0
# A submission unanswered this long means the PLM stopped taking tasks (a loaded machine
# answers in well under a second; a wedged PLM never does).
STALL_S = 30.0
SWEEP_S = 60.0  # how long `finish` waits for the cancelled tasks to settle
NORMAL_TASK_S = 60.0
CHUNK = 1000  # requests drawn per hypothesis run
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
BAD_CODES = ("INTERNAL", "UNKNOWN")  # a server bug, never an answer to a request
LIVE_STATES = (task_pb2.PENDING, task_pb2.QUEUED, task_pb2.DISPATCHED, task_pb2.RUNNING)
# The canary's submission: a builtin sleep of 0 s, run like any task.
PROBE = task_service_pb2.SubmitTaskRequest(
    spec=task_pb2.TaskSpec(builtin=task_pb2.BuiltinCall(name="sleep")), session="heapd-fuzz-canary"
)


# --- counting, the canary, the daemons


@dataclass
class Tally:
    """Replies counted by status code, per kind of request ("structured" or "garbage") and per
    RPC; what came back in band; and the findings: requests answered INTERNAL or UNKNOWN."""

    codes: dict[str, Counter[str]] = field(
        default_factory=lambda: {"structured": Counter(), "garbage": Counter()}
    )
    by_rpc: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    in_band: Counter[str] = field(default_factory=Counter)
    findings: dict[str, Counter[str]] = field(
        default_factory=lambda: {"structured": Counter(), "garbage": Counter()}
    )
    skipped: int = 0
    fake_workers: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, rpc: Rpc, kind: str, code: str, details: str) -> None:
        """One call's final status."""
        with self._lock:
            self.codes[kind][code] += 1
            self.by_rpc[rpc.name, kind, code] += 1
            if code in BAD_CODES:
                self.findings[kind][f"{rpc.name} {code}: {details[:100]}"] += 1

    def record_in_band(self, rpc: Rpc, kind: str, what: str, details: str = "") -> None:
        """An answer inside a reply: a SubmitStream error code, an AssignStream refusal."""
        with self._lock:
            self.in_band[f"{rpc.name} {what}"] += 1
            if what in BAD_CODES:
                self.findings[kind][f"{rpc.name} in-band {what}: {details[:100]}"] += 1

    def skip(self) -> None:
        """One request not sent (the Guard could not make it harmless, or the PLM stalled)."""
        with self._lock:
            self.skipped += 1

    def count(self, counter: Counter[str], key: str) -> None:
        """One more `key` in one of the tally's counters, under its lock."""
        with self._lock:
            counter[key] += 1

    @property
    def calls(self) -> int:
        """Calls answered."""
        return sum(sum(c.values()) for c in self.codes.values())

    def reached(self) -> dict[str, set[str]]:
        """Per RPC, the kinds of request it answered."""
        kinds: dict[str, set[str]] = {rpc.name: set() for rpc in RPCS}
        for name, kind, _ in self.by_rpc:
            kinds[name].add(kind)
        return kinds


class Canary:
    """On its own thread, every `interval_s`: GetClusterStatus, timed (how long the PLM takes to
    answer while it is fuzzed), and one submission kept in flight (`PROBE`): if one gets no
    answer within `STALL_S`, the PLM has stopped taking tasks and `stalled` is set."""

    def __init__(
        self,
        channel: grpc.Channel,
        interval_s: float = CANARY_INTERVAL_S,
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self._tick = tick  # also called every interval
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        self._status = stub.GetClusterStatus
        self._submit = stub.SubmitTask
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heapd-fuzz-canary", daemon=True)
        self._probing = threading.Event()  # a submission is in flight
        self.latencies_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.failures: Counter[str] = Counter()
        self.stalled = threading.Event()
        self.stall = ""  # what stalled, once `stalled` is set

    def start(self) -> None:
        """Start pinging."""
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging (waits for the ping under way)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def ping(self) -> task_service_pb2.ClusterStatus | None:
        """One GetClusterStatus, timed; None if it failed (counted by code)."""
        started = time.perf_counter()
        try:
            status = self._status(
                task_service_pb2.GetClusterStatusRequest(), timeout=CANARY_DEADLINE_S
            )
        except grpc.RpcError as exc:
            self.failures[f"GetClusterStatus {exc.code().name}"] += 1
            return None
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        return status  # type: ignore[no-any-return]

    def refuses_tasks(self) -> str:
        """One more submission, waited for: "" if the PLM took it, else what went wrong (a
        stall sets `stalled`). A PLM being restarted is waited for (`wait_for_ready`)."""
        started = time.perf_counter()
        try:
            self._submit(PROBE, timeout=STALL_S, wait_for_ready=True)
        except grpc.RpcError as exc:
            self._probe_failed(exc)
            return self.stall or f"the PLM refused a task: {exc.code().name}: {exc.details()}"
        self.submit_ms.append((time.perf_counter() - started) * 1000)
        return ""

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._tick()
            self.ping()
            if not self._probing.is_set():
                self._probing.set()
                future = self._submit.future(PROBE, timeout=STALL_S)
                future.add_done_callback(partial(self._probe_done, time.perf_counter()))

    def _probe_done(self, started: float, future: grpc.Future) -> None:
        exc = future.exception()
        if exc is None:
            self.submit_ms.append((time.perf_counter() - started) * 1000)
        else:
            self._probe_failed(exc)
        self._probing.clear()

    def _probe_failed(self, exc: Any) -> None:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.stall = f"the PLM answered no submission for {STALL_S:.0f} s"
            self.stalled.set()
        else:
            self.failures[f"SubmitTask {exc.code().name}"] += 1


class Daemons:
    """The processes of a cell (`heapd up` and each role, from its ready line) as they were,
    and the role processes seen since: the supervisor restarts a role that dies, so a crash
    shows as a process that was not there at the start."""

    def __init__(self, cell: LocalCell) -> None:
        self.up = int(cell.info["pid"])
        pids = {"up": self.up, **{k: int(v) for k, v in cell.info["pids"].items()}}
        self.processes = {name: (pid, process_start(pid)) for name, pid in pids.items()}
        self._seen = {(pid, started) for pid, started in self.processes.values()}
        self._lock = threading.Lock()

    def sample(self) -> None:
        """Note the supervisor's children now (called by the canary, every interval)."""
        children = _children(self.up)
        with self._lock:
            self._seen |= children

    def gone(self) -> list[str]:
        """The daemons that died (or were restarted) since the start: "register (pid 123)"."""
        return [
            f"{name} (pid {pid})"
            for name, (pid, started) in self.processes.items()
            if started is None or process_start(pid) != started
        ]

    @property
    def restarts(self) -> int:
        """Role processes seen that were not there at the start."""
        self.sample()
        with self._lock:
            return len(self._seen) - len(self.processes)


def _children(parent: int) -> set[tuple[int, int | None]]:
    """(pid, start time) of the live children of `parent`."""
    found: set[tuple[int, int | None]] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == parent:
            found.add((int(entry.name), int(fields[19])))
    return found


# --- the fuzzer


@dataclass
class Report:
    """What a fuzz run did to the cell."""

    tally: Tally
    crashed: list[str]  # daemons gone: must be empty
    restarts: int  # role processes started (by the supervisor) while fuzzed: must be 0
    fsck: list[str]  # the shared memory's problems: must be empty
    stall: str  # "" or how the PLM stopped taking tasks (no answer at all): must be empty
    normal_task: str  # "ok", or why the plain task after the fuzz did not run
    leftover_tasks: int  # tasks still alive after the sweep (-1: none, the PLM took no task)
    canary_ms: list[float]  # GetClusterStatus round trips
    submit_ms: list[float]  # the canary's submissions
    canary_failures: Counter[str]
    error_log_lines: dict[str, int]  # per role log, lines logged at ERROR (if it logs to files)
    errors: list[str]  # the fuzzer's own failures (bugs here, not in the cell)

    def figures(self) -> dict[str, Any]:
        """The report as `heapd bench` prints it (and writes it as JSON)."""
        tally = self.tally
        return {
            "requests": tally.calls,
            "daemon_crashes": len(self.crashed),
            "crashed": ", ".join(self.crashed) or "none",
            "restarts": self.restarts,
            "fsck_problems": len(self.fsck),
            "fsck": self.fsck[0] if self.fsck else "clean",
            "stall": self.stall or "none",
            "normal_task": self.normal_task,
            "canary_worst_ms": max(self.canary_ms, default=float("nan")),
            "canary_p50_ms": _median(self.canary_ms),
            "canary_submit_worst_ms": max(self.submit_ms, default=float("nan")),
            "canary_submit_p50_ms": _median(self.submit_ms),
            "canary_failed": sum(self.canary_failures.values()),
            "skipped": tally.skipped,
            "leftover_tasks": self.leftover_tasks,
            "structured": dict(tally.codes["structured"].most_common()),
            "garbage": dict(tally.codes["garbage"].most_common()),
            "in_band": dict(tally.in_band.most_common()),
            "fake_workers": dict(tally.fake_workers),
            "error_log_lines": self.error_log_lines,
            "findings_structured": dict(tally.findings["structured"].most_common(20)),
            "findings_garbage": dict(tally.findings["garbage"].most_common(20)),
        }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def error_log_lines(log_dir: Path | None) -> dict[str, int]:
    """Per role log in `log_dir`, the lines logged at ERROR: a request must never be able to
    flood a log (one traceback per garbage message was the issue's finding)."""
    if log_dir is None or not log_dir.is_dir():
        return {}
    counts = {}
    for log in sorted(log_dir.glob("*.log")):
        with open(log, "rb") as lines:
            counts[log.stem] = sum(1 for line in lines if b'"level": "error"' in line)
    return counts


class Fuzzer:
    """Sends `Request`s to a live cell from a pool of threads and counts the replies;
    `finish` tidies up and says what the cell looks like afterwards."""

    def __init__(
        self,
        cell: LocalCell,
        *,
        concurrency: int = 8,
    ) -> None:
        self.cell = cell
        self.security = cell.security
        self._stream_deadline_s = STREAM_DEADLINE_S
        self._channels: list[grpc.Channel] = []
        self._plm = self._channel(cell.address)
        self._register = self._channel(cell.register)
        self.daemons = Daemons(cell)
        self.canary = Canary(self._plm, tick=self.daemons.sample)
        status = self.canary.ping()
        if status is None or not status.workers:
            self.close()
            raise ValueError(f"cannot fuzz cell {cell.name!r}: it has no live worker to fuzz")
        self._workers = [self._channel(w.address) for w in status.workers]
        self.guard = Guard([w.worker_id for w in status.workers])
        self.tally = Tally()
        self.errors: list[str] = []
        self._turn = 0
        self._room = threading.BoundedSemaphore(2 * concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="heapd-fuzz")
        self.canary.start()

    def __enter__(self) -> Fuzzer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the canary and the calls under way; close the channels."""
        self.canary.stop()
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=True, cancel_futures=True)
        for channel in self._channels:
            channel.close()

    def _channel(self, address: str) -> grpc.Channel:
        channel = self.security.channel(address, OPTIONS)
        self._channels.append(channel)
        return channel

    # --- sending

    def run(self, n: int, sizes: Sizes = TEST_SIZES) -> None:
        """`basic_requests` and `extreme_requests`, then `n` requests drawn by hypothesis (in
        runs of `CHUNK`: one run remembers what it drew, and 10,000 draws weigh a gigabyte)."""
        self.send_all(basic_requests())
        self.send_all(extreme_requests(sizes))
        for first in range(0, n, CHUNK):

            @settings(
                max_examples=min(CHUNK, n - first),
                deadline=None,
                database=None,
                phases=(Phase.generate,),
                suppress_health_check=list(HealthCheck),
            )
            @given(requests(sizes))
            def one(request: Request) -> None:
                self.send(request)

            one()

    def send_all(self, requests: Iterable[Request]) -> None:
        """`send` each (a stalled PLM ends the loop)."""
        for request in requests:
            if self.canary.stalled.is_set():
                return
            self.send(request)

    def send(self, request: Request) -> None:
        """Make `request` harmless and send it from the pool (blocks while the pool is full).
        Nothing is sent once the PLM has stalled: every call would wait out its deadline."""
        payloads = [self.guard.payload(request.rpc, m) for m in request.messages]
        if self.canary.stalled.is_set() or any(p is None for p in payloads):
            self.tally.skip()
            return
        channel = self._channel_for(request.rpc)
        self._room.acquire()
        sent = [p for p in payloads if p is not None]  # all of them: narrows the type
        future = self._pool.submit(self._call, request.rpc, request.garbage, sent, channel)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        self._room.release()
        if not future.cancelled() and (exc := future.exception()) is not None:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _channel_for(self, rpc: Rpc) -> grpc.Channel:
        if rpc.role == "plm":
            return self._plm
        if rpc.role == "register":
            return self._register
        self._turn += 1
        return self._workers[self._turn % len(self._workers)]

    def _call(self, rpc: Rpc, garbage: bool, payloads: list[bytes], channel: grpc.Channel) -> None:
        kind = "garbage" if garbage else "structured"
        replies: list[bytes] = []
        try:
            self._invoke(rpc, payloads, channel, replies)
        except grpc.RpcError as exc:
            self.tally.record(rpc, kind, exc.code().name, exc.details() or "")
        else:
            self.tally.record(rpc, kind, "OK", "")
        for reply in replies:
            self._follow_up(rpc, kind, reply)

    def _invoke(
        self, rpc: Rpc, payloads: list[bytes], channel: grpc.Channel, replies: list[bytes]
    ) -> None:
        """Call `rpc` with raw bytes (no serializer: the Guard serialized the well-formed
        requests), appending the raw replies to `replies` as they come."""
        path, stream_s = rpc.path, self._stream_deadline_s
        if rpc.client_streaming and rpc.server_streaming:
            _take(channel.stream_stream(path)(iter(payloads), timeout=stream_s), replies)
        elif rpc.client_streaming:
            replies.append(channel.stream_unary(path)(iter(payloads), timeout=UNARY_DEADLINE_S))
        elif rpc.server_streaming:
            _take(channel.unary_stream(path)(payloads[0], timeout=stream_s), replies)
        else:
            replies.append(channel.unary_unary(path)(payloads[0], timeout=UNARY_DEADLINE_S))

    def _follow_up(self, rpc: Rpc, kind: str, raw: bytes) -> None:
        """Read what a reply says where it matters: deregister a worker the fuzz registered,
        count SubmitStream's in-band errors and what the worker said to an assignment."""
        if rpc.name == "RegisterService/RegisterWorker":
            self._deregister(register_service_pb2.RegisterWorkerResponse.FromString(raw))
        elif rpc.name == "TaskService/SubmitStream":
            reply = task_service_pb2.SubmitStreamResponse.FromString(raw)
            if reply.error_code:
                name = CODE_NAMES.get(reply.error_code, str(reply.error_code))
                self.tally.record_in_band(rpc, kind, name, reply.error_message)
        elif rpc.role == "worker" and rpc.method.startswith("Assign"):
            # AssignTasks answers a request for another worker with FAILED_PRECONDITION,
            # AssignStream with `refused`: any other answer means a real worker took it.
            answer = worker_service_pb2.AssignTasksResponse.FromString(raw)
            self.tally.record_in_band(rpc, kind, "refused" if answer.refused else "ACCEPTED")

    def _deregister(self, registered: register_service_pb2.RegisterWorkerResponse) -> None:
        """A worker the fuzz registered leaves at once: it must not draw tasks for long."""
        self.tally.count(self.tally.fake_workers, "registered")
        request = register_service_pb2.DeregisterRequest(
            worker_id=registered.worker_id, epoch=registered.epoch, secret=registered.secret
        )
        path = RPCS_BY_NAME["RegisterService/Deregister"].path
        try:
            self._register.unary_unary(path)(request.SerializeToString(), timeout=UNARY_DEADLINE_S)
        except grpc.RpcError as exc:
            self.tally.count(self.tally.fake_workers, f"deregister {exc.code().name}")
        else:
            self.tally.count(self.tally.fake_workers, "deregistered")

    # --- the verdict

    def finish(self) -> Report:
        """Wait for the calls under way; unless the PLM stalled, cancel every task the fuzz
        left alive and run a plain task; then check the daemons and the shared memory."""
        self._pool.shutdown(wait=True)
        self.canary.stop()
        self.canary.ping()
        refusal = self.canary.stall or self.canary.refuses_tasks()
        if refusal:
            leftover, normal = -1, f"not run: {refusal}"
        else:
            leftover, normal = self._sweep(), self._normal_task()
        with shm.Cell.attach(self.cell.name) as attached:
            problems = attached.check()
        return Report(
            tally=self.tally,
            crashed=self.daemons.gone(),
            restarts=self.daemons.restarts,
            fsck=problems,
            stall=self.canary.stall,
            normal_task=normal,
            leftover_tasks=leftover,
            canary_ms=list(self.canary.latencies_ms),
            submit_ms=list(self.canary.submit_ms),
            canary_failures=Counter(self.canary.failures),
            error_log_lines=error_log_lines(self.cell.log_dir),
            errors=list(self.errors),
        )

    def _sweep(self) -> int:
        """Cancel the tasks the fuzz left pending, queued or running (some retry forever, some
        no worker can run) until none is left or `SWEEP_S` passed; how many are left (-1: the
        PLM did not answer)."""
        calls = _TaskCalls(self._plm)
        deadline = time.monotonic() + SWEEP_S
        try:
            alive = calls.live()
            while alive and time.monotonic() < deadline:
                for task in alive:
                    calls.cancel(task)
                time.sleep(0.1)  # polling the PLM: a running task settles once its worker stops it
                alive = calls.live()
        except grpc.RpcError:
            return -1
        return len(alive)

    def _normal_task(self) -> str:
        """Submit a no-op with the ordinary client and wait for its result: "ok" or what went
        wrong. On a thread, given up after `NORMAL_TASK_S` and a stall's worth more (a client
        call waits as long as its PLM takes to answer)."""
        outcome: list[str] = []

        def run() -> None:
            try:
                with Client(self.cell.address, security=self.security) as client:
                    value = client.submit(noop, 4242).result(timeout=NORMAL_TASK_S)
            except Exception as exc:
                outcome.append(f"{type(exc).__name__}: {exc}")
            else:
                outcome.append("ok" if value == 4242 else f"wrong result {value!r}")

        thread = threading.Thread(target=run, name="heapd-fuzz-normal-task", daemon=True)
        thread.start()
        thread.join(NORMAL_TASK_S + STALL_S)
        return outcome[0] if outcome else f"no answer within {NORMAL_TASK_S + STALL_S:.0f} s"


class _TaskCalls:
    """The two TaskService calls the sweep makes."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = task_service_pb2_grpc.TaskServiceStub(channel)

    def live(self) -> list[int]:
        """Ids of tasks not settled yet (up to 10,000)."""
        request = task_service_pb2.ListTasksRequest(states=LIVE_STATES, limit=10_000)
        reply = self._stub.ListTasks(request, timeout=CANARY_DEADLINE_S)
        return [task.task_id for task in reply.tasks]

    def cancel(self, task_id: int) -> None:
        """Cancel one (it may have settled meanwhile)."""
        request = task_service_pb2.CancelTaskRequest(task_id=task_id)
        with contextlib.suppress(grpc.RpcError):
            self._stub.CancelTask(request, timeout=UNARY_DEADLINE_S)


def _take(replies_in: Iterator[bytes], replies: list[bytes], most: int = 10_000) -> None:
    """Read a reply stream into `replies`, cancelling it past `most` replies."""
    for reply in replies_in:
        replies.append(reply)
        if len(replies) >= most:
            replies_in.cancel()  # type: ignore[attr-defined]
            return


# --- the bench


def bench(
    n: int, log: Callable[[str], None], durability: Durability = Durability.FSYNC
) -> dict[str, Any]:
    """`heapd bench --workload FUZZ --n N`: N fuzzed requests (after the basic and extreme
    ones) against a fresh cell of 2 workers; the `Report`'s figures. Results nobody collects
    are released after a second (`--result-ttl-s 1`) so the fuzz does not fill the cell."""
    log(f"FUZZ: starting a cell (2 workers x 2 slots, {durability})")
    with (
        cells.bench_cell("FUZZ", 2, 2, ("--result-ttl-s", "1"), durability) as cell,
        Fuzzer(cell) as fuzzer,
    ):
        log(f"FUZZ: sending every field at its extremes, then {n:,} fuzzed requests")
        fuzzer.run(n, BENCH_SIZES)
        log("FUZZ: cancelling what is left, then checking the cell")
        report = fuzzer.finish()
    if report.errors:
        log(f"FUZZ: the fuzzer itself failed {len(report.errors)} time(s): {report.errors[0]}")
    if report.stall:
        log(f"FUZZ: STALLED: {report.stall}")
    return report.figures()
