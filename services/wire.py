"""The gRPC code of proto/vigil/v1, made from the .proto files when this module is imported.

`grpc.protos_and_services` compiles the .proto files in memory (grpc_tools; no shell, nothing written to disk,
so an installed wheel works as a checkout does). The .proto files are the only source of the API: a checkout
reads them from `proto/`, an installation from the `vigil_api` package (the same folder, installed as package
data; pyproject.toml).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import grpc


def proto_dir() -> Path:
    """Where the .proto files are: the installed `vigil_api` package, else the checkout's proto/."""
    try:
        import vigil_api

        return Path(vigil_api.__file__).resolve().parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "proto"


PROTO_DIR = proto_dir()
PROTOS = sorted((PROTO_DIR / "vigil" / "v1").glob("*.proto"))
if not PROTOS:
    raise RuntimeError(f"no .proto files under {PROTO_DIR / 'vigil' / 'v1'}: a broken installation")
if str(PROTO_DIR) not in sys.path:
    sys.path.append(str(PROTO_DIR))  # grpc_tools resolves `import "vigil/v1/common.proto"` through sys.path

ingest_pb2, ingest_pb2_grpc = grpc.protos_and_services("vigil/v1/ingest.proto")
qa_pb2, qa_pb2_grpc = grpc.protos_and_services("vigil/v1/qa.proto")
common_pb2 = importlib.import_module("vigil.v1.common_pb2")  # imported by the two above

if __name__ == "__main__":
    print(f"compiled {', '.join(p.name for p in PROTOS)} from {PROTO_DIR}")
