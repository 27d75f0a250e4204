"""The cell's journal: an SQLite file (WAL mode) that outlives shared memory and the host.

Why the PLM is its only writer: every record it needs passes through the PLM already —
submissions and cancellations arrive there, every settled task comes back to it on the
completion ring before it is delivered, and acknowledgements come from its clients — so one
process, one connection and one writer thread serve the whole cell with no cross-process
locking on SQLite, and nothing on the scheduler's or a worker's per-task path ever touches it.

What is recorded: every accepted task (before its submitter is answered), every settled outcome,
every cancellation, every idempotency key, and the highest task sequence number ever issued (so
ids are never reused). A task whose result has been acknowledged, or has expired, is deleted:
the file holds what is still owed to somebody, plus the keys. One `write` is one transaction and
one fsync (`synchronous=FULL`) or one write to the OS (`synchronous=NORMAL`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from heapd.errors import HeapdError
from heapd.runtime.config import Durability

SCHEMA_VERSION = 3  # 2: tasks gained `resources` and `labels` (JSON objects); 3: `after`
_MIGRATIONS = {  # from version n to n + 1, applied in one transaction by a writer
    1: (
        "ALTER TABLE tasks ADD COLUMN resources TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE tasks ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
    ),
    2: ("ALTER TABLE tasks ADD COLUMN after TEXT NOT NULL DEFAULT '[]'",),
}
FILE_NAME = "journal.sqlite3"
OPEN = 0  # the state column of a task with no terminal outcome yet
# Compaction: deleted rows leave free pages; once this many are free, they are given back to
# the file system (incremental vacuum), so the file stays near the size of what it holds.
VACUUM_FREE_PAGES = 4096
WAL_LIMIT_BYTES = 64 << 20  # the write-ahead log is truncated to this after a checkpoint

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    priority INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    timeout_ms INTEGER NOT NULL,
    cpus INTEGER NOT NULL,  -- unused since schema 2 (the "cpus" entry of resources)
    payload BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    outcome BLOB,
    finished_at REAL,
    resources TEXT NOT NULL DEFAULT '{}',
    labels TEXT NOT NULL DEFAULT '{}',
    after TEXT NOT NULL DEFAULT '[]'  -- dependencies still awaited (JSON list of ids)
);
CREATE TABLE keys (key TEXT PRIMARY KEY, task_id INTEGER NOT NULL) WITHOUT ROWID;
"""


class JournalError(HeapdError):
    """The journal cannot be used; the message names the file and what to do."""


class JournalRefused(JournalError):
    """The file belongs to another cell or schema, or is damaged: the cell does not start."""


class JournalWriteFailed(JournalError):
    """A write did not reach the journal (disk full, read-only, I/O error); nothing was lost
    that had been acknowledged, and the caller must not acknowledge what it carried."""

    def __init__(self, message: str, *, disk_full: bool) -> None:
        super().__init__(message)
        self.disk_full = disk_full


@dataclass(frozen=True, slots=True)
class Submitted:
    """One accepted task, as recorded before its submitter is answered."""

    task_id: int
    session: str
    submitted_at: float
    priority: int
    max_retries: int
    timeout_ms: int
    payload: bytes
    key: str = ""
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    after: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Started:
    """A dependent whose dependencies succeeded: its payload now carries their results, and it
    waits on nothing (so a rebuilt cell queues it without them)."""

    task_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Settled:
    """A task's terminal state and outcome (None: it has none, e.g. cancelled while queued)."""

    task_id: int
    state: int
    outcome: bytes | None
    finished_at: float


@dataclass(slots=True)
class Batch:
    """Everything one transaction writes."""

    submitted: list[Submitted] = field(default_factory=list)
    started: list[Started] = field(default_factory=list)
    settled: list[Settled] = field(default_factory=list)
    forgotten: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.submitted or self.started or self.settled or self.forgotten)

    def extend(self, other: Batch) -> None:
        """Append another batch's records after this one's."""
        self.submitted += other.submitted
        self.started += other.started
        self.settled += other.settled
        self.forgotten += other.forgotten


