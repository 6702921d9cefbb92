"""The working memory persisted as a snapshot plus one delta per chunk: a delta applied to the memory it was taken
from gives the next memory bit for bit (real tiny-model steps, pruning on); the store reads snapshot + deltas back
exactly, a stale copy reads only the deltas after it, old-format streams still load, and the chunk-write script
takes exactly the next chunk and refuses a delta that does not follow the stored memory."""
from __future__ import annotations

import pytest
import redis
import torch

from memory.delta import DeltaMismatch, apply, diff
from memory.options import MemoryOptions
from memory.store import Checkpoint, ChunkGap, ChunkRecord, MemoryStore, StreamRecord
from memory.working import WorkingState, context, step
from tests.memory.test_long_stream import stream_frames

N_CLIPS = 12


def same_state(a: WorkingState, b: WorkingState) -> None:
    for name in ("keys", "values", "positions", "serial", "score"):
        x, y = getattr(a.tokens, name), getattr(b.tokens, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), name
    assert (a.next_pos, a.max_pos, a.next_serial, a.next_frame) == (b.next_pos, b.max_pos, b.next_serial,
                                                                    b.next_frame)


@pytest.fixture(scope="module")
def run(tiny_adapter):
    """Real steps of the tiny model with a working memory small enough that every clip prunes it (prototypes and
    value novelty on): the states before and after each clip, and what each clip stores."""
    ad = tiny_adapter
    opts = MemoryOptions(working_tokens=48, chunk_tokens=16, redundancy_weight=0.3, redundancy_window=16)
    prefix = ad.encode_prefix()
    state, out = WorkingState.empty(prefix), []
    for i, frames in enumerate(stream_frames(N_CLIPS, seed=11)):
        enc = ad.ingest_clip(frames, 1.0, i * 8, (i + 1) * 8, context(prefix, state), key_rows=opts.retrieval_keys)
        done = step(prefix, state, enc, 0.2, opts)
        rec = ChunkRecord(chunk_id=i, start_s=i * 8, end_s=(i + 1) * 8, frames=8, tokens=done.chunk.length,
                          keyframe_s=i * 8, span_start=done.span[0], span_end=done.span[1])
        out.append((state, done, enc, rec))
        state = done.state
    return prefix, out


def test_a_delta_applied_to_its_memory_gives_the_next_one_bit_for_bit(run):
    _, steps = run
    pruned = 0
    for before, done, _, _ in steps:
        d = diff(before, done.state)
        same_state(apply(before, d), done.state)
        assert 0 < d.entered <= done.state.tokens.length * done.state.tokens.keys.shape[0]
        pruned += int(before.tokens.length + done.span[1] - done.span[0] > done.state.tokens.length)
    assert pruned >= N_CLIPS // 2  # the memory was full: tokens left it as others entered
    # later clips: only some tokens enter; a delta is smaller than the memory it changes
    before, done, _, _ = steps[-1]
    assert diff(before, done.state).entered < done.state.tokens.length * done.state.tokens.keys.shape[0]


def test_a_delta_refuses_a_memory_it_was_not_taken_from(run):
    _, steps = run
    d = diff(steps[3][0], steps[3][1].state)
    with pytest.raises(DeltaMismatch):
        apply(steps[4][0], d)


@pytest.fixture
def store(redis_url, namespace, tiny_adapter):
    r = redis.Redis.from_url(redis_url)
    return MemoryStore(r, namespace, tiny_adapter.spec.layout, tiny_adapter.spec.fingerprint)


def _put(store, sid, item, fence, working):
    _, done, enc, rec = item
    ck = Checkpoint(next_clip=rec.chunk_id + 1, after_s=rec.end_s, frames_total=(rec.chunk_id + 1) * 8)
    return store.put_chunk(sid, rec, done.chunk, enc.segment.retrieval, b"jpeg", (rec.chunk_id + 1) * 8,
                           fence=fence, working=working, checkpoint=ck)


def _ingest(store, sid, steps, snapshot_every: int) -> str:
    store.create_stream(StreamRecord(stream_id=sid, source="synthetic"))
    fence = store.claim(sid, "w1", 60_000)
    for i, item in enumerate(steps):
        before, done = item[0], item[1]
        _put(store, sid, item, fence, done.state if i % snapshot_every == 0 else diff(before, done.state))
    return fence


