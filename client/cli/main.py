"""`heapd`: one command with a subcommand per job; role subcommands run the daemons."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from heapd import __version__, shm
from heapd.cli import run, show
from heapd.runtime import config, logs, security, sockets, supervisor
from heapd.runtime.config import DEFAULT_PLM_PORT
from heapd.security import TOKEN_FILE_NAME, Security, SecurityError, read_token

ROLES = ("plm", "scheduler", "register", "worker")
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PLM_PORT}"


def parser() -> argparse.ArgumentParser:
    """The whole `heapd` command tree."""
    p = argparse.ArgumentParser(
        prog="heapd", description="heapd: a fast task scheduler that loses nothing."
    )
    p.add_argument("--version", action="version", version=f"heapd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_up(sub)
    _add_down(sub)
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
    fsck.add_argument(
        "--state-dir",
        help="the cell's state directory: its journal is checked against the shared memory"
        " (default $XDG_STATE_HOME/heapd/CELL or ~/.local/state/heapd/CELL)",
    )
    _add_profile(sub)
    _add_certs(sub)
    bench = sub.add_parser("bench", help="run the benchmark workloads (BENCHMARKS.md)")
    bench.add_argument(
        "--workload",
        default="W1,W2",
        help="comma-separated: W1, W2, W3 (makespan per placement policy, 4x1 and 1+2+3"
        " slots), W4 (worker SIGKILL), W4H (hang), W5 (queue scale: submit 1e3..--queue-tasks"
        " to a cell without workers, then drain), W6 (worker scale: scheduler CPU per dispatch"
        " with 1..--scale-workers workers), W7 (high priority behind 2,000 low),"
        " RECOVER (rebuild a cell of --recover-tasks queued tasks from its journal), FUZZ"
        " (--n fuzzed requests and garbage to every RPC of a cell; counts by status code,"
        " crashes, fsck)",
    )
    bench.add_argument(
        "--repeat", type=int, default=3, help="runs per figure; the median is reported"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--durability",
        choices=[d.value for d in config.Durability],
        default=config.Durability.FSYNC.value,
        help="the journal of the cells benchmarked (default fsync, as `heapd up`)",
    )
    bench.add_argument(
        "--transport",
        choices=[t.value for t in config.Transport],
        default=config.Transport.UNIX.value,
        help="how the cells' roles, workers and W1/W2's clients talk: unix sockets (adds the"
        " floor F1_unix) or tcp (default unix, as `heapd up`)",
    )
    bench.add_argument(
        "--recover-tasks", type=int, default=1_000_000, help="queued tasks for RECOVER"
    )
    bench.add_argument("--n", type=int, default=10_000, help="fuzzed requests for FUZZ")
    bench.add_argument(
        "--queue-tasks", type=int, default=1_000_000, help="W5's largest queue (1e3, 1e5, 1e6)"
    )
    bench.add_argument(
        "--scale-workers", type=int, default=100, help="W6's most workers (1, 10, 100)"
    )
    bench.add_argument(
        "--trace",
        action="store_true",
        help="W2 traces every 10th round trip; report the time per hop (client, PLM,"
        " scheduler, worker, child, register, back) as TRACE rows",
    )
    bench.add_argument(
        "--experiment",
        choices=["policies"],
        help="instead of the workloads, run an experiment: policies (W3's durations on workers"
        " of 1, 2 and 3 slots, one slowed by a CPU hog, under each placement policy)",
    )
    bench.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="write the experiment's PNG plots and results.md to DIR (needs heapd[plot])",
    )
    bench.add_argument(
        "--tasks", type=int, default=200, help="tasks per run of the experiment (W3's 200)"
    )
    bench.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each run's cell into DIR/<workload>-run<k>.csv (see `heapd profile`)",
    )
    return p


def _add_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`heapd up` flags: no defaults here, `UpConfig` holds them (flags > HEAPD_* > TOML)."""
    d = config.UpConfig
    up = sub.add_parser("up", help="start a cell with local workers in the foreground")
    up.add_argument("--cell", help=f"cell name (HEAPD_CELL; default {d.cell!r})")
    up.add_argument("--host", help=f"address the PLM and register listen on (default {d.host})")
    up.add_argument(
        "--port",
        dest="plm_port",
        metavar="PORT",
        type=int,
        help=f"PLM port (default {d.plm_port}; 0 = any)",
    )
    up.add_argument(
        "--register-port", type=int, help=f"register port (default {d.register_port}; 0 = any)"
    )
    up.add_argument(
        "--transport",
        choices=[t.value for t in config.Transport],
        help="unix: the roles and local workers talk over Unix sockets in the cell's socket"
        " directory, the PLM and register listen on TCP too; tcp: TCP only (HEAPD_TRANSPORT;"
        f" default {d.transport})",
    )
    up.add_argument("--workers", type=int, help=f"local workers (default {d.workers})")
    up.add_argument("--slots", type=int, help=f"task processes per worker (default {d.slots})")
    up.add_argument(
        "--resources",
        metavar="NAME=AMOUNT,...",
        help="what each local worker offers, e.g. gpu=1,mem_gb=16 (default: cpus = --slots)",
    )
    up.add_argument(
        "--labels", metavar="KEY=VALUE,...", help="labels of each local worker, e.g. zone=a"
    )
    up.add_argument("--tasks", type=int, help=f"task table capacity (default {d.tasks})")
    up.add_argument("--arena-mb", type=int, help=f"payload/result arena (default {d.arena_mb})")
    up.add_argument(
        "--max-blob-kb", type=int, help=f"largest payload or result (default {d.max_blob_kb})"
    )
    up.add_argument(
        "--logs", dest="log_dir", metavar="DIR", help="write each role's log to DIR/ROLE.log"
    )
    up.add_argument("--config", type=Path, help="TOML configuration file (or HEAPD_CONFIG)")
    config.add_journal_flags(up)
    config.add_metrics_flag(
        up,
        "Prometheus metrics (the PLM; the scheduler, register and workers on the ports after"
        " it), the PLM's /status and its status page /",
    )
    config.add_log_level_flag(up)
    config.add_security_flags(up)
    up.add_argument(
        "--auth",
        choices=[a.value for a in config.Auth],
        help="token: every port requires the cell's token (--token-file, HEAPD_TOKEN, else one"
        " made in the state directory); none: no token (loopback only unless --insecure)"
        f" (HEAPD_AUTH; default {d.auth})",
    )
    # Settings of one role, forwarded as that role's flags (the role's config holds them).
    scheduler, register = config.SchedulerConfig, config.RegisterConfig
    up.add_argument(
        "--prefetch-per-slot",
        type=int,
        help=f"scheduler prefetch when the queue is deep (default {scheduler.prefetch_per_slot})",
    )
    up.add_argument(
        "--policy",
        choices=["least-loaded", "round-robin", "random", "power-of-two"],
        help=f"scheduler placement policy (default {scheduler.policy})",
    )
    up.add_argument(
        "--aging-s",
        type=float,
        help="a queued task's priority grows by 1 per this many seconds waited (default 0: off)",
    )
    up.add_argument(
        "--heartbeat-interval-s",
        type=float,
        help=f"worker heartbeat interval (default {register.heartbeat_interval_s})",
    )
    up.add_argument(
        "--missed-heartbeats",
        type=int,
        help=f"silent intervals before a worker is DEAD (default {register.missed_heartbeats})",
    )
    up.add_argument(
        "--result-ttl-s",
        type=float,
        help="how long the PLM keeps a result nobody acknowledged"
        f" (default {config.PlmConfig.result_ttl_s:.0f})",
    )


