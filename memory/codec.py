"""Memory <-> safetensors blobs with a versioned header. Foreign blobs are refused, never misread.

Formats (the header's `format`; each has its own version):

    vigil.kv        an EncodedSegment (the stream prefix)
    vigil.tokens    a TokenSet: a KV chunk, or the working memory (kind=working, with its counters);
                    KV in the layout's dtype or int8 (quant=int8: int8 values + float32 scales)
    vigil.features  a FeatureSet: compressed visual features of a chunk, prefilled again at question time
    vigil.delta     a WorkingDelta: what one clip changed in the working memory (memory/delta.py), with the
                    chunk id it was written with (`chunk`)

Tensors may live on the model's device: encoding quantizes there and copies to the host only the bytes it
writes (`_to_host`); decoding returns host tensors (`TokenSet.to` / `WorkingState.to` move them back).
Every blob names the model fingerprint and the layout; a blob written by another model, layout,
format or version raises IncompatibleBlob with what differs.
"""
from __future__ import annotations

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from encoders.base import EncodedSegment, check_segment
from memory.delta import WorkingDelta
from memory.errors import IncompatibleBlob
from memory.layout import FeatureSet, KVLayout, TokenSet, check_features, check_tokens
from memory.quant import dequantize_int8, quantize_int8

FORMAT = "vigil.kv"
VERSION = "1"
TOKENS = "vigil.tokens"
FEATURES = "vigil.features"
DELTA = "vigil.delta"
VERSIONS = {FORMAT: "1", TOKENS: "1", FEATURES: "1", DELTA: "1"}
_DELTA_TENSORS = ("src", "score", "counts", "keys", "values", "positions", "serial")
_DELTA_COUNTERS = ("base_serial", "next_pos", "max_pos", "next_serial", "next_frame")


def _layout_json(layout: KVLayout) -> str:
    return json.dumps(layout.__dict__, sort_keys=True)


def _meta(fmt: str, layout: KVLayout, fingerprint: str, **extra) -> dict[str, str]:
    return {"format": fmt, "version": VERSIONS[fmt], "model": fingerprint, "layout": _layout_json(layout),
            **{k: str(v) for k, v in extra.items()}}


def header(blob: bytes) -> dict:
    """The vigil metadata of a blob, without reading its tensors."""
    if len(blob) < 8:
        raise IncompatibleBlob("blob too short to be a safetensors file")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > len(blob) - 8:
        raise IncompatibleBlob("blob has no valid safetensors header")
    try:
        head = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IncompatibleBlob(f"blob header is not JSON: {exc}") from exc
    meta = head.get("__metadata__") if isinstance(head, dict) else None
    if not isinstance(meta, dict):
        raise IncompatibleBlob("blob header carries no vigil metadata")
    return meta


