"""Regenerate the gRPC stubs from heapd/v1/*.proto: `make protos` (`python protos/generate.py`).

A development tool (it needs grpcio-tools, the `dev` extra), not part of the installed package.
protoc writes the stubs' imports as `from heapd.v1 import x_pb2`, and that is where they are
installed: the folder `protos/heapd/v1/` is the package `heapd.v1` (see pyproject.toml).
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "heapd" / "v1"


def proto_files() -> list[Path]:
    """The .proto sources of the wire contract."""
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc into out_dir (mirroring heapd/v1/); returns the files written."""
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted((out_dir / "heapd" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    for path in generate():
        print(path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
