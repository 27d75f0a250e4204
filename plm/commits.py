"""Group commit: everything handed to the journal while one commit runs goes into the next.

One writer thread owns the journal's connection; the event loop never blocks on SQLite. At
most one commit is in flight: records that arrive meanwhile (from any number of concurrent
submitters, settled tasks, acknowledgements) wait in one pending batch and share the next
transaction and its fsync, so a burst of N submitters costs about two commits, not N.

Submissions are awaited (their submitter is answered only once they are durable); settled
outcomes and forgotten tasks are written in the same order but not awaited. If a commit fails,
its awaiting submitters get the error, and the records nobody awaits go back in front of the
pending batch, to be written with the next commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence

from heapd.plm.journal import Batch, Journal, JournalWriteFailed, Settled, Started, Submitted
from heapd.shm.histogram import SHORT_SECONDS, Histogram

log = logging.getLogger(__name__)


class GroupCommit:
    """The asyncio front of one journal: `submitted` awaits durability, the rest is queued."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "heapd-journal")
        self._pending = Batch()
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0
        self.commit_seconds = Histogram(SHORT_SECONDS)  # one transaction and its fsync

    def start(self) -> asyncio.Task[None]:
        """Start the writer task on the running loop; returns it (a lifeline of the PLM: it
        returns only once closed)."""
        self._writer = asyncio.create_task(self._write_loop(), name="plm-journal")
        return self._writer

    async def submitted(self, records: Sequence[Submitted]) -> None:
        """Record accepted tasks; returns once they are committed (JournalWriteFailed)."""
        if self._closed:
            raise JournalWriteFailed(f"the journal {self.journal.path} is closed", disk_full=False)
        waiter = asyncio.get_running_loop().create_future()
        self._pending.submitted += records
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    async def barrier(self) -> None:
        """Returns once everything handed in so far is committed (JournalWriteFailed)."""
        await self.submitted([])

    def started(self, records: Sequence[Started]) -> None:
        """Record dependents' payloads with their inputs, with the next commit."""
        self._pending.started += records
        self._wake.set()

    def settled(self, records: Sequence[Settled]) -> None:
        """Record terminal outcomes with the next commit."""
        self._pending.settled += records
        self._wake.set()

    def forget(self, task_ids: Sequence[int]) -> None:
        """Delete released tasks (acknowledged or expired) with the next commit."""
        self._pending.forgotten += task_ids
        self._wake.set()

    async def close(self) -> None:
        """Commit what is pending, stop the writer and close the journal (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.journal.close)
        self._executor.shutdown(wait=True)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = _coalesced(self._pending), Batch()
            waiters, self._waiters = self._waiters, []
            failed = False
            if batch:
                began = time.perf_counter()
                try:
                    await loop.run_in_executor(self._executor, self.journal.write, batch)
                except JournalWriteFailed as exc:
                    self._failed(batch, waiters, exc)
                    failed = True
                else:
                    self.commits += 1
                    self.commit_seconds.observe(time.perf_counter() - began)
            if not failed:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            if self._closed and (failed or not self._pending):
                return  # on close, what cannot be written is given up (and logged above)

    def _failed(
        self, batch: Batch, waiters: list[asyncio.Future[None]], exc: JournalWriteFailed
    ) -> None:
        """Submitters learn of the failure; unawaited records are kept for the next commit."""
        log.error("journal write failed", extra={"fields": {"error": str(exc)}})
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        kept = Batch(started=batch.started, settled=batch.settled, forgotten=batch.forgotten)
        kept.extend(self._pending)
        self._pending = kept


def _coalesced(batch: Batch) -> Batch:
    """The batch without outcomes of tasks it also deletes (acknowledged before their outcome
    was written: recording it would only be undone in the same transaction)."""
    if not batch.forgotten or not batch.settled:
        return batch
    gone = set(batch.forgotten)
    batch.settled = [s for s in batch.settled if s.task_id not in gone]
    return batch
