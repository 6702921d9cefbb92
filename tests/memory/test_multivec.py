"""Late-interaction scoring, fusion and the per-stream index: hand-checked toys, then real chunks from the tiny
model written to a real Redis (index rebuilt from Redis equals the live one, also across retention merges;
the approximate path's recall against exact search)."""
from __future__ import annotations

import numpy as np
import pytest
import redis

from encoders.retrieval import covering_rows, retrieval_layers
from memory.fusion import SearchOptions, SignalScore, fuse
from memory.index import IndexRegistry, Query, StreamIndex
from memory.multivec import combined, maxsim, merged_keys, pad_rows, standardise
from memory.options import MemoryOptions
from memory.retention import Retention
from memory.store import ChunkRecord, IndexRow, MemoryStore, StreamRecord
from memory.working import WorkingState, context, step
from tests.memory.test_long_stream import stream_frames

# two channels, two query rows each, two blocks of two keys each (D = 2)
Q = np.array([[[1, 0], [0, 1]], [[1, 1], [-1, 0]]], np.float32)  # [C=2, Q=2, D=2]
K = np.array([
    [[[2, 0], [0, 1]], [[1, 0], [0, 0]]],  # block A: channel 0, channel 1
    [[[1, 1], [0, 3]], [[-1, 0], [0, 2]]],  # block B
], np.float32)  # [N=2, C=2, m=2, D=2]


def test_maxsim_by_hand():
    # A: ch0 rows -> max(2, 0) + max(0, 1) = 3; ch1 -> max(1, 0) + max(-1, 0) = 1
    # B: ch0 -> max(1, 0) + max(1, 3) = 4;     ch1 -> max(-1, 2) + max(1, 0) = 3
    assert maxsim(Q, K, n_layers=1).tolist() == [[4.0], [7.0]]
    assert maxsim(Q, K, n_layers=2).tolist() == [[3.0, 1.0], [4.0, 3.0]]


def test_layers_standardised_then_summed():
    # per layer over the two blocks: (3, 4) -> (-1, 1); (1, 3) -> (-1, 1)
    assert standardise(np.array([[3.0, 1.0], [4.0, 3.0]])).tolist() == [[-1.0, -1.0], [1.0, 1.0]]
    assert combined(Q, K, n_layers=2).tolist() == [-2.0, 2.0]
    assert standardise(np.array([[5.0], [5.0]])).tolist() == [[0.0], [0.0]]  # no spread: no information


def test_padding_and_merging_keep_the_max_and_the_size():
    k = np.arange(12, dtype=np.float32).reshape(1, 3, 4)  # [C=1, 3, D=4]
    p = pad_rows(k, 5)
    assert p.shape == (1, 5, 4) and (p[:, 3:] == k[:, :1]).all()
    q = np.ones((1, 1, 4), np.float32)
    assert maxsim(q, p[None], 1)[0, 0] == maxsim(q, k[None], 1)[0, 0]  # a repeated key never changes a max
    a, b = np.zeros((2, 4, 3), np.float16), np.ones((2, 4, 3), np.float16)
    m = merged_keys([a, b])
    assert m.shape == (2, 4, 3) and (m[:, :2] == 0).all() and (m[:, 2:] == 1).all()  # first half of each part


def test_covering_rows_picks_the_outlier_first_then_spreads():
    import torch

    keys = torch.tensor([[[1.0, 0.0]], [[1.0, 0.1]], [[0.9, 0.0]], [[-3.0, 0.0]], [[0.0, 1.0]]])  # [S=5, Hkv=1, D=2]
    rows = covering_rows(keys, 3)[0].tolist()
    assert rows[0] == 3  # farthest from the mean
    assert 4 in rows  # then the direction nobody else covers
    assert covering_rows(keys, 10).shape == (1, 5)  # never more rows than tokens


