"""Generate the Python protobuf/gRPC code from protos/ (the one reproducible step).

Output lands beside the import path the .proto files declare:
protos/modelfleet/v1/x.proto -> modelfleet/v1/x_pb2.py (+ _pb2_grpc.py, .pyi),
so protoc's absolute imports resolve as they are; nothing is patched.

    python scripts/gen_protos.py           # regenerate
    python scripts/gen_protos.py --check   # fail if the committed code differs
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGES = ["modelfleet/v1", "modelfleet/inference", "modelfleet/store/v1"]


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for pkg in PACKAGES for p in (PROTO_ROOT / pkg).glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for pkg in PACKAGES:
        (out / pkg / "__init__.py").touch()
    return sorted(p.relative_to(out) for pkg in PACKAGES for p in (out / pkg).iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        files = generate(out)
        if args.check:
            stale = [str(f) for f in files if not (ROOT / f).exists() or not filecmp.cmp(out / f, ROOT / f, shallow=False)]
            extra = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).glob("*_pb2*") if p.relative_to(ROOT) not in files]
            if stale or extra:
                print("generated code is out of date; run python scripts/gen_protos.py:", *stale, *extra, file=sys.stderr)
                return 1
            print(f"generated code matches protos/ ({len(files)} files)")
            return 0
        for f in files:
            (ROOT / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / f, ROOT / f)
        print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
