"""The client's public surface is explicit and pinned, both ways; `import heapd` stays light."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import inspect
import subprocess
import sys
import types

import heapd

EXPECTED = {
    "AsyncClient",
    "AsyncTaskFuture",
    "BadResult",
    "BadTask",
    "Client",
    "ClientClosed",
    "ClusterStatus",
    "CommandResult",
    "DependencyFailed",
    "HeapdError",
    "InvalidArgument",
    "NotFound",
    "RemoteError",
    "ResourceExhausted",
    "RpcFailed",
    "Security",
    "TaskCancelled",
    "TaskCrashed",
    "TaskFailed",
    "TaskFuture",
    "TaskLost",
    "TaskStatus",
    "TaskTimeout",
    "Unauthenticated",
    "Unavailable",
    "WorkerLost",
    "WorkerStatus",
}

# What `import heapd` must not load: the shared-memory side and the daemons' gRPC services.
HEAVY = ("numpy", "posix_ipc", "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection")


def test_all_lists_exactly_the_expected_names() -> None:
    assert sorted(heapd.__all__) == sorted(EXPECTED)
    assert len(heapd.__all__) == len(set(heapd.__all__)), "no name listed twice"


def test_everything_listed_exists_and_is_a_class() -> None:
    for name in heapd.__all__:
        value = getattr(heapd, name)
        assert isinstance(value, type), f"heapd.{name} is {value!r}"
        assert value.__name__ == name


def test_every_public_name_of_the_namespace_is_listed() -> None:
    public = {
        name
        for name, value in vars(heapd).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == EXPECTED


def test_version_is_the_installed_one() -> None:
    assert heapd.__version__ == importlib.metadata.version("heapd")


def test_cli_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "heapd", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"heapd {heapd.__version__}"


def test_import_heapd_stays_light() -> None:
    code = "import heapd, sys; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    assert "heapd.client" in loaded, "the probe ran"
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))
    assert not any(name == "heapd.shm" or name.startswith("heapd.shm.") for name in loaded)


def test_both_clients_have_the_same_surface() -> None:
    """Same public methods with the same parameters (names, kinds, defaults); the sync one
    blocks where the async one is awaited."""
    sync, aio = _public_methods(heapd.Client), _public_methods(heapd.AsyncClient)
    assert set(sync) == set(aio)
    assert {
        "submit",
        "submit_command",
        "submit_builtin",
        "map",
        "gather",
        "as_completed",
        "cancel",
        "get_task",
        "list_tasks",
        "cluster_status",
        "close",
    } <= set(sync)
    for name in sync:
        assert _parameters(sync[name]) == _parameters(aio[name]), name
    assert _parameters(heapd.Client.__init__) == _parameters(heapd.AsyncClient.__init__)
    blocking = {"as_completed"}  # an iterator in both
    for name in set(aio) - blocking:
        assert inspect.iscoroutinefunction(aio[name]), f"AsyncClient.{name} is awaited"
    assert hasattr(heapd.Client, "__enter__") and hasattr(heapd.Client, "__exit__")
    assert hasattr(heapd.AsyncClient, "__aenter__") and hasattr(heapd.AsyncClient, "__aexit__")
    for prop in ("address", "session"):
        assert isinstance(getattr(heapd.Client, prop), property)
        assert isinstance(getattr(heapd.AsyncClient, prop), property)


def test_every_submit_takes_resources_and_labels() -> None:
    """`cpus` (None: no need), `resources` and `labels` are keyword-only options of every way
    to submit, on both clients."""
    for cls in (heapd.Client, heapd.AsyncClient):
        for name in ("submit", "submit_command", "submit_builtin", "map"):
            params = {p.name: p for p in inspect.signature(getattr(cls, name)).parameters.values()}
            for option in ("cpus", "resources", "labels"):
                assert params[option].kind is inspect.Parameter.KEYWORD_ONLY, (cls, name, option)
                assert params[option].default is None, (cls, name, option)


def test_future_is_a_concurrent_future() -> None:
    assert issubclass(heapd.TaskFuture, concurrent.futures.Future)
    assert issubclass(heapd.TaskCancelled, concurrent.futures.CancelledError)
    assert issubclass(heapd.ClientClosed, heapd.HeapdError)


def _public_methods(cls: type) -> dict[str, object]:
    return {
        name: value
        for name, value in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }


def _parameters(fn: object) -> list[tuple[str, object, object]]:
    signature = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]