def test_fusion_by_hand():
    ranked = {"kv": [(1, 2.0), (2, 1.0), (3, 0.5)], "ocr": [(3, 0.8), (2, 0.1)]}
    opts = SearchOptions(kv_weight=1.0, ocr_weight=1.0, ocr_floor=0.3, relative_floor=0.0, rrf_k=0)
    out = fuse(ranked, opts)
    # kv: 1/1, 1/2, 1/3; ocr keeps only chunk 3 (0.1 is under the floor): 1/1
    assert [c for c, _, _ in out] == [3, 1, 2]
    assert [round(s, 4) for _, s, _ in out] == [1.3333, 1.0, 0.5]
    assert out[0][2] == (SignalScore("kv", 3, 0.5), SignalScore("ocr", 1, 0.8))
    assert out[2][2] == (SignalScore("kv", 2, 1.0),)  # the under-floor ocr score is not evidence
    assert [c for c, _, _ in fuse(ranked, opts.only("ocr"))] == [3]  # a signal alone
    with pytest.raises(ValueError):
        SearchOptions(kv_weight=-1)
    # the relative floor: a text row far under the signal's best is not evidence either
    near = {"ocr": [(5, 0.8), (6, 0.65), (7, 0.35)]}
    assert [c for c, _, _ in fuse(near, SearchOptions(relative_floor=0.75))] == [5, 6]  # 0.35 < 0.6
    assert [c for c, _, _ in fuse(near, SearchOptions(relative_floor=0.0))] == [5, 6, 7]
    assert [c for c, _, _ in fuse({"kv": [(1, -5.0), (2, -9.0)]}, SearchOptions())] == [1, 2]  # kv: no floors


# ---- real chunks in a real Redis ------------------------------------------------------------------

@pytest.fixture
def store(redis_url, namespace, tiny_adapter):
    r = redis.Redis.from_url(redis_url)
    yield MemoryStore(r, namespace, tiny_adapter.spec.layout, tiny_adapter.spec.fingerprint)
    for k in r.scan_iter(f"{namespace}:*"):
        r.delete(k)


def ingest(ad, store, sid: str, n_clips: int, opts: MemoryOptions, retention: Retention | None = None):
    store.create_stream(StreamRecord(stream_id=sid, source="synthetic", memory=opts))
    fence = store.claim(sid, "test", 600_000)
    prefix = ad.encode_prefix()
    store.put_prefix(sid, prefix)
    state = WorkingState.empty(prefix)
    rs = np.random.RandomState(1)
    for i, frames in enumerate(stream_frames(n_clips, seed=3)):
        enc = ad.ingest_clip(frames, 1.0, i * 8, (i + 1) * 8, context(prefix, state), key_rows=opts.retrieval_keys)
        done = step(prefix, state, enc, 0.0, opts)
        state = done.state
        rec = ChunkRecord(chunk_id=i, start_s=i * 8, end_s=(i + 1) * 8, frames=8, tokens=done.chunk.length,
                          keyframe_s=i * 8, span_start=done.span[0], span_end=done.span[1],
                          text=f"SIGN {i}" if i % 5 == 0 else "")
        dense = {"ocr": (v := rs.randn(16).astype(np.float32)) / np.linalg.norm(v)} if i % 5 == 0 else {}
        store.put_chunk(sid, rec, done.chunk, enc.segment.retrieval, b"jpeg", (i + 1) * 8, fence=fence, dense=dense,
                        working=state)
        if retention is not None:
            store.enforce_retention(sid, retention, fence=fence)


QUESTIONS = ["What happened at the gate?", "When did the red truck arrive?", "Who opened the door?",
             "What was written on the sign?", "How many people crossed the street?", "Where is the dog?"]


def queries(ad) -> list[Query]:
    rs = np.random.RandomState(7)
    return [Query(ad.question_keys(q), {"ocr": (v := rs.randn(16).astype(np.float32)) / np.linalg.norm(v)})
            for q in QUESTIONS]


def same_rankings(a: StreamIndex, b: StreamIndex, qs: list[Query]) -> None:
    for q in qs:
        ra, rb = a.ranked(q), b.ranked(q)
        assert ra.keys() == rb.keys()
        for name in ra:
            assert [c for c, _ in ra[name]] == [c for c, _ in rb[name]], name
            np.testing.assert_allclose([s for _, s in ra[name]], [s for _, s in rb[name]], rtol=1e-5, atol=1e-5)
        assert [(h.chunk, h.signals) for h in a.search(q, 5)] == [(h.chunk, h.signals) for h in b.search(q, 5)]


