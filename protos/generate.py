"""Regenerate the gRPC stubs from heapd/v1/*.proto: `python -m protos.generate`.

protoc writes imports as `from heapd.v1 import x_pb2`; they are rewritten to
`from protos.heapd.v1 import x_pb2` so the stubs live inside the `protos` package
instead of needing a second top-level name on sys.path.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "heapd" / "v1"
_IMPORT = re.compile(r"^from heapd\.v1 import", re.MULTILINE)


def proto_files() -> list[Path]:
    """The .proto sources of the wire contract."""
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc into out_dir (mirroring heapd/v1/) and fix the imports; returns files written."""
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
    written = sorted((out_dir / "heapd" / "v1").glob("*_pb2*.py*"))
    for path in written:
        path.write_text(_IMPORT.sub("from protos.heapd.v1 import", path.read_text()))
    return written


def main() -> int:
    for path in generate():
        print(path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
