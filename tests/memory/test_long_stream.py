"""Budget invariants over a long stream: 2,000 sampled frames through the tiny model, each chunk and the
working memory written to a real Redis exactly as ingest writes them, retention enforced as ingest does."""
from __future__ import annotations

import numpy as np
import pytest
import redis

from memory.retention import Retention
from memory.store import ChunkRecord, MemoryStore, StreamRecord
from memory.options import MemoryOptions
from memory.working import WorkingState, context, step

FRAMES = 2000
CLIP = 8
WORKING, CHUNK = 96, 12


def stream_frames(n_clips: int, seed: int = 0):
    """Clips of 8 small frames: a slowly drifting textured scene with a new scene every 10 clips."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:56, 0:56]
    scene = rs.randint(0, 255, 3)
    for i in range(n_clips):
        if i % 10 == 0:
            scene = rs.randint(0, 255, 3)
        frames = []
        for t in range(CLIP):
            phase = (i * CLIP + t) * 0.05
            wave = (np.sin(xx / 6.0 + phase) * np.cos(yy / 9.0 - phase) * 60)[..., None]
            frames.append(np.clip(scene + wave + rs.randint(-10, 10, (56, 56, 3)), 0, 255).astype(np.uint8))
        yield np.stack(frames)


def redis_bytes(r: redis.Redis, ns: str, sid: str) -> int:
    """What Redis itself reports for the stream's keys (MEMORY USAGE), so not our own accounting."""
    return sum(r.memory_usage(k, samples=0) or 0 for k in r.scan_iter(f"{ns}:s:{{{sid}}}:*")
               if not k.endswith(b":events"))


@pytest.fixture
def store(redis_url, namespace, tiny_adapter):
    r = redis.Redis.from_url(redis_url)
    yield MemoryStore(r, namespace, tiny_adapter.spec.layout, tiny_adapter.spec.fingerprint)
    for k in r.scan_iter(f"{namespace}:*"):
        r.delete(k)


def test_budget_invariants_over_thousands_of_frames(tiny_adapter, store, namespace):
    ad = tiny_adapter
    policy = MemoryOptions(working_tokens=WORKING, chunk_tokens=CHUNK)
    n_clips = FRAMES // CLIP
    limit_chunks = 40
    rec = StreamRecord(stream_id="long1", source="synthetic", memory=policy)
    store.create_stream(rec)
    fence = store.claim(rec.stream_id, "test", 600_000)
    prefix = ad.encode_prefix()
    store.put_prefix(rec.stream_id, prefix)
    state = WorkingState.empty(prefix)
    retention = None  # set once the byte size of one chunk is known
    wm_sizes, chunk_bytes, totals, redis_totals, tokens = [], [], [], [], []
    for i, frames in enumerate(stream_frames(n_clips)):
        enc = ad.ingest_clip(frames, 1.0, i * CLIP, (i + 1) * CLIP, context(prefix, state))
        done = step(prefix, state, enc, 0.0, policy)
        state = done.state
        chunk = ChunkRecord(chunk_id=i, start_s=i * CLIP, end_s=(i + 1) * CLIP, frames=CLIP, tokens=done.chunk.length,
                            keyframe_s=i * CLIP, span_start=done.span[0], span_end=done.span[1])
        size = store.put_chunk(rec.stream_id, chunk, done.chunk, enc.segment.retrieval, b"jpeg", (i + 1) * CLIP,
                               fence=fence, working=state)
        if retention is None:
            retention = Retention(max_bytes=limit_chunks * size)
        store.enforce_retention(rec.stream_id, retention, fence=fence)
        s = store.get_stream(rec.stream_id)
        wm_sizes.append(state.tokens.length)
        tokens.append(enc.segment.length)
        chunk_bytes.append(size)
        totals.append(s.bytes)
        redis_totals.append(redis_bytes(store.r, namespace, rec.stream_id))

    seen = np.cumsum(tokens)  # clip tokens vary a little: the clip header text holds its times
    warm = int(np.argmax(seen >= WORKING))  # the clip at which the budget first fills
    assert wm_sizes[:warm] == seen[:warm].tolist()  # below the budget nothing is pruned
    assert set(wm_sizes[warm:]) == {WORKING}  # constant after warm-up, whatever the length
    assert set(chunk_bytes) == {chunk_bytes[0]}  # every chunk the same size
    rec = store.get_stream(rec.stream_id)
    assert rec.chunk_bytes <= retention.max_bytes and rec.consolidated > 0
    # our accounting grows by exactly one chunk per chunk until the limit, then stays under it
    steps = np.diff(totals[warm:limit_chunks])
    assert set(steps.tolist()) == {chunk_bytes[0]}
    assert max(totals[limit_chunks:]) - min(totals[limit_chunks:]) <= chunk_bytes[0]
    # and Redis's own view agrees: linear (a constant step per chunk: the blob plus Redis's own overhead),
    # then flat
    growth = np.diff(redis_totals[warm:limit_chunks])
    assert chunk_bytes[0] <= np.median(growth) < 1.3 * chunk_bytes[0]
    assert np.all(np.abs(growth - np.median(growth)) < 0.01 * np.median(growth))
    late = redis_totals[n_clips // 2:]
    assert max(late) - min(late) < 2 * chunk_bytes[0]
    assert max(redis_totals) < 1.3 * (retention.max_bytes + rec.working_bytes + store.r.strlen(
        store._k(rec.stream_id, "prefix")))
    # what remains is still a well-formed, searchable memory: time order, coarser chunks first
    rows = store.chunk_records(rec.stream_id)
    assert [r.start_s for r in rows] == sorted(r.start_s for r in rows)
    assert rows[0].level > 0 and rows[-1].level == 0
    assert all(a.end_s == b.start_s for a, b in zip(rows, rows[1:]))  # merged, not lost
    assert rows[0].start_s == 0.0 and rows[-1].end_s == n_clips * CLIP
    payloads = store.chunk_payloads(rec.stream_id, [r.chunk_id for r in rows])
    assert {p.length for p in payloads} == {CHUNK}