def _open(blob: bytes, fmt: str, layout: KVLayout, fingerprint: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = header(blob)
    if meta.get("format") != fmt:
        raise IncompatibleBlob(f"blob format {meta.get('format')!r} is not {fmt!r}")
    if meta.get("version") != VERSIONS[fmt]:
        raise IncompatibleBlob(f"blob version {meta.get('version')!r} of {fmt}; this build reads version "
                               f"{VERSIONS[fmt]}")
    if meta.get("model") != fingerprint:
        raise IncompatibleBlob(
            f"blob was written by model {meta.get('model')!r}, this server runs {fingerprint!r}; "
            "re-ingest the stream with this model"
        )
    if meta.get("layout") != _layout_json(layout):
        raise IncompatibleBlob(f"blob layout {meta.get('layout')} differs from {layout}")
    try:
        return meta, load(blob)
    except SafetensorError as exc:
        raise IncompatibleBlob(f"blob body is damaged: {exc}") from exc


def _to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The one place memory leaves the model's device: before safetensors reads the bytes. CUDA tensors are
    copied into pinned host memory, all copies queued without blocking, then one synchronize per device;
    host tensors pass as they are."""
    out, devices = {}, set()
    for name, t in tensors.items():
        if t.device.type == "cuda":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            out[name] = host.copy_(t, non_blocking=True)
            devices.add(t.device)
        else:
            out[name] = t.cpu()  # host tensors: themselves; another device: a plain copy
    for dev in devices:
        torch.cuda.current_stream(dev).synchronize()  # the queued copies have landed before the bytes are read
    return out


def _save(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return save(_to_host(tensors), metadata=metadata)


def _shape_checked(check, value):
    try:
        check(value)
    except ValueError as exc:
        raise IncompatibleBlob(f"blob tensors do not fit its layout: {exc}") from exc
    return value


# ---- prefix segments -------------------------------------------------------------------------
def encode_segment(seg: EncodedSegment, layout: KVLayout, fingerprint: str) -> bytes:
    check_segment(layout, seg)
    tensors = {
        "keys": seg.keys.contiguous(),  # [L, Hkv, S, D]
        "values": seg.values.contiguous(),  # [L, Hkv, S, D]
        "positions": seg.positions.to(torch.int64).contiguous(),  # [P, S]
    }
    return _save(tensors, _meta(FORMAT, layout, fingerprint, next_pos=seg.next_pos, max_pos=seg.max_pos))


def decode_segment(blob: bytes, layout: KVLayout, fingerprint: str) -> EncodedSegment:
    meta, t = _open(blob, FORMAT, layout, fingerprint)
    seg = EncodedSegment(t["keys"], t["values"], t["positions"], int(meta["next_pos"]), int(meta["max_pos"]), None)
    return _shape_checked(lambda x: check_segment(layout, x), seg)


# ---- token sets (KV chunks, working memory) ---------------------------------------------------
def encode_tokens(ts: TokenSet, layout: KVLayout, fingerprint: str, *, int8: bool = False, **extra) -> bytes:
    """A TokenSet; `extra` (str()-able values) travels in the header and comes back from decode_tokens."""
    check_tokens(layout, ts)
    tensors = {"positions": ts.positions.contiguous(),  # [L, P, n]
               "serial": ts.serial.contiguous(),  # [L, n]
               "score": ts.score.to(torch.float32).contiguous()}  # [L, n]
    if int8:
        for name, x in (("keys", ts.keys), ("values", ts.values)):
            q, scale = quantize_int8(x)  # [L, Hkv, n, D] int8, [L, Hkv, n, 1] float32
            tensors[f"{name}_q"], tensors[f"{name}_scale"] = q.contiguous(), scale.contiguous()
    else:
        tensors["keys"], tensors["values"] = ts.keys.contiguous(), ts.values.contiguous()  # [L, Hkv, n, D]
    return _save(tensors, _meta(TOKENS, layout, fingerprint, quant="int8" if int8 else "none", **extra))


def decode_tokens(blob: bytes, layout: KVLayout, fingerprint: str) -> tuple[TokenSet, dict]:
    """(TokenSet in the layout's dtype, header metadata)."""
    meta, t = _open(blob, TOKENS, layout, fingerprint)
    quant = meta.get("quant")
    try:
        if quant == "int8":
            keys = dequantize_int8(t["keys_q"], t["keys_scale"], layout.torch_dtype)
            values = dequantize_int8(t["values_q"], t["values_scale"], layout.torch_dtype)
        elif quant == "none":
            keys, values = t["keys"], t["values"]
        else:
            raise IncompatibleBlob(f"blob quantization {quant!r} is unknown to this build")
        ts = TokenSet(keys, values, t["positions"], t["serial"], t["score"])
    except KeyError as exc:
        raise IncompatibleBlob(f"blob lacks tensor {exc}") from exc
    return _shape_checked(lambda x: check_tokens(layout, x), ts), meta


# ---- feature sets ------------------------------------------------------------------------------
def encode_features(fs: FeatureSet, layout: KVLayout, fingerprint: str, **extra) -> bytes:
    check_features(layout, fs)
    tensors = {"embeds": fs.embeds.contiguous(),  # [n, F]
               "positions": fs.positions.to(torch.int64).contiguous(),  # [P, n]
               "serial": fs.serial.contiguous(), "score": fs.score.to(torch.float32).contiguous()}  # [n]
    return _save(tensors, _meta(FEATURES, layout, fingerprint, **extra))


def decode_features(blob: bytes, layout: KVLayout, fingerprint: str) -> tuple[FeatureSet, dict]:
    meta, t = _open(blob, FEATURES, layout, fingerprint)
    try:
        fs = FeatureSet(t["embeds"], t["positions"], t["serial"], t["score"])
    except KeyError as exc:
        raise IncompatibleBlob(f"blob lacks tensor {exc}") from exc
    return _shape_checked(lambda x: check_features(layout, x), fs), meta


def decode_chunk(blob: bytes, layout: KVLayout, fingerprint: str) -> tuple[TokenSet | FeatureSet, dict]:
    """A stored chunk in whichever format its header names."""
    fmt = header(blob).get("format")
    if fmt == FEATURES:
        return decode_features(blob, layout, fingerprint)
    if fmt == TOKENS:
        return decode_tokens(blob, layout, fingerprint)
    raise IncompatibleBlob(f"blob format {fmt!r} is not a chunk format ({TOKENS}, {FEATURES})")


# ---- working-memory deltas ---------------------------------------------------------------------
def encode_delta(d: WorkingDelta, layout: KVLayout, fingerprint: str, **extra) -> bytes:
    """A delta; `extra` (e.g. chunk=<chunk id>) travels in the header."""
    tensors = {name: getattr(d, name).contiguous() for name in _DELTA_TENSORS}
    counters = {name: getattr(d, name) for name in _DELTA_COUNTERS}
    return _save(tensors, _meta(DELTA, layout, fingerprint, **counters, **extra))


def decode_delta(blob: bytes, layout: KVLayout, fingerprint: str) -> tuple[WorkingDelta, dict]:
    meta, t = _open(blob, DELTA, layout, fingerprint)
    try:
        d = WorkingDelta(**{name: t[name] for name in _DELTA_TENSORS},
                         **{name: int(meta[name]) for name in _DELTA_COUNTERS})
    except KeyError as exc:
        raise IncompatibleBlob(f"blob lacks {exc}") from exc
    hkv, D, L = layout.num_kv_heads, layout.head_dim, layout.num_layers
    if d.keys.shape[0] != hkv or d.keys.shape[-1] != D or d.src.shape[0] != L or d.counts.shape != (L,) \
            or int(d.counts.sum()) != d.serial.shape[0]:
        raise IncompatibleBlob(f"delta tensors do not fit layout {layout}")
    return d, meta
