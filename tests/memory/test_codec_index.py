"""KV layout sizes, the safetensors segment codec, segment joins and the FAISS index."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from encoders.base import EncodedSegment, check_segment
from memory.codec import FORMAT, VERSION, decode_segment, encode_segment
from memory.errors import IncompatibleBlob
from encoders.retrieval import QueryKeys
from memory.fusion import SearchOptions
from memory.index import Query, StreamIndex
from memory.layout import KVLayout, concat_segments
from memory.store import ChunkRecord, IndexRow

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=4, position_dims=3, dtype="float32", feature_dim=6)
FP = "model-fingerprint-abc123"


def make_segment(tokens: int, start_pos: int = 0, seed: int = 0, layout: KVLayout = LAYOUT,
                 retrieval: bool = False) -> EncodedSegment:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(layout.kv_shape(tokens), generator=g, dtype=layout.torch_dtype)
    values = torch.randn(layout.kv_shape(tokens), generator=g, dtype=layout.torch_dtype)
    pos = torch.arange(start_pos, start_pos + tokens, dtype=torch.int64)
    positions = torch.stack([pos, pos + 100 * seed, pos * 2])[: layout.position_dims]  # [P, S]
    vec = None
    if retrieval:
        v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
        vec = v / np.linalg.norm(v)
    return EncodedSegment(keys, values, positions, next_pos=start_pos + tokens + 1,
                          max_pos=int(positions.max()), retrieval=vec)


def assert_same_kv(a: EncodedSegment, b: EncodedSegment) -> None:
    assert a.keys.dtype == b.keys.dtype and a.values.dtype == b.values.dtype
    assert torch.equal(a.keys, b.keys)
    assert torch.equal(a.values, b.values)
    assert torch.equal(a.positions, b.positions)
    assert (a.next_pos, a.max_pos) == (b.next_pos, b.max_pos)


# ---- KVLayout ----------------------------------------------------------------------------------


def test_layout_byte_sizes_hand_checked():
    # keys + values: 2 * L(2) * Hkv(2) * D(4) * 4 bytes = 128; positions: P(3) * 8 bytes = 24
    assert LAYOUT.bytes_per_token == 2 * 2 * 2 * 4 * 4 + 3 * 8 == 152
    assert LAYOUT.segment_bytes(0) == 0
    assert LAYOUT.segment_bytes(5) == 760
    half = KVLayout(num_layers=28, num_kv_heads=4, head_dim=128, position_dims=3, dtype="bfloat16",
                    feature_dim=3584)
    assert half.bytes_per_token == 2 * 28 * 4 * 128 * 2 + 24 == 57368
    # the sizes agree with the tensors the codec actually stores
    seg = make_segment(5)
    stored = seg.keys.nbytes + seg.values.nbytes + seg.positions.to(torch.int64).nbytes
    assert stored == LAYOUT.segment_bytes(5)


def test_layout_shapes_and_check():
    assert LAYOUT.kv_shape(7) == (2, 2, 7, 4)
    assert LAYOUT.positions_shape(7) == (3, 7)
    assert LAYOUT.torch_dtype is torch.float32
    check_segment(LAYOUT, make_segment(7))
    with pytest.raises(ValueError):
        check_segment(LAYOUT, make_segment(7, layout=KVLayout(2, 2, 8, 3, "float32", 6)))
    with pytest.raises(ValueError):
        check_segment(LAYOUT, make_segment(7, layout=KVLayout(2, 2, 4, 2, "float32", 6)))
    with pytest.raises(ValueError):
        check_segment(LAYOUT, make_segment(7, layout=KVLayout(2, 2, 4, 3, "float16", 6)))


# ---- codec -------------------------------------------------------------------------------------


def test_codec_round_trip_is_exact():
    seg = make_segment(6, start_pos=11, seed=3, retrieval=True)
    blob = encode_segment(seg, LAYOUT, FP)
    assert isinstance(blob, bytes)
    back = decode_segment(blob, LAYOUT, FP)
    assert_same_kv(back, seg)
    assert back.positions.dtype == torch.int64
    assert back.length == 6
    assert back.retrieval is None  # vectors are stored beside the blob, not in it
    # the header says what wrote it
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    assert meta["format"] == FORMAT and meta["version"] == VERSION and meta["model"] == FP
    assert (meta["next_pos"], meta["max_pos"]) == (str(seg.next_pos), str(seg.max_pos))


def test_codec_round_trip_bfloat16():
    layout = KVLayout(2, 2, 4, 3, "bfloat16", 6)
    seg = make_segment(4, seed=5, layout=layout)
    back = decode_segment(encode_segment(seg, layout, FP), layout, FP)
    assert back.keys.dtype == torch.bfloat16
    assert_same_kv(back, seg)


def test_codec_refuses_to_encode_a_segment_of_another_layout():
    seg = make_segment(3, layout=KVLayout(2, 2, 8, 3, "float32", 6))
    with pytest.raises(ValueError):
        encode_segment(seg, LAYOUT, FP)


def test_codec_refuses_other_fingerprint():
    blob = encode_segment(make_segment(3), LAYOUT, FP)
    with pytest.raises(IncompatibleBlob, match="model"):
        decode_segment(blob, LAYOUT, FP + "-other")


@pytest.mark.parametrize("other", [
    KVLayout(2, 2, 8, 3, "float32", 6),  # head_dim
    KVLayout(3, 2, 4, 3, "float32", 6),  # layers
    KVLayout(2, 1, 4, 3, "float32", 6),  # kv heads
    KVLayout(2, 2, 4, 1, "float32", 6),  # position dims
    KVLayout(2, 2, 4, 3, "float16", 6),  # dtype
])
def test_codec_refuses_other_layout(other):
    blob = encode_segment(make_segment(3), LAYOUT, FP)
    with pytest.raises(IncompatibleBlob, match="layout"):
        decode_segment(blob, other, FP)


def _forged_blob(**meta_overrides: str) -> bytes:
    """A blob identical to what encode_segment writes, except for the given header fields."""
    seg = make_segment(3)
    meta = {
        "format": FORMAT, "version": VERSION, "model": FP,
        "layout": json.dumps(LAYOUT.__dict__, sort_keys=True),
        "next_pos": str(seg.next_pos), "max_pos": str(seg.max_pos),
    }
    meta.update(meta_overrides)
    return save({"keys": seg.keys, "values": seg.values, "positions": seg.positions}, metadata=meta)


def test_forged_blob_with_current_header_decodes():
    # control for the next tests: the hand-built blob is accepted when nothing is changed
    assert_same_kv(decode_segment(_forged_blob(), LAYOUT, FP), make_segment(3))


def test_codec_refuses_other_version():
    with pytest.raises(IncompatibleBlob, match="version"):
        decode_segment(_forged_blob(version="999"), LAYOUT, FP)


def test_codec_refuses_other_format():
    with pytest.raises(IncompatibleBlob, match="format"):
        decode_segment(_forged_blob(format="someone.else"), LAYOUT, FP)


def test_codec_refuses_plain_safetensors_without_metadata():
    seg = make_segment(3)
    blob = save({"keys": seg.keys, "values": seg.values, "positions": seg.positions})
    assert load(blob)["keys"].shape == seg.keys.shape  # a valid safetensors file ...
    with pytest.raises(IncompatibleBlob):  # ... but not ours
        decode_segment(blob, LAYOUT, FP)


@pytest.mark.parametrize("blob", [
    b"",
    b"\x00" * 4,
    b"\x00" * 16,
    np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    (1 << 40).to_bytes(8, "little") + b"{}",
    (6).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc\xfb\xfa",
    (8).to_bytes(8, "little") + b"not json",
], ids=["empty", "short", "zero-header", "random", "huge-header", "not-utf8", "not-json"])
def test_codec_refuses_garbage(blob):
    with pytest.raises(IncompatibleBlob):
        decode_segment(blob, LAYOUT, FP)


@pytest.mark.parametrize("header", [b"[1]", b"123", b'"s"', b"null"], ids=["list", "number", "string", "null"])
def test_codec_refuses_header_that_is_json_but_not_an_object(header):
    blob = len(header).to_bytes(8, "little") + header
    with pytest.raises(IncompatibleBlob):
        decode_segment(blob, LAYOUT, FP)


def test_codec_refuses_truncated_blob_with_intact_header():
    blob = encode_segment(make_segment(4), LAYOUT, FP)
    with pytest.raises(IncompatibleBlob):
        decode_segment(blob[:-10], LAYOUT, FP)


# ---- concat_segments ---------------------------------------------------------------------------


def test_concat_segments_order_and_defaults():
    a, b, c = make_segment(2, 0, seed=1), make_segment(3, 10, seed=3), make_segment(1, 20, seed=2)
    # the second position row holds pos + 100 * seed: the largest position is b's, not the last segment's
    assert b.max_pos > c.max_pos > a.max_pos
    joined = concat_segments([a, b, c])
    assert joined.length == 6
    assert torch.equal(joined.keys[:, :, :2], a.keys)
    assert torch.equal(joined.keys[:, :, 2:5], b.keys)
    assert torch.equal(joined.keys[:, :, 5:], c.keys)
    assert torch.equal(joined.values, torch.cat([a.values, b.values, c.values], dim=2))
    assert joined.positions[0].tolist() == [0, 1, 10, 11, 12, 20]  # gaps are kept
    assert torch.equal(joined.positions, torch.cat([a.positions, b.positions, c.positions], dim=1))
    assert joined.next_pos == c.next_pos == 22
    assert joined.max_pos == b.max_pos == 312
    assert joined.retrieval is None
    check_segment(LAYOUT, joined)
    # order is the caller's
    rev = concat_segments([c, a])
    assert rev.positions[0].tolist() == [20, 0, 1]
    assert rev.next_pos == a.next_pos == 3
    assert rev.max_pos == c.max_pos


def test_concat_segments_overrides_and_empty():
    a, b = make_segment(2, 0, seed=1), make_segment(3, 10, seed=2)
    joined = concat_segments([a, b], next_pos=500, max_pos=499)
    assert (joined.next_pos, joined.max_pos) == (500, 499)
    assert concat_segments([a], next_pos=0, max_pos=0).next_pos == 0  # 0 is an override, not "unset"
    assert concat_segments([a], next_pos=0, max_pos=0).max_pos == 0
    with pytest.raises(ValueError):
        concat_segments([])


# ---- StreamIndex: the mean-key baseline signal (one vector per chunk, FAISS inner product) ----------
# (late interaction and fusion: tests/memory/test_multivec.py)

MEAN_ONLY = SearchOptions().only("mean")


def _rec(cid: int, start: float, end: float) -> ChunkRecord:
    return ChunkRecord(chunk_id=cid, start_s=start, end_s=end, frames=8, tokens=64, keyframe_s=start + 1.0)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def _row(cid, start, end, vec) -> IndexRow:
    return IndexRow(_rec(cid, start, end), vec, None, {})


def _q(v) -> Query:
    return Query(QueryKeys(np.zeros((1, 1, 3), np.float32), _unit(v)))


def _search(index, v, k, window=None):
    """(chunk id, mean-key score) of the top-k by the mean signal alone."""
    hits = index.search(_q(v), k, window, MEAN_ONLY)
    return [(h.chunk.chunk_id, next(s.score for s in h.signals if s.name == "mean")) for h in hits]


@pytest.fixture
def index() -> StreamIndex:
    idx = StreamIndex(1)
    idx.add([
        _row(10, 0.0, 4.0, _unit([1, 0, 0])),
        _row(11, 4.0, 8.0, _unit([0, 1, 0])),
        _row(12, 8.0, 12.0, _unit([0, 0, 1])),
        _row(13, 12.0, 16.0, _unit([3, 4, 0])),  # (0.6, 0.8, 0)
    ])
    return idx


def test_index_add_bookkeeping(index):
    assert index.dense["mean"].index.ntotal == 4
    assert index.last_id == 13
    assert sorted(index.records) == [10, 11, 12, 13]
    index.add([])
    assert index.dense["mean"].index.ntotal == 4
    index.add([_row(20, 16.0, 20.0, _unit([1, 1, 1]))])
    assert index.last_id == 20 and index.dense["mean"].index.ntotal == 5
    assert index.keys.cids == []  # rows without representative keys are not in the late-interaction signal


def test_index_topk_order_and_scores(index):
    # inner products with (0.8, 0.6, 0): 10 -> 0.8, 11 -> 0.6, 12 -> 0.0, 13 -> 0.48 + 0.48 = 0.96
    got = _search(index, [4, 3, 0], 3)
    assert [c for c, _ in got] == [13, 10, 11]
    np.testing.assert_allclose([s for _, s in got], [0.96, 0.8, 0.6], atol=1e-6)
    hits = index.search(_q([4, 3, 0]), 3, fusion=MEAN_ONLY)
    assert hits[0].chunk == _rec(13, 12.0, 16.0)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)  # fused: best first


def test_index_k_larger_than_candidates_returns_all(index):
    got = _search(index, [4, 3, 0], 50)
    assert [c for c, _ in got] == [13, 10, 11, 12]
    np.testing.assert_allclose([s for _, s in got], [0.96, 0.8, 0.6, 0.0], atol=1e-6)


def test_index_window_filter(index):
    # [3.9, 8.5] overlaps chunks 10 ([0, 4]), 11 ([4, 8]) and 12 ([8, 12]), not 13 ([12, 16])
    got = _search(index, [4, 3, 0], 10, window=(3.9, 8.5))
    assert [c for c, _ in got] == [10, 11, 12]
    np.testing.assert_allclose([s for _, s in got], [0.8, 0.6, 0.0], atol=1e-6)
    # touching an edge is not overlapping: [4, 8] excludes [0, 4] and [8, 12]
    assert [c for c, _ in _search(index, [4, 3, 0], 10, window=(4.0, 8.0))] == [11]
    # the best chunk overall is found when the window allows it, with k=1
    assert [c for c, _ in _search(index, [4, 3, 0], 1, window=(13.0, 100.0))] == [13]
    # k=1 inside a window that excludes the global best
    assert [c for c, _ in _search(index, [4, 3, 0], 1, window=(0.0, 12.0))] == [10]


def test_index_empty_results(index):
    assert _search(index, [1, 0, 0], 5, window=(100.0, 200.0)) == []
    assert _search(index, [1, 0, 0], 0) == []
    assert StreamIndex(1).search(_q([1, 0, 0]), 5) == []
