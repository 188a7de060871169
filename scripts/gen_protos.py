"""Generate Python code for protocol/proto/edgehub/v1/*.proto into protocol/src/edgehub/protocol/v1.

Uses grpcio-tools' bundled protoc so the output matches the pinned protobuf runtime, then rewrites
the generated absolute imports (``edgehub.v1``) to the package they live in (``edgehub.protocol.v1``).
Run through ``make gen-protos``; a test regenerates into a temp folder and compares.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protocol" / "proto"
OUT_PKG = Path("edgehub") / "protocol" / "v1"


def generate(out_root: Path) -> list[Path]:
    """Generate into ``out_root/edgehub/protocol/v1`` and return the files written."""
    protos = sorted((PROTO_ROOT / "edgehub" / "v1").glob("*.proto"))
    tmp = out_root / "_gen"
    tmp.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    # the mypy-protobuf plugin sits next to the interpreter: pass it explicitly so PATH does not matter
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={tmp}",
        f"--mypy_out={tmp}",
        f"--grpc_python_out={tmp}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    dest = out_root / OUT_PKG
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted((tmp / "edgehub" / "v1").iterdir()):
        # only import statements: the serialized descriptor must keep the proto package name
        text = re.sub(r"(?m)^(from|import) edgehub\.v1\b", r"\1 edgehub.protocol.v1", src.read_text())
        if src.name.endswith("_grpc.py") and "add_" not in text and "Stub" not in text:
            continue  # messages-only file: grpc stub module would be empty
        target = dest / src.name
        target.write_text(text)
        written.append(target)
    init = dest / "__init__.py"
    init.write_text('"""Generated protobuf modules for edgehub.v1 (do not edit; run `make gen-protos`)."""\n')
    written.append(init)
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    tmp.rmdir()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "protocol" / "src")
    ns = parser.parse_args()
    for path in generate(ns.out):
        print(path.relative_to(ns.out), file=sys.stderr)


if __name__ == "__main__":
    main()