def test_the_store_reads_snapshot_plus_deltas_back_exactly(store, run):
    prefix, steps = run
    _ingest(store, "s1", steps, snapshot_every=5)  # snapshots at chunks 0, 5, 10; deltas between
    got = store.load_working("s1")
    assert got.version == N_CLIPS - 1
    same_state(got.state, steps[-1][1].state)
    rec = store.get_stream("s1")
    assert rec.wm_snapshot_version == 10 and rec.wm_version == N_CLIPS - 1
    assert store.r.llen(store._k("s1", "wmlog")) == N_CLIPS - 1 - 10
    assert rec.working_bytes_written > 0 and rec.wm_log_bytes > 0


def test_a_stale_copy_reads_only_the_deltas_after_it(store, run):
    prefix, steps = run
    fence = _ingest(store, "s1", steps[:8], snapshot_every=100)  # one snapshot (chunk 0), deltas 1..7
    stale = store.load_working("s1")
    assert stale.version == 7
    current = store.load_working("s1", stale)
    assert current.read_bytes == 0 and current.state is stale.state  # nothing changed: nothing read
    for item in steps[8:-1]:
        _put(store, "s1", item, fence, diff(item[0], item[1].state))
    newer = store.load_working("s1", stale)
    assert newer.version == N_CLIPS - 2
    same_state(newer.state, steps[-2][1].state)
    whole = store.load_working("s1")
    assert 0 < newer.read_bytes < whole.read_bytes  # only the 3 newest deltas, not the snapshot and all deltas
    # a snapshot written meanwhile compacts the log away: a copy older than it reads the snapshot again
    _put(store, "s1", steps[-1], fence, steps[-1][1].state)
    after = store.load_working("s1", stale)
    assert after.version == N_CLIPS - 1 and store.r.llen(store._k("s1", "wmlog")) == 0
    same_state(after.state, steps[-1][1].state)


def test_a_stream_stored_before_deltas_existed_loads_and_continues(store, run, tiny_adapter):
    prefix, steps = run
    store.create_stream(StreamRecord(stream_id="old", source="synthetic"))
    fence = store.claim("old", "w1", 60_000)
    for item in steps[:3]:
        _put(store, "old", item, fence, item[1].state)
    # the old format: a snapshot with every chunk and no version fields
    store.r.hdel(store._k("old", "meta"), "wm_version", "wm_snapshot_version", "wm_log_bytes")
    got = store.load_working("old")
    assert got.version == 2
    same_state(got.state, steps[2][1].state)
    _put(store, "old", steps[3], fence, diff(steps[3][0], steps[3][1].state))  # a delta after an old snapshot
    same_state(store.get_working("old"), steps[3][1].state)


def test_the_chunk_write_takes_exactly_the_next_chunk_and_a_following_delta(store, run):
    _, steps = run
    store.create_stream(StreamRecord(stream_id="s2", source="synthetic"))
    fence = store.claim("s2", "w1", 60_000)
    _put(store, "s2", steps[0], fence, steps[0][1].state)
    with pytest.raises(ChunkGap):  # chunk 2 before chunk 1: refused, nothing stored
        _put(store, "s2", steps[2], fence, steps[2][1].state)
    assert store.chunk_ids("s2") == [0]
    _put(store, "s2", steps[1], fence, diff(steps[1][0], steps[1][1].state))
    assert _put(store, "s2", steps[1], fence, diff(steps[1][0], steps[1][1].state)) > 0  # resent: a no-op
    assert store.r.llen(store._k("s2", "wmlog")) == 1
    same_state(store.get_working("s2"), steps[1][1].state)


def test_delete_removes_the_log_and_the_gap_index(store, run):
    _, steps = run
    _ingest(store, "s3", steps[:4], snapshot_every=100)
    from memory.store import Gap
    store.add_gap("s3", Gap(10.0, 20.0, "outage"))
    assert store.gaps_in("s3", 0, 15) and not store.gaps_in("s3", 20, 30)
    store.delete_stream("s3")
    assert not store.r.keys(f"{store.ns}:s:{{s3}}:*")
