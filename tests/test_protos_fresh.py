"""The committed gRPC stubs match the .proto sources (`make protos` regenerates them)."""

from __future__ import annotations

from pathlib import Path

from protos import generate


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in generate.generate(tmp_path)}
    committed_dir = Path(generate.__file__).parent / "heapd" / "v1"
    committed = {p.name: p.read_text() for p in committed_dir.glob("*_pb2*.py*")}
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `make protos`"
