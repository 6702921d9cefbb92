"""Redis store: stream metadata, the stream prefix, and chunks (KV blob, retrieval vector, keyframe).

Keys are hash-tagged by stream so Redis Cluster keeps a stream on one slot:

    {ns}:streams                       sorted set  stream id -> created (unix s)
    {ns}:s:{<id>}:meta                 hash        StreamRecord fields, JSON each (`memory`: one object)
    {ns}:s:{<id>}:prefix               string      KV blob of the prompt prefix
    {ns}:s:{<id>}:chunks               sorted set  chunk id -> start_s
    {ns}:s:{<id>}:c:<n>                hash        meta (JSON), kv (chunk blob: KV or features), vec (mean key, float32),
                                                   keys (representative keys, .npy float16 [C, m, D]), jpeg,
                                                   d:<signal> (frame-index vectors, .npy float32 [n, d]: d:ocr,
                                                   d:labels, d:image; n > 1 once retention merged chunks)
    {ns}:s:{<id>}:wm                   string      working memory blob (written with each chunk)
    {ns}:s:{<id>}:ckpt                 hash        json (where ingest resumes), detector (bytes)
    {ns}:s:{<id>}:gaps                 list        JSON gaps, oldest first
    {ns}:s:{<id>}:events               stream      state changes, progress, gaps (capped), for WatchStream
    {ns}:s:{<id>}:lease                string      the ingest worker that owns the stream (expires)

Redis is the one source of truth; the search indexes (`memory.index`) are derived from the `vec`, `keys`
and `d:*` fields.
"""
from __future__ import annotations

import io
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import redis

from encoders.base import EncodedSegment
from encoders.retrieval import BlockKeys
from memory.codec import (decode_chunk, decode_segment, decode_tokens, encode_features, encode_segment,
                          encode_tokens)
from memory.errors import ChunksGone, StreamNotFound
from memory.layout import FeatureSet, KVLayout, TokenSet
from memory.options import MemoryOptions, option_names
from memory.multivec import merged_keys
from memory.retention import Chunk, Retention, merge_features, merge_tokens, merge_vectors, plan
from memory.working import WorkingState

STREAM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ACTIVE = ("starting", "running", "reconnecting")  # states an ingest worker owns
EVENTS_MAXLEN = 1000
DENSE_SIGNALS = ("ocr", "labels", "image")  # frame-index vectors a chunk may carry (`d:<signal>` fields)

# compare-and-act on the lease, so a worker never renews or drops a lease another one took
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


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
    kind: str = "file"  # file | live | push
    live: bool = False  # drops frames when behind instead of pacing the source
    dropped: int = 0
    reconnects: int = 0
    lag_s: float = 0.0
    scene_cuts: int = 0
    # memory options, chosen at start (server defaults + the request's overrides) and kept for the stream's
    # life, so a resumed stream keeps them whatever the adopting server's settings; one JSON hash field
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    frames_fingerprint: str = ""  # the frame describer's models (encoders.describe) behind the d:* vectors
    # memory accounting
    chunk_bytes: int = 0  # bytes of the chunks stored now
    chunk_bytes_written: int = 0  # bytes of every chunk ever stored (retention does not lower it)
    working_bytes: int = 0  # the working memory blob
    working_used: int = 0  # tokens per layer in the working memory
    consolidated: int = 0  # merges done by retention
    deleted: int = 0  # chunks deleted by retention
    epoch: int = 0  # bumped when retention rewrites chunks (search indexes rebuild)

    def to_hash(self) -> dict[str, str]:
        h = {f.name: json.dumps(getattr(self, f.name)) for f in fields(self) if f.name != "memory"}
        h["memory"] = self.memory.to_json()
        return h

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> "StreamRecord":
        raw = {k.decode(): v for k, v in h.items()}
        known = {f.name for f in fields(cls)} - {"memory"}
        vals = {k: json.loads(v) for k, v in raw.items() if k in known}
        if "memory" in raw:
            memory = MemoryOptions.from_json(raw["memory"])
        else:  # written before the options were one field: flat fields, the scoring ones possibly missing
            flat = set(option_names())
            memory = MemoryOptions.from_dict({k: json.loads(v) for k, v in raw.items() if k in flat})
        return cls(**vals, memory=memory)


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: int
    start_s: float
    end_s: float
    frames: int
    tokens: int
    keyframe_s: float
    bytes: int = 0
    wall_start: float | None = None  # unix time the first frame was received (live sources)
    wall_end: float | None = None
    cuts: int = 0  # scene cuts starting inside this chunk
    novelty: float = 0.0  # the keyframe's novelty score
    redundant: int = 0  # near-duplicate frames (a compressor may spend less on them)
    static: float = 0.0  # mean fraction of static patches
    span_start: int = 0  # serials of the clip tokens this chunk was compressed from: [span_start, span_end)
    span_end: int = 0
    level: int = 0  # 0: one clip; n: merged n times by retention
    format: str = "kv"  # kv | kv-int8 | features
    text: str = ""  # text read on screen (OCR), lines joined with " | "
    labels: str = ""  # top image labels of the keyframe, "name (p), ..."