def _add_down(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`heapd down` reads the cell name as `heapd up` does, from the same `UpConfig`."""
    down = sub.add_parser(
        "down", help="stop a cell started by `heapd up` and remove its shared memory"
    )
    down.add_argument("--cell", help="cell name (HEAPD_CELL; default 'default')")
    down.add_argument("--config", type=Path, help="TOML configuration file (or HEAPD_CONFIG)")


def _add_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = _with_address(
        sub.add_parser("submit", help="run a command as a task: heapd submit -- CMD ARGS…")
    )
    submit.add_argument("--priority", default="0", help="integer, or high/medium/low")
    submit.add_argument("--timeout", type=float, help="seconds")
    submit.add_argument("--retries", type=int, default=0)
    submit.add_argument(
        "--resources",
        default="",
        metavar="NAME=AMOUNT,...",
        help="needs held on the worker while it runs, e.g. gpu=1,cpus=2",
    )
    submit.add_argument(
        "--labels",
        default="",
        metavar="KEY=VALUE,...",
        help="labels the worker must carry, e.g. zone=a",
    )
    submit.add_argument(
        "--key",
        help="idempotency key: a resubmission with a key the cell knows runs nothing new and"
        " waits for the first task",
    )
    submit.add_argument(
        "--after",
        action="append",
        type=int,
        default=[],
        metavar="TASK_ID",
        help="run only once this task has succeeded (repeatable); if it fails, is cancelled or"
        " is lost, this one fails with DependencyFailed",
    )
    submit.add_argument(
        "--count",
        type=int,
        default=1,
        metavar="N",
        help="run N copies (copy i sees HEAPD_TASK_INDEX=i; with --key, key KEY/i); wait for all"
        " with a progress bar, print their outputs in order, exit with the first non-zero code",
    )
    submit.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")


def _add_certs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser(
        "certs", help="make a CA and TLS certificates for a cell (ca.pem, server.pem, client.pem)"
    )
    certs.add_argument("--cell", default=os.environ.get("HEAPD_CELL", "default"))
    certs.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or IP address the roles are reached at, besides localhost, 127.0.0.1,"
        " ::1 and this host's name (repeatable)",
    )
    certs.add_argument("--force", action="store_true", help="replace existing files")


def _add_profile(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`heapd profile`: the columns are documented in `heapd.runtime.profile`."""
    profile = sub.add_parser(
        "profile",
        help="sample a running cell's shared memory into CSV, one row per interval",
        description="Sample a cell on this host (read-only, lock-free) and write one CSV row"
        " per interval: rates, queue, workers, slots and latency percentiles. Stops at"
        " --duration, on SIGINT/SIGTERM, or when the cell goes away.",
    )
    profile.add_argument(
        "--cell",
        default=os.environ.get("HEAPD_CELL", "default"),
        help="the cell to sample (HEAPD_CELL; default 'default')",
    )
    profile.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="seconds per row (default 0.5)"
    )
    profile.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: until stopped)"
    )
    profile.add_argument(
        "--out", default="-", metavar="FILE", help="the CSV file (default -: standard output)"
    )