@dataclass(frozen=True, slots=True)
class JournaledTask:
    """A task read back from the journal: open (state OPEN) or settled and not yet released."""

    task_id: int
    session: str
    submitted_at: float
    priority: int
    max_retries: int
    timeout_ms: int
    payload: bytes
    state: int
    outcome: bytes | None
    finished_at: float
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    after: tuple[int, ...] = ()


def journal_path(state_dir: Path) -> Path:
    """Where a cell's journal lives inside its state directory."""
    return state_dir / FILE_NAME


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700) if needed; JournalError if it cannot be used."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create the state directory {state_dir}: {exc}") from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise JournalError(
            f"the state directory {state_dir} is not writable: fix its permissions or pass"
            " another --state-dir"
        )


class Journal:
    """One open journal file. Not thread-safe: one thread (the PLM's writer) uses it."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, state_dir: Path, cell: str, durability: Durability) -> Journal:
        """Open (or create) the journal of `cell`; JournalRefused if it is another cell's, of
        another schema version, or damaged."""
        if durability is Durability.NONE:
            raise ValueError("durability 'none' keeps no journal")
        prepare_state_dir(state_dir)
        path = journal_path(state_dir)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        journal = cls(path, conn)
        try:
            journal._configure(durability)
            journal._adopt(cell, migrate=True)
        except BaseException:
            conn.close()
            raise
        return journal

    @classmethod
    def open_existing(cls, state_dir: Path, cell: str) -> Journal | None:
        """Open `cell`'s journal read-only, to inspect it while its PLM may be writing it;
        None if there is none. JournalRefused as `open`."""
        path = journal_path(state_dir)
        if not path.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        journal = cls(path, conn)
        try:
            journal._adopt(cell)
        except BaseException:
            conn.close()
            raise
        return journal

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.close()

    def _configure(self, durability: Durability) -> None:
        sync = "FULL" if durability is Durability.FSYNC else "NORMAL"
        try:
            os.chmod(self.path, 0o600)
            # auto_vacuum takes effect only on a new file, so it comes before anything is written.
            self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={sync}")
            self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        except (sqlite3.Error, OSError) as exc:
            raise self._refused(f"cannot be opened ({exc})") from exc

    def _adopt(self, cell: str, migrate: bool = False) -> None:
        """Create the schema in a new file, or check that an existing one is this cell's (and,
        if `migrate`, bring an older schema up to date; a reader accepts it as it is)."""
        try:
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                self._create(cell)
                return
            meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
            status = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._refused(f"is not a readable heapd journal ({exc})") from exc
        if status != "ok":
            raise self._refused(f"is damaged (SQLite quick_check: {status})")
        if meta.get("cell") == cell and meta.get("schema") in _MIGRATIONS:
            if not migrate:
                return
            self._migrate(int(meta["schema"]))
            meta["schema"] = SCHEMA_VERSION
        if meta.get("schema") != SCHEMA_VERSION:
            raise self._refused(
                f"has schema version {meta.get('schema')!r}, this heapd reads {SCHEMA_VERSION}"
            )
        if meta.get("cell") != cell:
            raise self._refused(f"belongs to cell {meta.get('cell')!r}, not {cell!r}")

    def _create(self, cell: str) -> None:
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.executemany(
                "INSERT INTO meta(name, value) VALUES (?, ?)",
                [("schema", SCHEMA_VERSION), ("cell", cell), ("task_seq", 0)],
            )

    def _migrate(self, version: int) -> None:
        """Apply the migrations from `version` up, in one transaction."""
        try:
            with self._transaction():
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        self._conn.execute(statement)
                self._conn.execute(
                    "UPDATE meta SET value = ? WHERE name = 'schema'", (SCHEMA_VERSION,)
                )
        except sqlite3.Error as exc:
            raise self._refused(f"cannot be upgraded to schema {SCHEMA_VERSION} ({exc})") from exc

    def _refused(self, why: str) -> JournalRefused:
        return JournalRefused(
            f"the journal {self.path} {why}: start the cell with another --state-dir, or move"
            " the file away to start this cell empty (its tasks are then forgotten)"
        )

    # ---- writing

    def write(self, batch: Batch) -> None:
        """Record a batch in one transaction; JournalWriteFailed if it did not commit."""
        try:
            with self._transaction():
                self._write(batch)
            if batch.forgotten:
                self._compact()
        except sqlite3.Error as exc:
            full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()
            what = "the disk is full" if full else str(exc)
            raise JournalWriteFailed(
                f"cannot write the journal {self.path}: {what}", disk_full=full
            ) from exc

    def _write(self, batch: Batch) -> None:
        conn = self._conn
        if batch.submitted:
            conn.executemany(
                "INSERT OR IGNORE INTO tasks(id, session, submitted_at, priority, max_retries,"
                " timeout_ms, cpus, payload, resources, labels, after)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                [
                    (
                        s.task_id,
                        s.session,
                        s.submitted_at,
                        s.priority,
                        s.max_retries,
                        s.timeout_ms,
                        s.payload,
                        json.dumps(s.resources) if s.resources else "{}",
                        json.dumps(s.labels) if s.labels else "{}",
                        json.dumps(list(s.after)) if s.after else "[]",
                    )
                    for s in batch.submitted
                ],
            )
            keyed = [(s.key, s.task_id) for s in batch.submitted if s.key]
            if keyed:
                conn.executemany("INSERT OR IGNORE INTO keys(key, task_id) VALUES (?, ?)", keyed)
            top = max(s.task_id for s in batch.submitted) >> 24
            conn.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'task_seq'", (top,))
        if batch.started:
            conn.executemany(
                "UPDATE tasks SET payload = ?, after = '[]' WHERE id = ?",
                [(s.payload, s.task_id) for s in batch.started],
            )
        if batch.settled:
            conn.executemany(
                "UPDATE tasks SET state = ?, outcome = ?, finished_at = ? WHERE id = ?",
                [(s.state, s.outcome, s.finished_at, s.task_id) for s in batch.settled],
            )
        if batch.forgotten:
            conn.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in batch.forgotten])

    def _compact(self) -> None:
        """Give free pages back once there are many (a transaction of its own, rarely)."""
        (free,) = self._conn.execute("PRAGMA freelist_count").fetchone()
        if free >= VACUUM_FREE_PAGES:
            self._conn.execute("PRAGMA incremental_vacuum")

    # ---- reading

    def task_seq(self) -> int:
        """The highest task sequence number ever issued in this cell."""
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'task_seq'").fetchone()
        return int(row[0])

    def keys(self) -> dict[str, int]:
        """Every idempotency key and the task it named first."""
        return dict(self._conn.execute("SELECT key, task_id FROM keys").fetchall())

    def tasks(self) -> Iterator[JournaledTask]:
        """Every task still recorded, in id order."""
        rows = self._conn.execute(
            "SELECT id, session, submitted_at, priority, max_retries, timeout_ms, payload,"
            " state, outcome, finished_at, resources, labels, after FROM tasks ORDER BY id"
        )
        for tid, session, submitted, prio, retries, timeout, payload, *rest in rows:
            state, outcome, finished, resources, labels, after = rest
            yield JournaledTask(
                tid,
                session,
                submitted,
                prio,
                retries,
                timeout,
                payload,
                state,
                outcome,
                finished or 0.0,
                json.loads(resources) if resources != "{}" else {},
                json.loads(labels) if labels != "{}" else {},
                tuple(json.loads(after)) if after != "[]" else (),
            )

    def open_ids(self) -> list[int]:
        """Ids of the tasks with no terminal outcome recorded."""
        rows = self._conn.execute("SELECT id FROM tasks WHERE state = ? ORDER BY id", (OPEN,))
        return [row[0] for row in rows]

    def count(self) -> int:
        """How many tasks the journal holds."""
        return int(self._conn.execute("SELECT count(*) FROM tasks").fetchone()[0])

    def size_bytes(self) -> int:
        """The journal's size on disk, write-ahead log included."""
        paths = [self.path, Path(f"{self.path}-wal")]
        return sum(p.stat().st_size for p in paths if p.exists())

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the file and truncate it (keeps the WAL bounded)."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK when the body raises."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