@dataclass(frozen=True)
class IndexRow:
    """What the search index keeps of one chunk."""
    record: ChunkRecord
    mean: np.ndarray  # [E] float32 unit mean key (the baseline)
    keys: np.ndarray | None  # [C, m, D] float16 representative keys (None: a chunk stored before they existed)
    dense: dict[str, np.ndarray]  # frame-index signal -> [n, d] float32 unit vectors (n > 1: merged chunks)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


class MemoryStore:
    def __init__(self, client: redis.Redis, namespace: str, layout: KVLayout, fingerprint: str) -> None:
        self.r = client
        self.ns = namespace
        self.layout = layout
        self.fingerprint = fingerprint
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

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

    def set_state(self, sid: str, state: str, error: str | None = None, **changes) -> None:
        """Change the state (and the error text when given) and publish the change to watchers."""
        raw = self.r.hget(self._k(sid, "meta"), "state")
        previous = json.loads(raw) if raw else ""
        changes["state"] = state
        if error is not None:
            changes["error"] = error
        changes["updated"] = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k(sid, "meta"), mapping={k: json.dumps(v) for k, v in changes.items()})
        if previous != state:
            self._event(pipe, sid, "state", previous=previous, state=state, message=error or "")
        pipe.execute()

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

    def encode_payload(self, payload: TokenSet | FeatureSet, int8: bool) -> bytes:
        if isinstance(payload, FeatureSet):
            return encode_features(payload, self.layout, self.fingerprint)
        return encode_tokens(payload, self.layout, self.fingerprint, int8=int8)

    def put_chunk(self, sid: str, chunk: ChunkRecord, payload: TokenSet | FeatureSet, keys: BlockKeys,
                  keyframe_jpeg: bytes, frames_total: int, *, dense: dict[str, np.ndarray] | None = None,
                  working: WorkingState | None = None, int8: bool = False, checkpoint: dict | None = None,
                  detector_state: bytes = b"", progress: dict | None = None) -> int:
        """Store one chunk (payload, retrieval keys, frame-index vectors `dense`, keyframe) and the working
        memory after it, advance the stream's counters and move its resume checkpoint, in one transaction (a
        crash leaves either all of it or none). Returns the chunk's bytes."""
        blob = self.encode_payload(payload, int8)
        vec_bytes = np.asarray(keys.mean, dtype=np.float32).tobytes()
        extra = {"keys": _npy(keys.tokens.astype(np.float16))}
        for name, v in (dense or {}).items():
            if name not in DENSE_SIGNALS:
                raise ValueError(f"unknown frame-index signal {name!r}; one of {DENSE_SIGNALS}")
            extra[f"d:{name}"] = _npy(np.asarray(v, dtype=np.float32).reshape(-1, np.shape(v)[-1]))
        size = len(blob) + len(vec_bytes) + len(keyframe_jpeg) + sum(len(b) for b in extra.values())
        fmt = "features" if isinstance(payload, FeatureSet) else ("kv-int8" if int8 else "kv")
        meta = json.dumps(asdict(ChunkRecord(**{**asdict(chunk), "bytes": size, "format": fmt})))
        wm_blob = b""
        if working is not None:
            wm_blob = encode_tokens(working.tokens, self.layout, self.fingerprint, kind="working",
                                    next_pos=working.next_pos, max_pos=working.max_pos,
                                    next_serial=working.next_serial, next_frame=working.next_frame)
        old_wm = json.loads(self.r.hget(self._k(sid, "meta"), "working_bytes") or b"0")  # one writer per stream
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._chunk_key(sid, chunk.chunk_id),
                  mapping={"meta": meta, "kv": blob, "vec": vec_bytes, "jpeg": keyframe_jpeg, **extra})
        pipe.zadd(self._k(sid, "chunks"), {str(chunk.chunk_id): chunk.start_s})
        pipe.hincrby(self._k(sid, "meta"), "bytes", size + (len(wm_blob) - old_wm if working is not None else 0))
        pipe.hincrby(self._k(sid, "meta"), "chunk_bytes", size)
        pipe.hincrby(self._k(sid, "meta"), "chunk_bytes_written", size)
        fields = {
            "chunks": json.dumps(chunk.chunk_id + 1), "frames": json.dumps(frames_total),
            "media_end_s": json.dumps(chunk.end_s), "updated": json.dumps(time.time()),
            **{k: json.dumps(v) for k, v in (progress or {}).items()},
        }
        if working is not None:
            pipe.set(self._k(sid, "wm"), wm_blob)
            fields.update(next_pos=json.dumps(working.next_pos), max_pos=json.dumps(working.max_pos),
                          working_bytes=json.dumps(len(wm_blob)), working_used=json.dumps(working.tokens.length))
        pipe.hset(self._k(sid, "meta"), mapping=fields)
        if chunk.cuts:
            pipe.hincrby(self._k(sid, "meta"), "scene_cuts", chunk.cuts)
        if checkpoint is not None:
            pipe.hset(self._k(sid, "ckpt"), mapping={"json": json.dumps(checkpoint), "detector": detector_state})
        self._event(pipe, sid, "progress", chunk=chunk.chunk_id)
        pipe.execute()
        return size

    def get_working(self, sid: str) -> WorkingState | None:
        """The working memory stored with the newest chunk (None before the first chunk)."""
        blob = self.r.get(self._k(sid, "wm"))
        if blob is None:
            return None
        tokens, meta = decode_tokens(blob, self.layout, self.fingerprint)
        return WorkingState(tokens, int(meta["next_pos"]), int(meta["max_pos"]), int(meta["next_serial"]),
                            int(meta["next_frame"]))

    # ---- retention -----------------------------------------------------------------------
    def enforce_retention(self, sid: str, limits: Retention) -> int:
        """Delete and consolidate the stream's oldest chunks until it is under `limits`. Only the
        stream's ingest worker calls this. Returns the number of actions taken."""
        if not limits.limited:
            return 0
        rec = self.get_stream(sid)
        rows = self.chunk_records(sid)
        actions = plan([Chunk(r.chunk_id, r.end_s, r.bytes, r.level) for r in rows], rec.media_end_s, limits)
        by_id = {r.chunk_id: r for r in rows}
        for act in actions:
            if act.kind == "delete":
                self._delete_chunks(sid, [by_id[i] for i in act.ids])
            else:
                by_id[act.ids[0]] = self._merge_chunks(sid, [by_id[i] for i in act.ids])
        return len(actions)

    def chunk_records(self, sid: str) -> list[ChunkRecord]:
        pipe = self.r.pipeline(transaction=False)
        for cid in self.chunk_ids(sid):
            pipe.hget(self._chunk_key(sid, cid), "meta")
        return [ChunkRecord(**json.loads(m)) for m in pipe.execute() if m is not None]

    def _delete_chunks(self, sid: str, recs: list[ChunkRecord]) -> None:
        size = sum(r.bytes for r in recs)
        pipe = self.r.pipeline(transaction=True)
        for r in recs:
            pipe.delete(self._chunk_key(sid, r.chunk_id))
            pipe.zrem(self._k(sid, "chunks"), str(r.chunk_id))
        pipe.hincrby(self._k(sid, "meta"), "bytes", -size)
        pipe.hincrby(self._k(sid, "meta"), "chunk_bytes", -size)
        pipe.hincrby(self._k(sid, "meta"), "deleted", len(recs))
        pipe.hincrby(self._k(sid, "meta"), "epoch", 1)
        self._event(pipe, sid, "retention", message=f"deleted chunks {[r.chunk_id for r in recs]}")
        pipe.execute()

    def _merge_chunks(self, sid: str, recs: list[ChunkRecord]) -> ChunkRecord:
        ids = [r.chunk_id for r in recs]
        pipe = self.r.pipeline(transaction=False)
        names = ["kv", "vec", "jpeg", "keys"] + [f"d:{n}" for n in DENSE_SIGNALS]
        for cid in ids:
            pipe.hmget(self._chunk_key(sid, cid), names)
        got = pipe.execute()
        payloads = [decode_chunk(g[0], self.layout, self.fingerprint)[0] for g in got]
        first = payloads[0]
        int8 = recs[0].format == "kv-int8"
        if isinstance(first, FeatureSet):
            merged = merge_features(payloads, first.length)
        else:
            merged = merge_tokens(payloads, first.length)
        blob = self.encode_payload(merged, int8)
        vec = merge_vectors([np.frombuffer(g[1], dtype=np.float32) for g in got]).tobytes()
        key = max(range(len(recs)), key=lambda i: recs[i].novelty)
        jpeg_bytes = got[key][2] or b""
        extra = {}
        if any(g[3] is not None for g in got):  # parts stored before keys existed contribute none
            extra["keys"] = _npy(merged_keys([_from_npy(g[3]) for g in got if g[3] is not None]))
        for j, name in enumerate(DENSE_SIGNALS):  # every part's vectors of a signal are kept (each can match)
            vs = [_from_npy(g[4 + j]) for g in got if g[4 + j] is not None]
            if vs:
                extra[f"d:{name}"] = _npy(np.concatenate(vs))
        size = len(blob) + len(vec) + len(jpeg_bytes) + sum(len(b) for b in extra.values())
        texts = list(dict.fromkeys(t for r in recs for t in r.text.split(" | ") if t))
        rec = ChunkRecord(
            chunk_id=ids[0], start_s=recs[0].start_s, end_s=recs[-1].end_s, frames=sum(r.frames for r in recs),
            tokens=merged.length, keyframe_s=recs[key].keyframe_s, bytes=size, wall_start=recs[0].wall_start,
            wall_end=recs[-1].wall_end, cuts=sum(r.cuts for r in recs), novelty=recs[key].novelty,
            redundant=sum(r.redundant for r in recs), static=round(sum(r.static for r in recs) / len(recs), 4),
            span_start=recs[0].span_start, span_end=recs[-1].span_end, level=max(r.level for r in recs) + 1,
            format=recs[0].format, text=" | ".join(texts),
            labels=", ".join(dict.fromkeys(x for r in recs for x in r.labels.split(", ") if x)),  # as d:labels
        )
        old = sum(r.bytes for r in recs)
        pipe = self.r.pipeline(transaction=True)
        for cid in ids:
            pipe.delete(self._chunk_key(sid, cid))
        for cid in ids[1:]:
            pipe.zrem(self._k(sid, "chunks"), str(cid))
        pipe.hset(self._chunk_key(sid, ids[0]),
                  mapping={"meta": json.dumps(asdict(rec)), "kv": blob, "vec": vec, "jpeg": jpeg_bytes, **extra})
        pipe.hincrby(self._k(sid, "meta"), "bytes", size - old)
        pipe.hincrby(self._k(sid, "meta"), "chunk_bytes", size - old)
        pipe.hincrby(self._k(sid, "meta"), "consolidated", 1)
        pipe.hincrby(self._k(sid, "meta"), "epoch", 1)
        self._event(pipe, sid, "retention", message=f"merged chunks {ids} into level {rec.level}")
        pipe.execute()
        return rec

    def checkpoint(self, sid: str) -> tuple[dict, bytes] | None:
        """(checkpoint, detector state) written with the last stored chunk, or None before the first."""
        h = self.r.hgetall(self._k(sid, "ckpt"))
        return (json.loads(h[b"json"]), h.get(b"detector", b"")) if h else None

    # ---- gaps and events -----------------------------------------------------------------
    def add_gap(self, sid: str, gap: dict) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(self._k(sid, "gaps"), json.dumps(gap))
        self._event(pipe, sid, "gap", gap=json.dumps(gap))
        pipe.execute()

    def gaps(self, sid: str, last: int = 0) -> list[dict]:
        """Gaps oldest first; `last` > 0 returns only the newest `last`."""
        raw = self.r.lrange(self._k(sid, "gaps"), -last if last else 0, -1)
        return [json.loads(g) for g in raw]

    def event(self, sid: str, kind: str, **fields) -> None:
        pipe = self.r.pipeline(transaction=False)
        self._event(pipe, sid, kind, **fields)
        pipe.execute()

    def _event(self, pipe, sid: str, kind: str, **fields) -> None:
        body = {"kind": kind, "time": json.dumps(time.time()), **{k: str(v) for k, v in fields.items()}}
        pipe.xadd(self._k(sid, "events"), body, maxlen=EVENTS_MAXLEN, approximate=True)

    def last_event_id(self, sid: str) -> str:
        last = self.r.xrevrange(self._k(sid, "events"), count=1)
        return last[0][0].decode() if last else "0-0"

    def read_events(self, sid: str, after_id: str, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        """Events after `after_id`, waiting up to `block_ms` for the first one (None: do not wait)."""
        got = self.r.xread({self._k(sid, "events"): after_id}, block=block_ms, count=100)
        if not got:
            return []
        return [(eid.decode(), {k.decode(): v.decode() for k, v in body.items()}) for eid, body in got[0][1]]

    # ---- ownership -----------------------------------------------------------------------
    def claim(self, sid: str, owner: str, ttl_ms: int) -> bool:
        return bool(self.r.set(self._k(sid, "lease"), owner, nx=True, px=ttl_ms))

    def renew(self, sid: str, owner: str, ttl_ms: int) -> bool:
        return bool(self._renew(keys=[self._k(sid, "lease")], args=[owner, ttl_ms]))

    def release(self, sid: str, owner: str) -> None:
        self._release(keys=[self._k(sid, "lease")], args=[owner])

    def epoch(self, sid: str) -> int:
        """Changes whenever retention deletes or rewrites chunks."""
        return int(json.loads(self.r.hget(self._k(sid, "meta"), "epoch") or b"0"))

    def chunk_ids(self, sid: str, after: int = -1) -> list[int]:
        ids = sorted(int(i) for i in self.r.zrange(self._k(sid, "chunks"), 0, -1))
        return [i for i in ids if i > after]

    def chunk_index_rows(self, sid: str, ids: list[int]) -> list[IndexRow]:
        """What the search index keeps of each id (ids gone meanwhile are skipped)."""
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hmget(self._chunk_key(sid, cid), ["meta", "vec", "keys"] + [f"d:{n}" for n in DENSE_SIGNALS])
        rows = []
        for meta, vec, keys, *dense in pipe.execute():
            if meta is None:
                continue
            rows.append(IndexRow(ChunkRecord(**json.loads(meta)), np.frombuffer(vec, dtype=np.float32),
                                 _from_npy(keys) if keys is not None else None,
                                 {n: _from_npy(d) for n, d in zip(DENSE_SIGNALS, dense) if d is not None}))
        return rows

    def chunk_payloads(self, sid: str, ids: list[int]) -> list[TokenSet | FeatureSet]:
        """The stored chunks (KV token sets or feature sets) of these ids, in the given order."""
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hget(self._chunk_key(sid, cid), "kv")
        blobs = pipe.execute()
        missing = [cid for cid, b in zip(ids, blobs) if b is None]
        if missing:
            raise ChunksGone(f"stream {sid!r} no longer holds chunks {missing} (retention removed them)")
        return [decode_chunk(b, self.layout, self.fingerprint)[0] for b in blobs]

    def keyframes(self, sid: str, ids: list[int]) -> list[bytes]:
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hget(self._chunk_key(sid, cid), "jpeg")
        return [b or b"" for b in pipe.execute()]
