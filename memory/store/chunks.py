"""A stream's memory: the prompt prefix, its chunks (KV or features, retrieval keys, frame-index vectors,
keyframe), the working memory, the resume checkpoint, and retention (delete and consolidate the oldest)."""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import redis

from encoders.base import EncodedSegment
from encoders.retrieval import BlockKeys
from encoders.signals import FRAME_INDEX, Signal
from memory.codec import (decode_chunk, decode_delta, decode_segment, decode_tokens, encode_delta, encode_features,
                          encode_segment, encode_tokens)
from memory.delta import WorkingDelta, apply
from memory.errors import ChunksGone, StreamNotFound
from memory.layout import FeatureSet, TokenSet
from memory.multivec import merged_keys
from memory.retention import Chunk, Retention, merge_features, merge_tokens, merge_vectors, plan
from memory.store import scripts
from memory.store.client import SLOT_MOVING, is_cluster
from memory.store.keys import EVENTS_MAXLEN, StoreBase
from memory.store.leases import LeaseLost
from memory.store.records import Checkpoint, ChunkEncoding, ChunkRecord, IndexRow, IngestProgress, WorkingLoad
from memory.working import WorkingState

log = logging.getLogger("vigil.store")

def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def _wm_version(field: bytes | None, chunks: bytes | None) -> int:
    """A stored version field; streams written before versions existed hold the memory of their newest chunk."""
    if field is not None:
        return int(field)
    return int(json.loads(chunks)) - 1 if chunks is not None else -1


TEXT_JPEG = "jpeg:text"  # a chunk's text frame: where its on-screen text was read, when the keyframe lacks it


@dataclass(frozen=True)
class ChunkWrite:
    """One chunk's PUT_CHUNK call, serialized: its keys and arguments (bytes and strings on the host)."""
    stream_id: str
    chunk_id: int
    size: int  # the chunk's bytes
    keys: list[str]
    args: list

    @property
    def nbytes(self) -> int:
        return sum(len(a) for a in self.args if isinstance(a, (bytes, str)))


class ChunkGap(RuntimeError):
    """A chunk write skipped a chunk id (the script takes exactly the next one): a bug, never stored."""