def _with_address(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--address",
        default=os.environ.get("HEAPD_ADDRESS", DEFAULT_ADDRESS),
        help="the PLM's HOST:PORT",
    )
    p.add_argument(
        "--cell",
        help="find the token `heapd up` wrote for this cell (HEAPD_CELL; default 'default')",
    )
    p.add_argument(
        "--token-file", help="the cell's token (HEAPD_TOKEN_FILE, or the token in HEAPD_TOKEN)"
    )
    p.add_argument("--tls-ca", help="CA certificate: talk TLS to the PLM (HEAPD_TLS_CA)")
    p.add_argument("--tls-cert", help="client certificate, mutual TLS (HEAPD_TLS_CERT)")
    p.add_argument("--tls-key", help="its private key (HEAPD_TLS_KEY)")
    return p


def client_security(args: argparse.Namespace) -> Security:
    """A command's `Security`: its flags over the environment (`Security.from_env`)."""
    try:
        found = Security.from_env(os.environ, cell=args.cell)
        token = read_token(Path(args.token_file)) if args.token_file else found.token
    except SecurityError as exc:
        print(f"heapd: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return Security(
        token=token,
        tls_ca=args.tls_ca or found.tls_ca,
        tls_cert=args.tls_cert or found.tls_cert,
        tls_key=args.tls_key or found.tls_key,
    )


def up_config(args: argparse.Namespace, env: Mapping[str, str]) -> config.UpConfig:
    """`heapd up`/`heapd down`'s configuration, through the loader every role uses."""
    return config.from_args(config.UpConfig, "up", args, env)


def _cmd_up(args: argparse.Namespace) -> int:
    cfg = up_config(args, os.environ)
    logs.setup("up", cfg.log_level)
    plan = supervisor.CellPlan(
        cell=cfg.cell,
        host=cfg.host,
        port=cfg.plm_port,
        register_port=cfg.register_port,
        workers=cfg.workers,
        slots=cfg.slots,
        worker_resources=cfg.resources,
        worker_labels=cfg.labels,
        capacities=shm.Capacities(
            tasks=cfg.tasks, arena_bytes=cfg.arena_mb << 20, max_blob_bytes=cfg.max_blob_kb << 10
        ),
        log_dir=Path(cfg.log_dir) if cfg.log_dir else None,
        state_dir=config.state_dir(cfg.cell, cfg.state_dir, os.environ),
        durability=cfg.durability,
        # Only the flag is handed down: the roles read the same environment and TOML file.
        log_level=logs.LogLevel(args.log_level) if args.log_level else None,
        config=config.config_path(args, os.environ),
        prefetch_per_slot=args.prefetch_per_slot,
        policy=args.policy,
        aging_s=args.aging_s,
        heartbeat_interval_s=args.heartbeat_interval_s,
        missed_heartbeats=args.missed_heartbeats,
        result_ttl_s=args.result_ttl_s,
        metrics_port=cfg.metrics_port,
        security=up_security(args, cfg),
        socket_dir=up_socket_dir(cfg),
    )
    if problem := plan.metrics_problem() or plan.socket_problem():
        print(f"heapd up: {problem}", file=sys.stderr)
        return 2
    return supervisor.up(plan)


