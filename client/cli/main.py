"""`heapd`: one command with a subcommand per job; role subcommands run the daemons."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from heapd import shm
from heapd.calls import priority_from_name
from heapd.cli import run, show
from heapd.runtime import supervisor
from heapd.runtime.config import DEFAULT_PLM_PORT

ROLES = ("plm", "scheduler", "register", "worker")
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PLM_PORT}"


def parser() -> argparse.ArgumentParser:
    """The whole `heapd` command tree."""
    p = argparse.ArgumentParser(
        prog="heapd", description="heapd: a fast task scheduler that loses nothing."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_up(sub)
    down = sub.add_parser(
        "down", help="stop a cell started by `heapd up` and remove its shared memory"
    )
    down.add_argument("--cell", default=os.environ.get("HEAPD_CELL", "default"))
    for role in ROLES:
        sub.add_parser(
            role, help=f"run the {role} daemon (see `heapd {role} --help`)", add_help=False
        )
    _add_submit(sub)
    status = _with_address(sub.add_parser("status", help="workers, queue and totals of a cell"))
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    tasks = _with_address(sub.add_parser("tasks", help="list tasks"))
    tasks.add_argument(
        "--state", action="append", default=[], help="QUEUED, RUNNING, FAILED... (repeatable)"
    )
    tasks.add_argument("--limit", type=int, default=50)
    tasks.add_argument("--json", action="store_true")
    cancel = _with_address(sub.add_parser("cancel", help="cancel a task"))
    cancel.add_argument("task_id", type=int)
    fsck = sub.add_parser("fsck", help="check a cell's shared memory for consistency")
    fsck.add_argument("--cell", default=os.environ.get("HEAPD_CELL", "default"))
    fsck.add_argument("--repair", action="store_true", help="rebuild derived state after checking")
    bench = sub.add_parser("bench", help="run the benchmark workloads (BENCHMARKS.md)")
    bench.add_argument(
        "--workload",
        default="W1,W2",
        help="comma-separated: W1, W2, W4 (worker SIGKILL), W4H (hang)",
    )
    bench.add_argument(
        "--repeat", type=int, default=3, help="runs per figure; the median is reported"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _add_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="start a cell with local workers in the foreground")
    up.add_argument("--cell", default=os.environ.get("HEAPD_CELL", "default"))
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=DEFAULT_PLM_PORT, help="PLM port (0 = any)")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--slots", type=int, default=2, help="task processes per worker")
    up.add_argument("--tasks", type=int, default=1 << 20, help="task table capacity")
    up.add_argument("--arena-mb", type=int, default=256, help="payload/result arena size")
    up.add_argument("--max-blob-kb", type=int, default=1024, help="largest payload or result")
    up.add_argument("--logs", type=Path, help="write each role's log to DIR/ROLE.log")
    up.add_argument(
        "--prefetch-per-slot", type=int, help="scheduler prefetch when the queue is deep"
    )
    up.add_argument(
        "--heartbeat-interval-s", type=float, help="worker heartbeat interval (register default)"
    )
    up.add_argument(
        "--missed-heartbeats", type=int, help="silent intervals before a worker is DEAD"
    )


def _add_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = _with_address(
        sub.add_parser("submit", help="run a command as a task: heapd submit -- CMD ARGS…")
    )
    submit.add_argument("--priority", default="0", help="integer, or high/medium/low")
    submit.add_argument("--timeout", type=float, help="seconds")
    submit.add_argument("--retries", type=int, default=0)
    submit.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")


def _with_address(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--address",
        default=os.environ.get("HEAPD_ADDRESS", DEFAULT_ADDRESS),
        help="the PLM's HOST:PORT",
    )
    return p


def _cmd_up(args: argparse.Namespace) -> int:
    plan = supervisor.CellPlan(
        cell=args.cell,
        host=args.host,
        port=args.port,
        workers=args.workers,
        slots=args.slots,
        capacities=shm.Capacities(
            tasks=args.tasks, arena_bytes=args.arena_mb << 20, max_blob_bytes=args.max_blob_kb << 10
        ),
        log_dir=args.logs,
        prefetch_per_slot=args.prefetch_per_slot,
        heartbeat_interval_s=args.heartbeat_interval_s,
        missed_heartbeats=args.missed_heartbeats,
    )
    return supervisor.up(plan)


def _cmd_submit(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print(
            "heapd submit: give the command after --, e.g. heapd submit -- echo hi", file=sys.stderr
        )
        return 2
    return run.submit(
        args.address, argv, priority_from_name(args.priority), args.timeout, args.retries
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from heapd.runtime.bench import runner  # numpy and friends only when benchmarking

    return runner.main(
        [w.strip().upper() for w in args.workload.split(",") if w.strip()], args.repeat, args.json
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _cmd_up,
    "down": lambda a: supervisor.down(a.cell),
    "submit": _cmd_submit,
    "status": lambda a: show.status(a.address, a.json),
    "tasks": lambda a: show.tasks(a.address, a.state, a.limit, a.json),
    "cancel": lambda a: run.cancel(a.address, a.task_id),
    "fsck": lambda a: show.fsck(a.cell, a.repair),
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `heapd`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROLES:
        return _run_role(argv[0], argv[1:])
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130


def _run_role(role: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"heapd.{role}.__main__")
    code: int = module.main(argv)
    return code
