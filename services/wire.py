"""Generated gRPC code for proto/vigil/v1, built from the .proto files by one build step.

`ensure_generated()` runs grpc_tools.protoc in-process (no shell) into proto/gen when the .proto
files changed since the last build; `python -m services.wire` runs that step alone. Generated
files are never edited or committed.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = Path(os.environ.get("VIGIL_PROTO_GEN_DIR", PROTO_DIR / "gen"))
PROTOS = sorted((PROTO_DIR / "vigil" / "v1").glob("*.proto"))


def _digest() -> str:
    h = hashlib.sha256()
    for p in PROTOS:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def ensure_generated() -> Path:
    stamp = GEN_DIR / ".stamp"
    digest = _digest()
    if stamp.exists() and stamp.read_text() == digest:
        return GEN_DIR
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    GEN_DIR.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=GEN_DIR.parent))
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}", *[str(p.relative_to(PROTO_DIR)) for p in PROTOS]]
    if protoc.main(args) != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"protoc failed on {PROTOS}")
    for pkg in (tmp / "vigil", tmp / "vigil" / "v1"):
        (pkg / "__init__.py").touch()
    (tmp / ".stamp").write_text(digest)
    old = GEN_DIR.with_name(GEN_DIR.name + f".old-{os.getpid()}")
    if GEN_DIR.exists():
        GEN_DIR.rename(old)
    tmp.rename(GEN_DIR)
    shutil.rmtree(old, ignore_errors=True)
    return GEN_DIR


ensure_generated()
if str(GEN_DIR) not in sys.path:
    sys.path.insert(0, str(GEN_DIR))

common_pb2 = importlib.import_module("vigil.v1.common_pb2")
ingest_pb2 = importlib.import_module("vigil.v1.ingest_pb2")
ingest_pb2_grpc = importlib.import_module("vigil.v1.ingest_pb2_grpc")
qa_pb2 = importlib.import_module("vigil.v1.qa_pb2")
qa_pb2_grpc = importlib.import_module("vigil.v1.qa_pb2_grpc")

if __name__ == "__main__":
    print(f"generated {', '.join(p.name for p in PROTOS)} into {GEN_DIR}")
