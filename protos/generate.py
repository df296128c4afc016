"""Regenerate the Python gRPC stubs in lema/v1/ from the .proto files in protos/.

    python protos/generate.py            # rewrite lema/v1/*_pb2*.py(i)
    python protos/generate.py --out DIR  # write elsewhere (the staleness test compares the two)

Needs grpcio-tools (the `dev` extra). protoc writes imports as `from lema.v1 import common_pb2`, which
resolve inside the installed `lema` package because the proto package path mirrors it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "lema" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, imported lazily

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted((out_dir / "lema" / "v1").glob("*_pb2*.py*"))
    init = out_dir / "lema" / "v1" / "__init__.py"
    init.write_text('"""Generated gRPC stubs for lema\'s v1 contracts (do not edit; see protos/generate.py)."""\n')
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root to write lema/v1/ under")
    ns = parser.parse_args()
    files = generate(ns.out)
    print(f"generated {len(files)} files under {ns.out / 'lema' / 'v1'}", file=sys.stderr)


if __name__ == "__main__":
    main()
