"""Redis store: stream metadata, the stream prefix, and chunks (KV blob, retrieval vector, keyframe).

Keys are hash-tagged by stream so Redis Cluster keeps a stream on one slot:

    {ns}:streams                       sorted set  stream id -> created (unix s)
    {ns}:s:{<id>}:meta                 hash        StreamRecord fields
    {ns}:s:{<id>}:prefix               string      KV blob of the prompt prefix
    {ns}:s:{<id>}:chunks               sorted set  chunk id -> start_s
    {ns}:s:{<id>}:c:<n>                hash        meta (JSON), kv, vec (float32), jpeg

Redis is the one source of truth; the FAISS index is derived from the `vec` fields.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import redis

from encoders.base import EncodedSegment
from memory.codec import decode_segment, encode_segment
from memory.errors import StreamNotFound
from memory.layout import KVLayout

STREAM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass
class StreamRecord:
    stream_id: str
    source: str
    state: str = "starting"
    error: str = ""
    fps: float = 1.0
    clip_frames: int = 8
    model: str = ""
    random_weights: bool = False
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    source_duration_s: float = 0.0
    frames: int = 0
    chunks: int = 0
    media_end_s: float = 0.0
    next_pos: int = 0
    max_pos: int = 0
    bytes: int = 0

    def to_hash(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> "StreamRecord":
        known = {f.name for f in fields(cls)}
        vals = {k.decode(): json.loads(v) for k, v in h.items() if k.decode() in known}
        return cls(**vals)


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: int
    start_s: float
    end_s: float
    frames: int
    tokens: int
    keyframe_s: float
    bytes: int = 0


class MemoryStore:
    def __init__(self, client: redis.Redis, namespace: str, layout: KVLayout, fingerprint: str) -> None:
        self.r = client
        self.ns = namespace
        self.layout = layout
        self.fingerprint = fingerprint

    # ---- keys ----------------------------------------------------------------------------
    def _k(self, sid: str, suffix: str) -> str:
        return f"{self.ns}:s:{{{sid}}}:{suffix}"

    def _chunk_key(self, sid: str, cid: int) -> str:
        return self._k(sid, f"c:{cid}")

    # ---- streams -------------------------------------------------------------------------
    def create_stream(self, rec: StreamRecord) -> None:
        if not STREAM_ID.match(rec.stream_id):
            raise ValueError(f"invalid stream id {rec.stream_id!r}")
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k(rec.stream_id, "meta"), mapping=rec.to_hash())
        pipe.zadd(f"{self.ns}:streams", {rec.stream_id: rec.created})
        pipe.execute()

    def update_stream(self, sid: str, **changes) -> None:
        changes["updated"] = time.time()
        self.r.hset(self._k(sid, "meta"), mapping={k: json.dumps(v) for k, v in changes.items()})

    def get_stream(self, sid: str) -> StreamRecord:
        h = self.r.hgetall(self._k(sid, "meta")) if STREAM_ID.match(sid or "") else {}
        if not h:
            raise StreamNotFound(f"no stream with id {sid!r}")
        return StreamRecord.from_hash(h)

    def list_streams(self) -> list[StreamRecord]:
        ids = [i.decode() for i in self.r.zrange(f"{self.ns}:streams", 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self._k(sid, "meta"))
        return [StreamRecord.from_hash(h) for h in pipe.execute() if h]

    # ---- memory --------------------------------------------------------------------------
    def put_prefix(self, sid: str, seg: EncodedSegment) -> None:
        blob = encode_segment(seg, self.layout, self.fingerprint)
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._k(sid, "prefix"), blob)
        pipe.hset(self._k(sid, "meta"), mapping={
            "next_pos": json.dumps(seg.next_pos), "max_pos": json.dumps(seg.max_pos),
            "bytes": json.dumps(len(blob)),
        })
        pipe.execute()

    def get_prefix(self, sid: str) -> EncodedSegment:
        blob = self.r.get(self._k(sid, "prefix"))
        if blob is None:
            raise StreamNotFound(f"stream {sid!r} has no stored memory yet")
        return decode_segment(blob, self.layout, self.fingerprint)

    def put_chunk(self, sid: str, chunk: ChunkRecord, seg: EncodedSegment, vec: np.ndarray,
                  keyframe_jpeg: bytes, frames_total: int) -> int:
        """Store one chunk and advance the stream's counters in one transaction. Returns its bytes."""
        blob = encode_segment(seg, self.layout, self.fingerprint)
        vec_bytes = np.asarray(vec, dtype=np.float32).tobytes()
        size = len(blob) + len(vec_bytes) + len(keyframe_jpeg)
        meta = json.dumps(asdict(ChunkRecord(**{**asdict(chunk), "bytes": size})))
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._chunk_key(sid, chunk.chunk_id),
                  mapping={"meta": meta, "kv": blob, "vec": vec_bytes, "jpeg": keyframe_jpeg})
        pipe.zadd(self._k(sid, "chunks"), {str(chunk.chunk_id): chunk.start_s})
        pipe.hincrby(self._k(sid, "meta"), "bytes", size)
        pipe.hset(self._k(sid, "meta"), mapping={
            "chunks": json.dumps(chunk.chunk_id + 1), "frames": json.dumps(frames_total),
            "media_end_s": json.dumps(chunk.end_s), "next_pos": json.dumps(seg.next_pos),
            "max_pos": json.dumps(seg.max_pos), "updated": json.dumps(time.time()),
        })
        pipe.execute()
        return size

    def chunk_ids(self, sid: str, after: int = -1) -> list[int]:
        ids = sorted(int(i) for i in self.r.zrange(self._k(sid, "chunks"), 0, -1))
        return [i for i in ids if i > after]

    def chunk_index_rows(self, sid: str, ids: list[int]) -> list[tuple[ChunkRecord, np.ndarray]]:
        """(record, retrieval vector) for each id, for building the search index."""
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hmget(self._chunk_key(sid, cid), ["meta", "vec"])
        rows = []
        for meta, vec in pipe.execute():
            if meta is None:
                continue
            rows.append((ChunkRecord(**json.loads(meta)), np.frombuffer(vec, dtype=np.float32)))
        return rows

    def chunk_segments(self, sid: str, ids: list[int]) -> list[EncodedSegment]:
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hget(self._chunk_key(sid, cid), "kv")
        blobs = pipe.execute()
        missing = [cid for cid, b in zip(ids, blobs) if b is None]
        if missing:
            raise StreamNotFound(f"stream {sid!r} lost chunks {missing}")
        return [decode_segment(b, self.layout, self.fingerprint) for b in blobs]

    def keyframes(self, sid: str, ids: list[int]) -> list[bytes]:
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hget(self._chunk_key(sid, cid), "jpeg")
        return [b or b"" for b in pipe.execute()]