def up_socket_dir(cfg: config.UpConfig) -> Path | None:
    """The cell's socket directory with the unix transport (None with tcp)."""
    if cfg.transport is not config.Transport.UNIX:
        return None
    try:
        return sockets.cell_dir(cfg.cell, os.environ)
    except ValueError as exc:
        print(f"heapd up: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def up_security(args: argparse.Namespace, cfg: config.UpConfig) -> config.SecurityConfig:
    """The token and TLS files every role of the cell gets. Without a token (no --token-file,
    no HEAPD_TOKEN), the cell's own token file in its state directory: made on first use,
    kept across restarts. Refuses (exit 2) TLS files that cannot be read, and a non-loopback
    --host without TLS and a token unless --insecure. `--auth none`: no token at all."""
    sec_cfg = config.from_args(config.SecurityConfig, "security", args, os.environ)
    if cfg.auth is config.Auth.NONE:
        sec_cfg = dataclasses.replace(sec_cfg, token_file="")
        os.environ.pop("HEAPD_TOKEN", None)  # the roles inherit this environment
    elif not sec_cfg.token_file and not os.environ.get("HEAPD_TOKEN"):
        path = config.state_dir(cfg.cell, cfg.state_dir, os.environ) / TOKEN_FILE_NAME
        if not path.exists():
            security.new_token_file(path)
        sec_cfg = dataclasses.replace(sec_cfg, token_file=str(path))
    try:
        role = security.RoleSecurity.from_config(sec_cfg)
        role.check_binding("up", cfg.host)
    except (SecurityError, security.InsecureBinding) as exc:
        print(f"heapd up: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return dataclasses.replace(  # absolute: the roles may run in another directory
        sec_cfg,
        token_file=_absolute(sec_cfg.token_file),
        tls_cert=_absolute(sec_cfg.tls_cert),
        tls_key=_absolute(sec_cfg.tls_key),
        tls_ca=_absolute(sec_cfg.tls_ca),
    )


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path else ""


def _cmd_down(args: argparse.Namespace) -> int:
    return supervisor.down(up_config(args, os.environ).cell, env=os.environ)


def _cmd_submit(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print(
            "heapd submit: give the command after --, e.g. heapd submit -- echo hi", file=sys.stderr
        )
        return 2
    return run.submit(
        args.address,
        argv,
        args.priority,
        args.timeout,
        args.retries,
        args.key,
        args.resources,
        args.labels,
        args.after,
        args.count,
        client_security(args),
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from heapd.runtime.bench import runner  # numpy and friends only when benchmarking

    return runner.main(
        [w.strip().upper() for w in args.workload.split(",") if w.strip()],
        args.repeat,
        args.json,
        config.Durability(args.durability),
        args.recover_tasks,
        args.profile,
        experiment=args.experiment,
        plot_dir=args.plot,
        tasks=args.tasks,
        fuzz_requests=args.n,
        queue_tasks=args.queue_tasks,
        scale_workers=args.scale_workers,
        trace_w2=args.trace,
        transport=config.Transport(args.transport),
    )


def _cmd_profile(args: argparse.Namespace) -> int:
    from heapd.runtime import profile

    return profile.main(args.cell, args.interval, args.out, args.duration)


def _cmd_certs(args: argparse.Namespace) -> int:
    from heapd.runtime import certs  # cryptography only when making certificates

    return certs.run(args.cell, args.out, args.host, args.force)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _cmd_up,
    "down": _cmd_down,
    "submit": _cmd_submit,
    "status": lambda a: show.status(a.address, a.json, client_security(a)),
    "tasks": lambda a: show.tasks(a.address, a.state, a.limit, a.json, client_security(a)),
    "cancel": lambda a: run.cancel(a.address, a.task_id, client_security(a)),
    "fsck": lambda a: show.fsck(
        a.cell, a.repair, config.state_dir(a.cell, a.state_dir or "", os.environ)
    ),
    "bench": _cmd_bench,
    "profile": _cmd_profile,
    "certs": _cmd_certs,
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
