"""Who is waiting for which task: client sessions and their undelivered results.

A client opens one WatchTasks stream per session and submits with that session name; when a
task settles the PLM queues its id in the session and wakes the stream. A session without an
open stream keeps its queued ids until one attaches (a reconnecting client) or until the PLM
releases those results (their time to live ran out: see `Plm`), so a result is never dropped for
want of a listener, and a session whose client died is forgotten once nothing is left in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Session:
    """One client session: settled task ids not yet taken and the event its stream waits on."""

    name: str
    queued: dict[int, None] = field(default_factory=dict)  # an ordered set, oldest first
    streams: int = 0
    owned: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def idle(self) -> bool:
        """No stream, nothing owned, nothing queued: nothing to keep it for."""
        return self.streams == 0 and self.owned <= 0 and not self.queued


class Sessions:
    """Sessions by name, the owner session of each unsettled task, and where each settled but
    untaken task is queued."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._owner: dict[int, str] = {}
        self._queued_in: dict[int, Session] = {}
        # Further sessions a result is queued in (rare: adopted by another session before the
        # first took it); each delivers it, and its release forgets it in all.
        self._also_in: dict[int, list[Session]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def streams(self) -> int:
        """Open WatchTasks streams, over every session."""
        return sum(session.streams for session in self._sessions.values())

    def own(self, name: str, task_ids: Iterable[int], *, take_over: bool = False) -> None:
        """Route these tasks' results to session `name`. A task already routed elsewhere keeps
        its session unless `take_over` (a client that asked for it by id or by key since: the
        latest interest wins, as the earlier client has most likely gone)."""
        if not name:
            return
        session = self._sessions.setdefault(name, Session(name))
        for task_id in task_ids:
            previous = self._owner.get(task_id)
            if previous == name or (previous is not None and not take_over):
                continue
            if previous is not None:
                before = self._sessions.get(previous)
                if before is not None:
                    before.owned -= 1
                    self._drop_if_idle(before)
            self._owner[task_id] = name
            session.owned += 1

    def settle(self, task_id: int) -> Session | None:
        """Queue a settled task in the session waiting for it and wake its stream; None if
        nobody is waiting."""
        name = self._owner.pop(task_id, None)
        if name is None:
            return None
        session = self._sessions.setdefault(name, Session(name))
        session.owned -= 1
        if task_id not in session.queued:
            session.queued[task_id] = None
            first = self._queued_in.setdefault(task_id, session)
            if first is not session:  # adopted by a second session before the first took it
                self._also_in.setdefault(task_id, []).append(session)
        session.event.set()
        return session

    def take(self, session: Session) -> list[int]:
        """Everything queued in the session, oldest first; the queue is emptied."""
        taken = list(session.queued)
        session.queued.clear()
        session.event.clear()
        also = self._also_in
        for task_id in taken:
            if not also or task_id not in also:
                self._queued_in.pop(task_id, None)
            else:
                self._unlink(task_id, session)
        return taken

    def _unlink(self, task_id: int, session: Session) -> None:
        """`session` no longer queues `task_id`, which other sessions still do."""
        others = self._also_in[task_id]
        if self._queued_in.get(task_id) is session:
            self._queued_in[task_id] = others.pop()
        elif session in others:
            others.remove(session)
        if not others:
            del self._also_in[task_id]

    def forget(self, task_ids: Iterable[int]) -> None:
        """These results were released: nothing left to deliver (a session idle after this is
        dropped)."""
        for task_id in task_ids:
            session = self._queued_in.pop(task_id, None)
            if session is None:
                continue
            for each in (session, *self._also_in.pop(task_id, ())):
                each.queued.pop(task_id, None)
                self._drop_if_idle(each)

    def attach(self, name: str) -> Session:
        """A stream opens on session `name`."""
        session = self._sessions.setdefault(name, Session(name))
        session.streams += 1
        return session

    def detach(self, session: Session) -> None:
        """A stream closes; an idle session is forgotten."""
        session.streams -= 1
        self._drop_if_idle(session)

    def wake_all(self) -> None:
        """Wake every stream (the PLM is stopping: they end)."""
        for session in self._sessions.values():
            session.event.set()

    def _drop_if_idle(self, session: Session) -> None:
        if session.idle and self._sessions.get(session.name) is session:
            del self._sessions[session.name]
