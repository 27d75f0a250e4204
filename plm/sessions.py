"""Who is waiting for which task: client sessions and their undelivered results.

A client opens one WatchTasks stream per session and submits with that session name; when a
task settles the PLM appends its id to the session's pending list and wakes the stream. A
session without an open stream keeps its pending ids until one attaches (a reconnecting
client), so a result is never dropped for want of a listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Session:
    """One client session: pending settled task ids and the event its stream waits on."""

    name: str
    pending: list[int] = field(default_factory=list)
    streams: int = 0
    owned: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, task_id: int) -> None:
        """Queue a settled task for the stream and wake it."""
        self.pending.append(task_id)
        self.event.set()

    def take(self) -> list[int]:
        """Everything pending, oldest first; the list is emptied."""
        taken, self.pending = self.pending, []
        self.event.clear()
        return taken


class Sessions:
    """Sessions by name and the owner session of each unsettled task."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._owner: dict[int, str] = {}

    def own(self, name: str, task_ids: Iterable[int]) -> None:
        """Route these tasks' results to session `name`."""
        if not name:
            return
        session = self._sessions.setdefault(name, Session(name))
        for task_id in task_ids:
            if task_id not in self._owner:
                self._owner[task_id] = name
                session.owned += 1

    def settle(self, task_id: int) -> Session | None:
        """The session waiting for this task (now queued there), None if nobody is."""
        name = self._owner.pop(task_id, None)
        if name is None:
            return None
        session = self._sessions.setdefault(name, Session(name))
        session.owned -= 1
        session.push(task_id)
        return session

    def attach(self, name: str) -> Session:
        """A stream opens on session `name`."""
        session = self._sessions.setdefault(name, Session(name))
        session.streams += 1
        return session

    def detach(self, session: Session) -> None:
        """A stream closes; an idle session with nothing owned or pending is forgotten."""
        session.streams -= 1
        if session.streams == 0 and not session.pending and session.owned <= 0:
            self._sessions.pop(session.name, None)

    def waiting(self) -> int:
        """How many unsettled tasks have an owner."""
        return len(self._owner)
