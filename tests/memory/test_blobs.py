"""Every blob format round-trips; foreign blobs are refused; int8 error is bounded and measured;
the layout's byte sizes are what the blobs store."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from memory.codec import (FEATURES, TOKENS, decode_chunk, decode_features, decode_segment, decode_tokens,
                          encode_features, encode_segment, encode_tokens, header)
from memory.errors import IncompatibleBlob
from memory.layout import FeatureSet, KVLayout, TokenSet
from memory.quant import dequantize_int8, quantize_int8, relative_error

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=4, position_dims=3, dtype="float32", feature_dim=6)
FP = "fp-1"


def tokens(n: int, seed: int = 0, layout: KVLayout = LAYOUT) -> TokenSet:
    g = torch.Generator().manual_seed(seed)
    L = layout.num_layers
    return TokenSet(torch.randn(layout.kv_shape(n), generator=g).to(layout.torch_dtype),
                    torch.randn(layout.kv_shape(n), generator=g).to(layout.torch_dtype),
                    torch.randint(0, 1000, (L, 3, n), generator=g), torch.randint(-50, 50, (L, n), generator=g),
                    torch.rand(L, n, generator=g))


def features(n: int, seed: int = 0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    return FeatureSet(torch.randn(n, LAYOUT.feature_dim, generator=g), torch.randint(0, 99, (3, n), generator=g),
                      torch.arange(n, dtype=torch.int64), torch.rand(n, generator=g))


def same_tokens(a: TokenSet, b: TokenSet) -> bool:
    return all(torch.equal(x, y) for x, y in zip((a.keys, a.values, a.positions, a.serial, a.score),
                                                   (b.keys, b.values, b.positions, b.serial, b.score)))


def test_token_set_round_trip_is_exact_with_its_metadata():
    ts = tokens(5)
    back, meta = decode_tokens(encode_tokens(ts, LAYOUT, FP, kind="working", next_serial=42), LAYOUT, FP)
    assert same_tokens(ts, back)
    assert meta["kind"] == "working" and meta["next_serial"] == "42" and meta["quant"] == "none"


def test_feature_set_round_trip_is_exact():
    fs = features(4)
    back, _ = decode_features(encode_features(fs, LAYOUT, FP), LAYOUT, FP)
    for x, y in zip((fs.embeds, fs.positions, fs.serial, fs.score), (back.embeds, back.positions, back.serial,
                                                                      back.score)):
        assert torch.equal(x, y)
    assert isinstance(decode_chunk(encode_features(fs, LAYOUT, FP), LAYOUT, FP)[0], FeatureSet)
    assert isinstance(decode_chunk(encode_tokens(tokens(2), LAYOUT, FP), LAYOUT, FP)[0], TokenSet)


def test_empty_token_set_round_trips():
    back, _ = decode_tokens(encode_tokens(tokens(0), LAYOUT, FP), LAYOUT, FP)
    assert back.length == 0


def test_bfloat16_token_set_round_trip():
    layout = KVLayout(2, 2, 4, 3, "bfloat16", 6)
    ts = tokens(3, layout=layout)
    back, _ = decode_tokens(encode_tokens(ts, layout, FP), layout, FP)
    assert back.keys.dtype == torch.bfloat16 and same_tokens(ts, back)


def test_int8_error_is_within_half_a_step_and_measured():
    ts = tokens(64, seed=3)
    back, meta = decode_tokens(encode_tokens(ts, LAYOUT, FP, int8=True), LAYOUT, FP)
    assert meta["quant"] == "int8" and back.keys.dtype == torch.float32
    step = ts.keys.abs().amax(dim=-1, keepdim=True) / 127  # [L, Hkv, n, 1] one step per (layer, head, token)
    assert ((back.keys - ts.keys).abs() <= step / 2 + 1e-6).all()
    err = relative_error(ts.keys, back.keys)
    assert 0 < err < 0.01  # ~0.5% for Gaussian keys: lossy, but little
    assert torch.equal(back.serial, ts.serial) and torch.equal(back.positions, ts.positions)
    q, s = quantize_int8(torch.zeros(3, 4))  # all-zero rows do not divide by zero
    assert torch.equal(dequantize_int8(q, s, torch.float32), torch.zeros(3, 4))


def test_layout_byte_sizes_are_what_blobs_store():
    n = 7
    t = load(encode_tokens(tokens(n), LAYOUT, FP))
    assert sum(x.nbytes for x in t.values()) == LAYOUT.token_set_bytes(n) == n * (2 * 2 * 2 * 4 * 4 + 2 * (24 + 12))
    t8 = load(encode_tokens(tokens(n), LAYOUT, FP, int8=True))
    assert sum(x.nbytes for x in t8.values()) == LAYOUT.token_set_bytes(n, int8=True)
    tf = load(encode_features(features(n), LAYOUT, FP))
    assert sum(x.nbytes for x in tf.values()) == LAYOUT.feature_bytes(n) == n * (6 * 4 + 24 + 12)
    big = KVLayout(28, 4, 128, 3, "bfloat16", 3584)  # Qwen2.5-VL-7B's language model
    assert big.kv_token_bytes(False) == 57344 and big.kv_token_bytes(True) == 2 * 28 * 4 * 132
    assert big.feature_bytes(1) < big.token_set_bytes(1) / 7  # features: a fraction of the KV


@pytest.mark.parametrize("encode,decode", [
    (lambda: encode_tokens(tokens(3), LAYOUT, FP), decode_tokens),
    (lambda: encode_tokens(tokens(3), LAYOUT, FP, int8=True), decode_tokens),
    (lambda: encode_features(features(3), LAYOUT, FP), decode_features),
])
def test_foreign_blobs_are_refused(encode, decode):
    blob = encode()
    with pytest.raises(IncompatibleBlob, match="model"):
        decode(blob, LAYOUT, "another-model")
    for other in (KVLayout(2, 2, 4, 3, "float32", 8), KVLayout(3, 2, 4, 3, "float32", 6),
                  KVLayout(2, 2, 4, 3, "float16", 6)):
        with pytest.raises(IncompatibleBlob, match="layout"):
            decode(blob, other, FP)
    with pytest.raises(IncompatibleBlob):
        decode(blob[:-16], LAYOUT, FP)  # truncated body
    with pytest.raises(IncompatibleBlob, match="format"):
        decode_segment(blob, LAYOUT, FP)  # a chunk is not a prefix


def _forged(blob: bytes, **changes) -> bytes:
    meta = {**header(blob), **changes}
    return save(load(blob), metadata=meta)


def test_other_versions_formats_and_quantizations_are_refused():
    blob = encode_tokens(tokens(3), LAYOUT, FP)
    assert same_tokens(decode_tokens(_forged(blob), LAYOUT, FP)[0], tokens(3))  # the forgery itself is faithful
    with pytest.raises(IncompatibleBlob, match="version"):
        decode_tokens(_forged(blob, version="2"), LAYOUT, FP)
    with pytest.raises(IncompatibleBlob, match="quantization"):
        decode_tokens(_forged(blob, quant="int4"), LAYOUT, FP)
    with pytest.raises(IncompatibleBlob, match="format"):
        decode_features(blob, LAYOUT, FP)
    with pytest.raises(IncompatibleBlob, match="chunk format"):
        decode_chunk(encode_segment(_segment(), LAYOUT, FP), LAYOUT, FP)
    lying = save({k: v for k, v in load(blob).items() if k != "serial"}, metadata=header(blob))
    with pytest.raises(IncompatibleBlob, match="lacks"):
        decode_tokens(lying, LAYOUT, FP)
    wrong_shape = save({**load(blob), "score": torch.zeros(5)}, metadata=header(blob))
    with pytest.raises(IncompatibleBlob, match="do not fit"):
        decode_tokens(wrong_shape, LAYOUT, FP)
    assert json.loads(header(blob)["layout"])["feature_dim"] == 6
    assert header(blob)["format"] == TOKENS and header(encode_features(features(1), LAYOUT, FP))["format"] == FEATURES


def _segment():
    from encoders.base import EncodedSegment
    return EncodedSegment(torch.zeros(LAYOUT.kv_shape(2)), torch.zeros(LAYOUT.kv_shape(2)),
                          torch.zeros(3, 2, dtype=torch.int64), 2, 1, None)
