"""Generate the Python gRPC stubs from ``proto/`` (``make proto``), or check they are current.

The stubs are committed under ``libs/common/src/fedprompt/v1``; ``--check`` regenerates them
into a temporary folder and fails when any committed file differs, so CI catches stale stubs.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("fedprompt") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc (with the mypy-protobuf plugins) over every ``.proto`` file.

    Parameters
    ----------
    out_root
        Folder that receives ``fedprompt/v1/*_pb2*.py{,i}``.

    Returns
    -------
    list[Path]
        The generated files, relative to ``out_root``.
    """
    protos = sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p) for p in protos],
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return sorted(
        p.relative_to(out_root) for p in (out_root / PACKAGE_DIR).iterdir() if "_pb2" in p.name
    )


def main(argv: list[str] | None = None) -> int:
    """Generate or check the stubs; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="source root of the shared library")
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args(argv)
    out_root: Path = args.out if args.out.is_absolute() else ROOT / args.out
    if not args.check:
        (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
        for old in (out_root / PACKAGE_DIR).glob("*_pb2*"):
            old.unlink()
        for path in generate(out_root):
            print(f"generated {out_root / path}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        (tmp_root / PACKAGE_DIR).mkdir(parents=True)
        fresh = generate(tmp_root)
        committed = sorted(
            p.relative_to(out_root) for p in (out_root / PACKAGE_DIR).glob("*_pb2*") if p.is_file()
        )
        stale = [str(p) for p in fresh if not (out_root / p).exists()]
        stale += [str(p) for p in committed if p not in fresh]
        stale += [
            str(p)
            for p in fresh
            if (out_root / p).exists()
            and not filecmp.cmp(tmp_root / p, out_root / p, shallow=False)
        ]
        if stale:
            print("stale generated stubs (run `make proto`):", *stale, sep="\n  ", file=sys.stderr)
            return 1
    print("generated stubs are current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