def fresh(store, sid, n_layers) -> StreamIndex:
    idx = StreamIndex(n_layers, store.epoch(sid))
    idx.add(store.chunk_index_rows(sid, store.chunk_ids(sid)))
    return idx


def test_index_rebuilt_from_redis_equals_the_live_one_also_across_merges(tiny_adapter, store):
    ad = tiny_adapter
    n_layers = len(ad.spec.retrieval_layers)
    assert ad.spec.retrieval_layers == retrieval_layers(ad.spec.layout.num_layers)
    opts = MemoryOptions(working_tokens=64, chunk_tokens=12, retrieval_keys=8)
    ingest(ad, store, "mv1", 12, opts)
    reg = IndexRegistry(store, n_layers)
    live = reg.synced("mv1")  # built incrementally from here on
    qs = queries(ad)
    row = store.chunk_index_rows("mv1", [0])[0]
    lay = ad.spec.layout
    assert isinstance(row, IndexRow) and row.keys.shape == (n_layers * lay.num_kv_heads, 8, lay.head_dim)
    assert set(row.dense) == {"ocr"} and row.record.text == "SIGN 0"
    same_rankings(live, fresh(store, "mv1", n_layers), qs)
    # different questions rank the chunks differently (the calibration removes what all questions share)
    orders = {tuple(c for c, _ in live.ranked(q)["kv"][:3]) for q in qs}
    assert len(orders) > 1

    # retention merges the oldest chunks: the registry rebuilds on the new epoch and equals a fresh build
    size = store.chunk_records("mv1")[0].bytes
    fence = store.r.get(store._k("mv1", "lease")).decode()  # the token ingest() claimed the stream with
    store.enforce_retention("mv1", Retention(max_bytes=8 * size), fence=fence)
    assert store.get_stream("mv1").consolidated > 0
    after = reg.synced("mv1")
    assert after is not live and len(after.records) < 12
    same_rankings(after, fresh(store, "mv1", n_layers), qs)
    merged = [r for r in after.records.values() if r.level > 0]
    assert merged and all(row.keys.shape[1] == 8 for row in store.chunk_index_rows("mv1", [r.chunk_id for r in merged]))
    assert any("SIGN 0" in r.text for r in merged)  # on-screen text survives the merge
    assert reg.synced("mv1") is after  # same epoch: kept, not rebuilt


def test_approximate_search_recall_against_exact(tiny_adapter, store):
    """A first pass over each chunk's first keys picking 20 % of the chunks, exact rescoring of those, vs exact
    late interaction over a real stream's keys."""
    ad = tiny_adapter
    opts = MemoryOptions(working_tokens=64, chunk_tokens=12, retrieval_keys=16)
    ingest(ad, store, "mv2", 80, opts)
    n_layers = len(ad.spec.retrieval_layers)
    idx = fresh(store, "mv2", n_layers)
    idx.keys.coarse_min = 16  # of 80 chunks: the first pass really selects
    qs = [Query(ad.question_keys(q)) for q in QUESTIONS + [f"Is there a {w} in the picture?" for w in
                                                            ("car", "bird", "tree", "boat", "man", "lamp")]]
    recalls = []
    for q in qs:
        exact = {c for c, _ in idx.ranked(q, mode="exact")["kv"][:5]}
        approx = {c for c, _ in idx.ranked(q, mode="approx")["kv"][:5]}
        recalls.append(len(exact & approx) / 5)
    assert np.mean(recalls) >= 0.9, recalls
    # auto switches to the approximate path above the exact limit, and a window still confines it
    small = StreamIndex(n_layers, exact_max_rows=64)
    small.add(store.chunk_index_rows("mv2", store.chunk_ids("mv2")))
    assert small.keys.approximate
    got = small.ranked(qs[0], window=(80.0, 160.0))["kv"]
    assert got and all(80.0 < small.records[c].end_s and small.records[c].start_s < 160.0 for c, _ in got)


