"""Python stubs for bandvote.v1.Votes, generated when first needed from the repository's proto.

Nothing generated is committed: `load()` runs grpcio-tools' protoc on proto/proto/bandvote/v1/
votes.proto into a cache folder named by the proto's hash (BANDVOTE_CACHE, default
~/.cache/bandvote) and imports the result.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

PROTO_ROOT = Path(os.environ.get("PROTO_DIR", Path(__file__).resolve().parent.parent / "proto" / "proto"))
PROTO = "bandvote/v1/votes.proto"


def load():
    """Returns (votes_pb2, votes_pb2_grpc)."""
    from grpc_tools import protoc

    source = PROTO_ROOT / PROTO
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("BANDVOTE_CACHE", Path.home() / ".cache" / "bandvote"))
    out = cache / "locust-stubs" / digest
    if not (out / "bandvote" / "v1" / "votes_pb2_grpc.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        code = protoc.main(
            ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", str(source)]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {source}")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return (
        importlib.import_module("bandvote.v1.votes_pb2"),
        importlib.import_module("bandvote.v1.votes_pb2_grpc"),
    )
