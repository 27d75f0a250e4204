"""The boundary rule of the README, checked on the source: in each role, `convert.py` is the only
module that builds or reads protobuf messages, so only the edge modules import `heapd.v1`, and
the roles' domain modules do not import their `convert`.

Every module of the installed `heapd` package (the generated `heapd.v1` aside) is parsed with
`ast`; each import statement counts, wherever it stands (in a function, under TYPE_CHECKING).
Both allow-lists are exact: a module that stops importing what it is listed for fails the test
too, so that the list shrinks with the code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import heapd

# The installed layout: client/ is heapd, worker/ is heapd.worker, protos/heapd/v1 is heapd.v1.
ROOT = Path(heapd.__file__).parent

# Modules that may import heapd.v1, and why.
V1_IMPORTERS = {
    "heapd.convert": "the client's boundary",
    "heapd.plm.convert": "the PLM's boundary",
    "heapd.plm.service": "subclasses the generated TaskService base and registers it",
    "heapd.register.convert": "the register's boundary",
    "heapd.register.service": "subclasses the generated RegisterService base and registers it",
    "heapd.scheduler.convert": "the scheduler's boundary (it serves no service of its own)",
    "heapd.worker.convert": "the worker's boundary",
    "heapd.worker.service": "subclasses the generated WorkerService base and registers it",
    "heapd.runtime.bench.fuzz": "the fuzzer speaks the wire itself: it sends raw messages",
    "heapd.runtime.bench.fuzz_guard": "rewrites fuzzed messages so none can do harm",
    "heapd.runtime.bench.fuzz_requests": "draws messages from the protobuf descriptors",
}

ROLES = ("plm", "register", "scheduler", "worker")

# Modules that may import a role's convert (besides its service), and why.
CONVERT_IMPORTERS = {
    ("heapd.plm.__main__", "heapd.plm.convert"): "wires the PLM's calls to workers",
    ("heapd.plm.pages", "heapd.plm.convert"): (
        "an HTTP edge: /status serves what GetClusterStatus answers, through the same conversion"
    ),
    ("heapd.register.__main__", "heapd.register.convert"): "wires the register's outcome reader",
    ("heapd.scheduler.__main__", "heapd.scheduler.convert"): "wires the dispatcher's streams",
    ("heapd.worker.__main__", "heapd.worker.convert"): "wires the worker's register calls",
    ("heapd.worker.child", "heapd.worker.convert"): (
        "a pool child's edge: specs are decoded and outcomes encoded in the children, off the "
        "daemon's event loop"
    ),
}


def modules() -> Iterator[tuple[str, ast.Module]]:
    """(dotted name, syntax tree) of every heapd module but the generated stubs."""
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] == "v1":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(("heapd", *parts)), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> set[str]:
    """Every module or name an import statement of `tree` names, dotted in full."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_v1(name: str) -> bool:
    return name == "heapd.v1" or name.startswith("heapd.v1.")


def test_the_parser_sees_every_kind_of_import() -> None:
    tree = ast.parse(
        "import heapd.v1.task_pb2\n"
        "from heapd import v1\n"
        "def f():\n"
        "    from heapd.worker import convert\n"
        "    from heapd.scheduler.convert import AssignCall\n"
    )
    names = imported(tree)
    assert {"heapd.v1.task_pb2", "heapd.v1", "heapd.worker.convert"} <= names
    assert "heapd.scheduler.convert" in names
    assert all(is_v1(n) for n in ("heapd.v1", "heapd.v1.task_pb2"))
    assert not is_v1("heapd.v10")


def test_the_walk_finds_the_roles_modules() -> None:
    found = {name for name, _ in modules()}
    for role in ROLES:
        assert {f"heapd.{role}.convert", f"heapd.{role}.daemon"} <= found
    assert "heapd.convert" in found and not any(is_v1(name) for name in found)


def test_only_the_edges_import_the_generated_stubs() -> None:
    importers = {name for name, tree in modules() if any(map(is_v1, imported(tree)))}
    unexpected = sorted(importers - V1_IMPORTERS.keys())
    stale = sorted(V1_IMPORTERS.keys() - importers)
    assert not unexpected, f"import heapd.v1 outside the boundary: {unexpected}"
    assert not stale, f"allowed to import heapd.v1 but no longer do: drop {stale}"


def test_domain_modules_do_not_import_their_roles_convert() -> None:
    conversions = {f"heapd.{role}.convert" for role in ROLES}
    pairs = {
        (name, target)
        for name, tree in modules()
        for target in imported(tree) & conversions
        if name != f"{target.rsplit('.', 1)[0]}.service"
    }
    unexpected = sorted(pairs - CONVERT_IMPORTERS.keys())
    stale = sorted(CONVERT_IMPORTERS.keys() - pairs)
    assert not unexpected, f"domain modules importing a role's convert: {unexpected}"
    assert not stale, f"allowed to import convert but no longer do: drop {stale}"