def test_chunks_stored_before_representative_keys_are_still_found():
    """A stream with old chunks (mean key only) and new ones: the mean key ranks the old ones in kv's place."""
    from encoders.retrieval import QueryKeys

    rs = np.random.RandomState(3)
    unit = lambda v: (v / np.linalg.norm(v)).astype(np.float32)  # noqa: E731
    idx = StreamIndex(1)
    target = unit(rs.randn(8))
    old = [IndexRow(ChunkRecord(i, i * 8.0, i * 8 + 8.0, 8, 32, i * 8.0), target if i == 2 else unit(rs.randn(8)),
                    None, {}) for i in range(4)]
    new = [IndexRow(ChunkRecord(i, i * 8.0, i * 8 + 8.0, 8, 32, i * 8.0), unit(rs.randn(8)),
                    rs.randn(2, 4, 4).astype(np.float16), {}) for i in range(4, 8)]
    idx.add(old + new)
    q = Query(QueryKeys(rs.randn(2, 3, 4).astype(np.float32), target))
    hits = idx.search(q, 8)
    assert {h.chunk.chunk_id for h in hits} == set(range(8))
    old_hits = [h for h in hits if h.chunk.chunk_id < 4]
    assert old_hits[0].chunk.chunk_id == 2 and {s.name for s in old_hits[0].signals} == {"mean"}
    # widening: a later chunk with more keys than the first ones pads everyone to it
    idx.add([IndexRow(ChunkRecord(8, 64.0, 72.0, 8, 32, 64.0), unit(rs.randn(8)), rs.randn(2, 6, 4).astype(np.float16), {})])
    assert idx.keys.m == 6 and len(idx.keys.cids) == 5 and all(idx.keys.row(i).shape == (2, 6, 4) for i in range(5))
    assert len(idx.ranked(q)["kv"]) == 5


def test_float16_blocks_score_as_float32_and_the_byte_cap_evicts_and_rebuilds(tiny_adapter, store):
    """The index keeps keys as stored (float16, appended block by block); its scores equal late interaction over
    the same keys in float32 (`multivec.combined`) within float32 summation error; a registry over its byte cap
    drops the least recently used stream and rebuilds it from Redis, identical, when asked again."""
    from memory import index as index_mod
    from memory.multivec import combined

    ad = tiny_adapter
    n_layers = len(ad.spec.retrieval_layers)
    opts = MemoryOptions(working_tokens=64, chunk_tokens=12, retrieval_keys=8)
    ingest(ad, store, "fp1", 10, opts)
    ingest(ad, store, "fp2", 10, opts)
    rows = store.chunk_index_rows("fp1", store.chunk_ids("fp1"))
    idx = StreamIndex(n_layers)
    old_block = index_mod.BLOCK
    index_mod.BLOCK = 4  # several blocks, the last one partly filled
    try:
        for r in rows:  # appended one at a time, as ingest adds them
            idx.add([r])
        assert len(idx.keys.blocks) == 3
        stacked = np.stack([r.keys.astype(np.float32) for r in rows])  # [N, C, m, D]
        for q in queries(ad):
            want = combined(q.keys.tokens, stacked, n_layers)
            got = dict(idx.ranked(q, mode="exact")["kv"])
            assert np.allclose([got[r.record.chunk_id] for r in rows], want, atol=1e-4)
    finally:
        index_mod.BLOCK = old_block
    one = IndexRegistry(store, n_layers).synced("fp1").nbytes
    reg = IndexRegistry(store, n_layers, max_bytes=int(one * 1.5))
    a = reg.synced("fp1")
    reg.synced("fp2")  # over the cap: fp1, the least recently used, goes
    assert reg.rebuilds == 2 and reg.nbytes <= int(one * 1.5)
    again = reg.synced("fp1")
    assert again is not a and reg.rebuilds == 3
    same_rankings(again, a, queries(ad))
