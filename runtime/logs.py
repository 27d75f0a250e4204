"""Structured logs: one JSON object per line on stderr, tagged with the role."""

from __future__ import annotations

import enum
import json
import logging
import sys
import time


class LogLevel(enum.StrEnum):
    """The levels a role logs at (`--log-level`, `HEAPD_LOG_LEVEL`, TOML `log_level`)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"

    @classmethod
    def _missing_(cls, value: object) -> LogLevel | None:
        """Accept any case (`debug`, `Debug`), as environment variables are typed by hand."""
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        return None


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (ts, level, role, logger, msg, and extra fields)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "role": self._role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(role: str, level: str = LogLevel.INFO) -> None:
    """Route the root logger to stderr as JSON lines at `level`; called once by an entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LogLevel(level).value)