class Chunks(StoreBase):
    def _init_chunks(self) -> None:
        self._put_chunk = self.r.register_script(scripts.PUT_CHUNK)
        self._put_working = self.r.register_script(scripts.PUT_WORKING)
        self.working_bytes_read = 0  # working-memory and prefix bytes this client has read (metrics, tests)
        self.replica_lag_writes = 0  # chunk writes fewer replicas than wait_replicas had in time (WAIT)

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
        self.working_bytes_read += len(blob)
        return decode_segment(blob, self.layout, self.fingerprint)

    def encode_payload(self, payload: TokenSet | FeatureSet, int8: bool) -> bytes:
        if isinstance(payload, FeatureSet):
            return encode_features(payload, self.layout, self.fingerprint)
        return encode_tokens(payload, self.layout, self.fingerprint, int8=int8)

    def put_chunk(self, sid: str, chunk: ChunkRecord, payload: TokenSet | FeatureSet, keys: BlockKeys,
                  keyframe_jpeg: bytes, frames_total: int, *, fence: str, dense: dict[Signal, np.ndarray] | None = None,
                  working: WorkingState | WorkingDelta | None = None, int8: bool = False,
                  checkpoint: Checkpoint | None = None, detector_state: bytes = b"",
                  progress: IngestProgress | None = None, counters: WorkingState | None = None,
                  text_jpeg: bytes = b"") -> int:
        """Store one chunk: `send_chunk(prepare_chunk(...))`. Returns the chunk's bytes."""
        return self.send_chunk(self.prepare_chunk(sid, chunk, payload, keys, keyframe_jpeg, frames_total, fence=fence,
                                                  dense=dense, working=working, int8=int8, checkpoint=checkpoint,
                                                  detector_state=detector_state, progress=progress,
                                                  counters=counters, text_jpeg=text_jpeg))

    def prepare_chunk(self, sid: str, chunk: ChunkRecord, payload: TokenSet | FeatureSet, keys: BlockKeys,
                      keyframe_jpeg: bytes, frames_total: int, *, fence: str,
                      dense: dict[Signal, np.ndarray] | None = None,
                      working: WorkingState | WorkingDelta | None = None, int8: bool = False,
                      checkpoint: Checkpoint | None = None, detector_state: bytes = b"",
                      progress: IngestProgress | None = None, counters: WorkingState | None = None,
                      text_jpeg: bytes = b"") -> ChunkWrite:
        """One chunk's write, serialized (host bytes only: a worker may keep it to send again): the chunk
        (payload, retrieval keys, frame-index vectors `dense`, keyframe, and `text_jpeg`: the frame its on-screen
        text was read in when the keyframe does not show it, at `chunk.text_frame_s`; at most one such JPEG a
        chunk) and what changed in
        the working memory with it (`working`: a whole WorkingState is a new snapshot, kept with this chunk's
        checkpoint, and empties the delta log; a WorkingDelta from the previous chunk's memory is appended to
        the log; None: the memory is not stored with this chunk), advance the stream's counters (`counters`: the
        working memory after the chunk, whose positions and serials are recorded; default `working`) and move
        its resume checkpoint, in one atomic step that also proves the writer holds the stream's lease
        (`fence`, its token; LeaseLost if not). The chunk id must be the next one (ChunkGap if it skips one);
        sent again after a lost reply, a chunk already stored is not stored twice."""
        blob = self.encode_payload(payload, int8)
        vec_bytes = np.asarray(keys.mean, dtype=np.float32).tobytes()
        extra = {"keys": _npy(keys.tokens.astype(np.float16))}
        if text_jpeg:
            extra[TEXT_JPEG] = text_jpeg
        for name, v in (dense or {}).items():
            if name not in FRAME_INDEX:  # the frame-index vectors a chunk may carry (`d:<signal>` fields)
                raise ValueError(f"unknown frame-index signal {str(name)!r}; one of {tuple(map(str, FRAME_INDEX))}")
            extra[f"d:{name}"] = _npy(np.asarray(v, dtype=np.float32).reshape(-1, np.shape(v)[-1]))
        size = len(blob) + len(vec_bytes) + len(keyframe_jpeg) + sum(len(b) for b in extra.values())
        fmt = (ChunkEncoding.FEATURES if isinstance(payload, FeatureSet) else
               ChunkEncoding.KV_INT8 if int8 else ChunkEncoding.KV)
        meta = json.dumps(asdict(ChunkRecord(**{**asdict(chunk), "bytes": size, "format": fmt})))
        mode, wm_blob = "0", b""
        if isinstance(working, WorkingState):
            mode, wm_blob = "S", self._working_blob(working, chunk.chunk_id)
        elif isinstance(working, WorkingDelta):
            mode, wm_blob = "D", encode_delta(working, self.layout, self.fingerprint, chunk=chunk.chunk_id)
        now = json.dumps(time.time())
        fields = {
            "chunks": json.dumps(chunk.chunk_id + 1), "frames": json.dumps(frames_total),
            "media_end_s": json.dumps(chunk.end_s), "updated": now, **(progress or IngestProgress()).fields(),
        }
        after = counters if counters is not None else working
        if after is not None:
            n = after.tokens.length if isinstance(after, WorkingState) else int(after.src.shape[1])
            fields.update(next_pos=json.dumps(after.next_pos), max_pos=json.dumps(after.max_pos),
                          next_serial=json.dumps(after.next_serial), next_frame=json.dumps(after.next_frame),
                          working_used=json.dumps(n))
        chunk_fields = {"meta": meta, "kv": blob, "vec": vec_bytes, "jpeg": keyframe_jpeg, **extra}
        ckpt = checkpoint or Checkpoint(next_clip=chunk.chunk_id + 1, after_s=chunk.end_s, frames_total=frames_total)
        args = [fence, chunk.chunk_id, chunk.start_s, size, chunk.cuts, mode, wm_blob,
                ckpt.to_json(), detector_state, EVENTS_MAXLEN, now,
                len(chunk_fields), *[x for kv in chunk_fields.items() for x in kv],
                len(fields), *[x for kv in fields.items() for x in kv]]
        return ChunkWrite(sid, chunk.chunk_id, size, [self._k(sid, "lease"), self._k(sid, "ckpt"),
                                                      self._chunk_key(sid, chunk.chunk_id), self._k(sid, "chunks"),
                                                      self._k(sid, "meta"), self._k(sid, "wm"),
                                                      self._k(sid, "events"), self._k(sid, "wmlog")], args)

    def send_chunk(self, w: ChunkWrite) -> int:
        """Send a prepared chunk write (again, after a lost reply or a store that lost it: idempotent). Returns
        the chunk's bytes. LeaseLost: another worker owns the stream; ChunkGap: the id is not the next one."""
        got = self._write_chunk(w.keys, w.args)
        if got == -1:
            raise LeaseLost(f"stream {w.stream_id}: the lease is no longer this worker's; chunk {w.chunk_id} not "
                            "stored")
        if got == -2:
            raise ChunkGap(f"stream {w.stream_id}: chunk {w.chunk_id} skips the next chunk id; not stored")
        if got == -3:
            raise ChunkGap(f"stream {w.stream_id}: the working-memory delta of chunk {w.chunk_id} does not follow "
                           "the stored memory; not stored")
        return w.size

    def _write_chunk(self, keys: list[str], args: list) -> int:
        """Run the chunk script; with `wait_replicas`, then WAIT on the same connection (WAIT counts the
        replicas that have this connection's writes), in one round trip: a pipeline on the node that holds the
        stream's slot. Fewer replicas than asked within the timeout: the chunk stays stored (the master has
        it) and `replica_lag_writes` counts it (a replica is down or far behind: it is logged)."""
        if not self.wait_replicas:
            return self._put_chunk(keys=keys, args=args)
        node_client = self.r
        if is_cluster(self.r):  # the slot's master's own client: WAIT must follow the write on its connection
            node_client = self.r.get_redis_connection(self.r.get_node_from_key(keys[0]))
        pipe = node_client.pipeline(transaction=False)
        self._put_chunk(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        try:
            got, acked = pipe.execute()
        except (redis.ConnectionError, redis.ResponseError) as exc:
            if is_cluster(self.r):  # MOVED (a replica was promoted) or a dead master: read the slot map again
                try:
                    self.r.nodes_manager.initialize()
                except Exception:  # the cluster is still electing: the caller waits and resends
                    pass
                if isinstance(exc, SLOT_MOVING):
                    raise redis.ConnectionError(f"the stream's slot is moving ({type(exc).__name__}); resend") from exc
            raise
        if int(acked) < self.wait_replicas and int(got) == 1:
            self.replica_lag_writes += 1
            log.warning("a chunk was acknowledged by %d of %d replicas within %d ms (stored on the master only)",
                        int(acked), self.wait_replicas, self.wait_timeout_ms)
        return int(got)

    def _working_blob(self, working: WorkingState, chunk_id: int) -> bytes:
        """A snapshot (its chunk id lives in the stream's meta, so equal memories make equal blobs)."""
        return encode_tokens(working.tokens, self.layout, self.fingerprint, kind="working", next_pos=working.next_pos,
                             max_pos=working.max_pos, next_serial=working.next_serial,
                             next_frame=working.next_frame)

    def put_working(self, sid: str, working: WorkingState, chunk_id: int, *, fence: str) -> int:
        """A snapshot of the working memory after the newest stored chunk `chunk_id`, on its own (a stream that
        ends stores its final memory), fenced like chunk writes. Returns its bytes."""
        blob = self._working_blob(working, chunk_id)
        got = self._put_working(keys=[self._k(sid, "lease"), self._k(sid, "ckpt"), self._k(sid, "meta"),
                                      self._k(sid, "wm"), self._k(sid, "wmlog")], args=[fence, chunk_id, blob])
        if got == -1:
            raise LeaseLost(f"stream {sid}: the lease is no longer this worker's; working memory not stored")
        if got == -2:
            raise ChunkGap(f"stream {sid}: chunk {chunk_id} is not the newest stored chunk; working memory not stored")
        return len(blob)

    def get_working(self, sid: str) -> WorkingState | None:
        """The working memory after the newest chunk: its snapshot with the logged deltas applied (None before
        the first chunk)."""
        got = self.load_working(sid)
        return got.state if got is not None else None

    def working_version(self, sid: str) -> int:
        """The chunk id the stored working memory is at (-1: none yet)."""
        v = self.r.hmget(self._k(sid, "meta"), ["wm_version", "chunks"])
        return _wm_version(v[0], v[1])

    def load_working(self, sid: str, have: WorkingLoad | None = None) -> WorkingLoad | None:
        """The stored working memory, read consistently (one transaction): with `have` (a copy at some
        version), only the deltas after it are read and applied; nothing at all beyond two small fields when
        it is current. Returns None before the first chunk. `.read_bytes` counts what was read of memory."""
        k_meta, k_wm, k_log = self._k(sid, "meta"), self._k(sid, "wm"), self._k(sid, "wmlog")
        fields = ["wm_version", "wm_snapshot_version", "chunks", "working_bytes", "wm_log_bytes"]
        raw = self.r.hmget(k_meta, fields)
        version = _wm_version(raw[0], raw[2])
        snap_v = _wm_version(raw[1], raw[2])
        snap_bytes, log_bytes = int(raw[3] or 0), int(raw[4] or 0)
        if have is not None and have.version >= version:  # current (or newer: a live copy ahead of its snapshot)
            return WorkingLoad(have.state, have.version, snap_bytes, log_bytes, 0)
        for _ in range(5):  # the version moved between the two reads: read again
            pipe = self.r.pipeline(transaction=True)
            pipe.hmget(k_meta, fields)
            incremental = have is not None and snap_v <= have.version < version
            if incremental:
                pipe.lrange(k_log, have.version - snap_v, -1)
            else:
                pipe.get(k_wm)
                pipe.lrange(k_log, 0, -1)
            out = pipe.execute()
            raw = out[0]
            now_v = _wm_version(raw[0], raw[2])
            now_snap = _wm_version(raw[1], raw[2])
            if now_snap != snap_v:  # a new snapshot came between: plan again
                version, snap_v = now_v, now_snap
                continue
            version = now_v
            if incremental:
                state, blobs, read = have.state, out[1], 0
            else:
                if out[1] is None:
                    return None
                state = self._decode_snapshot(out[1])
                blobs, read = out[2], len(out[1])
            first = (have.version + 1) if incremental else snap_v + 1
            for i, b in enumerate(blobs):
                d, meta = decode_delta(b, self.layout, self.fingerprint)
                if int(meta.get("chunk", first + i)) != first + i:
                    raise RuntimeError(f"stream {sid}: working-memory log out of order at chunk {first + i}")
                state = apply(state, d)
                read += len(b)
            self.working_bytes_read += read
            return WorkingLoad(state, first + len(blobs) - 1, int(raw[3] or 0), int(raw[4] or 0), read)
        raise RuntimeError(f"stream {sid}: the working memory kept changing while it was read")

    def _decode_snapshot(self, blob: bytes) -> WorkingState:
        tokens, meta = decode_tokens(blob, self.layout, self.fingerprint)
        return WorkingState(tokens, int(meta["next_pos"]), int(meta["max_pos"]), int(meta["next_serial"]),
                            int(meta["next_frame"]))

    # ---- retention -----------------------------------------------------------------------
    def enforce_retention(self, sid: str, limits: Retention, *, fence: str) -> int:
        """Delete and consolidate the stream's oldest chunks until it is under `limits`. Only the
        stream's ingest worker calls this, with its lease token (`fence`): each rewrite commits only while the
        lease is still its own (LeaseLost if not). Returns the number of actions taken."""
        if not limits.limited:
            return 0
        if self.r.get(self._k(sid, "lease")) != fence.encode():  # a stale writer does not even plan
            raise LeaseLost(f"stream {sid}: the lease is no longer this worker's; retention not applied")
        rec = self.get_stream(sid)
        rows = self.chunk_records(sid)
        actions = plan([Chunk(r.chunk_id, r.end_s, r.bytes, r.level) for r in rows], rec.media_end_s, limits)
        by_id = {r.chunk_id: r for r in rows}
        for act in actions:
            if act.kind == "delete":
                self._delete_chunks(sid, [by_id[i] for i in act.ids], fence)
            else:
                by_id[act.ids[0]] = self._merge_chunks(sid, [by_id[i] for i in act.ids], fence)
        return len(actions)

    def chunk_records(self, sid: str) -> list[ChunkRecord]:
        pipe = self.r.pipeline(transaction=False)
        for cid in self.chunk_ids(sid):
            pipe.hget(self._chunk_key(sid, cid), "meta")
        return [ChunkRecord(**json.loads(m)) for m in pipe.execute() if m is not None]

    def _fenced(self, sid: str, fence: str):
        """A transaction that commits only if the lease is still `fence` (WATCH; a renewal in between makes it
        retry, a new owner makes it fail)."""
        for _ in range(20):
            pipe = self.r.pipeline(transaction=True)
            pipe.watch(self._k(sid, "lease"))
            if pipe.get(self._k(sid, "lease")) != fence.encode():
                pipe.reset()
                raise LeaseLost(f"stream {sid}: the lease is no longer this worker's; retention not applied")
            pipe.multi()
            yield pipe
            try:
                pipe.execute()
                return
            except redis.WatchError:
                continue
        raise LeaseLost(f"stream {sid}: the lease kept changing; retention not applied")

    def _delete_chunks(self, sid: str, recs: list[ChunkRecord], fence: str) -> None:
        size = sum(r.bytes for r in recs)
        for pipe in self._fenced(sid, fence):
            self._delete_ops(pipe, sid, recs, size)

    def _delete_ops(self, pipe, sid: str, recs: list[ChunkRecord], size: int) -> None:
        for r in recs:
            pipe.delete(self._chunk_key(sid, r.chunk_id))
            pipe.zrem(self._k(sid, "chunks"), str(r.chunk_id))
        pipe.hincrby(self._k(sid, "meta"), "bytes", -size)
        pipe.hincrby(self._k(sid, "meta"), "chunk_bytes", -size)
        pipe.hincrby(self._k(sid, "meta"), "deleted", len(recs))
        pipe.hincrby(self._k(sid, "meta"), "epoch", 1)
        self._event(pipe, sid, "retention", message=f"deleted chunks {[r.chunk_id for r in recs]}")

    def _merge_chunks(self, sid: str, recs: list[ChunkRecord], fence: str) -> ChunkRecord:
        ids = [r.chunk_id for r in recs]
        pipe = self.r.pipeline(transaction=False)
        names = ["kv", "vec", "jpeg", "keys"] + [f"d:{n}" for n in FRAME_INDEX] + [TEXT_JPEG]
        for cid in ids:
            pipe.hmget(self._chunk_key(sid, cid), names)
        got = pipe.execute()
        payloads = [decode_chunk(g[0], self.layout, self.fingerprint)[0] for g in got]
        first = payloads[0]
        int8 = recs[0].format == ChunkEncoding.KV_INT8
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
        for j, name in enumerate(FRAME_INDEX):  # every part's vectors of a signal are kept (each can match)
            vs = [_from_npy(g[4 + j]) for g in got if g[4 + j] is not None]
            if vs:
                extra[f"d:{name}"] = _npy(np.concatenate(vs))
        text_part = next((i for i in [key, *range(len(recs))] if got[i][-1]), None)  # one text frame kept at most
        if text_part is not None:
            extra[TEXT_JPEG] = got[text_part][-1]
        size = len(blob) + len(vec) + len(jpeg_bytes) + sum(len(b) for b in extra.values())
        texts = list(dict.fromkeys(t for r in recs for t in r.text.split(" | ") if t))
        rec = ChunkRecord(
            chunk_id=ids[0], start_s=recs[0].start_s, end_s=recs[-1].end_s, frames=sum(r.frames for r in recs),
            tokens=merged.length, keyframe_s=recs[key].keyframe_s, bytes=size, wall_start=recs[0].wall_start,
            wall_end=recs[-1].wall_end, cuts=sum(r.cuts for r in recs), novelty=recs[key].novelty,
            redundant=sum(r.redundant for r in recs), static=round(sum(r.static for r in recs) / len(recs), 4),
            span_start=recs[0].span_start, span_end=recs[-1].span_end, level=max(r.level for r in recs) + 1,
            format=recs[0].format, text=" | ".join(texts),
            text_frame_s=recs[text_part].text_frame_s if text_part is not None else None,
            labels=", ".join(dict.fromkeys(x for r in recs for x in r.labels.split(", ") if x)),  # as d:labels
        )
        old = sum(r.bytes for r in recs)
        for pipe in self._fenced(sid, fence):
            for cid in ids:
                pipe.delete(self._chunk_key(sid, cid))
            for cid in ids[1:]:
                pipe.zrem(self._k(sid, "chunks"), str(cid))
            pipe.hset(self._chunk_key(sid, ids[0]),
                      mapping={"meta": json.dumps(asdict(rec)), "kv": blob, "vec": vec, "jpeg": jpeg_bytes, **extra})
            pipe.hincrby(self._k(sid, "meta"), "bytes", size - old)
            pipe.hincrby(self._k(sid, "meta"), "chunk_bytes", size - old)
            pipe.hincrby(self._k(sid, "meta"), "consolidated", 1)
            pipe.hincrby(self._k(sid, "meta"), "merged_away", len(ids) - 1)
            pipe.hincrby(self._k(sid, "meta"), "epoch", 1)
            self._event(pipe, sid, "retention", message=f"merged chunks {ids} into level {rec.level}")
        return rec

    def stored_chunks(self, sid: str) -> int:
        """How many chunks the store holds for the stream now."""
        return int(self.r.zcard(self._k(sid, "chunks")))

    def checkpoint(self, sid: str) -> tuple[Checkpoint, bytes] | None:
        """(checkpoint, detector state) written with the last stored chunk, or None before the first."""
        h = self.r.hgetall(self._k(sid, "ckpt"))
        return (Checkpoint.from_json(h[b"json"]), h.get(b"detector", b"")) if h else None

    def snapshot_checkpoint(self, sid: str) -> tuple[Checkpoint, bytes] | None:
        """(checkpoint, detector state) of the chunk the working-memory snapshot was stored with (None: not kept,
        as for streams stored before snapshots kept theirs): where a file is decoded again from on resume."""
        got = self.r.hmget(self._k(sid, "ckpt"), ["wm_json", "wm_detector"])
        return (Checkpoint.from_json(got[0]), got[1] or b"") if got[0] is not None else None


    def epoch(self, sid: str) -> int:
        """Changes whenever retention deletes or rewrites chunks."""
        return int(json.loads(self.r.hget(self._k(sid, "meta"), "epoch") or b"0"))

    def chunk_ids(self, sid: str, after: int = -1, from_s: float | None = None) -> list[int]:
        """Stored chunk ids above `after`, ascending. `from_s`: only chunks starting at or after this media time
        are read (the set is scored by start time, and a later chunk never starts earlier): what an index that
        holds everything up to `after` asks for, without reading the whole set."""
        key = self._k(sid, "chunks")
        raw = self.r.zrange(key, 0, -1) if from_s is None else self.r.zrangebyscore(key, from_s, "+inf")
        return sorted(i for i in map(int, raw) if i > after)

    def chunk_index_rows(self, sid: str, ids: list[int]) -> list[IndexRow]:
        """What the search index keeps of each id (ids gone meanwhile are skipped)."""
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hmget(self._chunk_key(sid, cid), ["meta", "vec", "keys"] + [f"d:{n}" for n in FRAME_INDEX])
        rows = []
        for meta, vec, keys, *dense in pipe.execute():
            if meta is None:
                continue
            rows.append(IndexRow(ChunkRecord(**json.loads(meta)), np.frombuffer(vec, dtype=np.float32),
                                 _from_npy(keys) if keys is not None else None,
                                 {n: _from_npy(d) for n, d in zip(FRAME_INDEX, dense) if d is not None}))
        return rows

    def chunk_payloads(self, sid: str, ids: list[int], keyframes: bool = False, text_ids: frozenset[int] = frozenset()
                       ) -> list[TokenSet | FeatureSet] | tuple[list[TokenSet | FeatureSet], list[bytes]]:
        """The stored chunks (KV token sets or feature sets) of these ids, in the given order; with `keyframes`,
        (chunks, their keyframe JPEGs), read in the same round trip (for `text_ids`: the text frame where the chunk
        has one)."""
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            if keyframes:
                pipe.hmget(self._chunk_key(sid, cid), ["kv", "jpeg", *((TEXT_JPEG,) if cid in text_ids else ())])
            else:
                pipe.hget(self._chunk_key(sid, cid), "kv")
        got = pipe.execute()
        blobs = [g[0] for g in got] if keyframes else got
        missing = [cid for cid, b in zip(ids, blobs) if b is None]
        if missing:
            raise ChunksGone(f"stream {sid!r} no longer holds chunks {missing} (retention removed them)")
        payloads = [decode_chunk(b, self.layout, self.fingerprint)[0] for b in blobs]
        return (payloads, [(g[2] if len(g) > 2 and g[2] else g[1]) or b"" for g in got]) if keyframes else payloads

    def keyframes(self, sid: str, ids: list[int], text_ids: frozenset[int] = frozenset()) -> list[bytes]:
        """The keyframe JPEGs of these chunks (b"": none); for `text_ids`, the text frame where the chunk has one."""
        pipe = self.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hmget(self._chunk_key(sid, cid), ["jpeg", *((TEXT_JPEG,) if cid in text_ids else ())])
        return [(g[1] if len(g) > 1 and g[1] else g[0]) or b"" for g in pipe.execute()]
