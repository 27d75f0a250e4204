"""What a task asks a worker to run, in plain form: a Python call, a command or a builtin.

`heapd.worker.convert` decodes these from the serialized `heapd.v1.TaskSpec` a job carries;
`heapd.worker.execute` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heapd.worker.outcomes import CommandResult


class BadSpec(Exception):
    """The spec bytes are not a runnable TaskSpec (undecodable, no kind, empty argv).

    Raised in a pool child, where it settles the attempt as BAD_TASK; it never reaches a caller
    over gRPC (the worker stores no spec it could refuse: it runs what the scheduler sends).
    """


@dataclass(frozen=True, slots=True)
class DependencyInput:
    """The result of a dependency that succeeded: a pickled value, or a command's result."""

    task_id: int
    pickled_value: bytes = b""
    command: CommandResult | None = None


@dataclass(frozen=True, slots=True)
class PythonCallSpec:
    """Call `ref` ("pkg.mod:qualname") or the cloudpickled callable, with pickled (args, kwargs)."""

    ref: str = ""
    pickled_callable: bytes = b""
    pickled_args: bytes = b""
    retry_on: tuple[str, ...] = ()  # exception type names worth a retry; empty = any
    inputs: tuple[DependencyInput, ...] = ()  # what stands where the arguments name a task


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """Run argv without a shell; env is added to the worker's environment."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""  # empty = the worker's working directory
    stdin: bytes = b""


@dataclass(frozen=True, slots=True)
class BuiltinSpec:
    """A builtin experiment task by name (see heapd.worker.builtins)."""

    name: str
    params: dict[str, float] = field(default_factory=dict)


TaskSpec = PythonCallSpec | CommandSpec | BuiltinSpec
