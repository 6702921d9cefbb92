"""Segments <-> safetensors blobs with a versioned header. Foreign blobs are refused, never misread."""
from __future__ import annotations

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from encoders.base import EncodedSegment
from memory.errors import IncompatibleBlob
from memory.layout import KVLayout

FORMAT = "vigil.kv"
VERSION = "1"


def encode_segment(seg: EncodedSegment, layout: KVLayout, fingerprint: str) -> bytes:
    layout.check(seg)
    meta = {
        "format": FORMAT, "version": VERSION, "model": fingerprint,
        "layout": json.dumps(layout.__dict__, sort_keys=True),
        "next_pos": str(seg.next_pos), "max_pos": str(seg.max_pos),
    }
    tensors = {
        "keys": seg.keys.contiguous(),  # [L, Hkv, S, D]
        "values": seg.values.contiguous(),  # [L, Hkv, S, D]
        "positions": seg.positions.to(torch.int64).contiguous(),  # [P, S]
    }
    return save(tensors, metadata=meta)


def _header(blob: bytes) -> dict:
    if len(blob) < 8:
        raise IncompatibleBlob("blob too short to be a safetensors file")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > len(blob) - 8:
        raise IncompatibleBlob("blob has no valid safetensors header")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IncompatibleBlob(f"blob header is not JSON: {exc}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise IncompatibleBlob("blob header carries no vigil metadata")
    return meta


def decode_segment(blob: bytes, layout: KVLayout, fingerprint: str) -> EncodedSegment:
    meta = _header(blob)
    if meta.get("format") != FORMAT:
        raise IncompatibleBlob(f"blob format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise IncompatibleBlob(f"blob version {meta.get('version')!r}; this build reads version {VERSION}")
    if meta.get("model") != fingerprint:
        raise IncompatibleBlob(
            f"blob was written by model {meta.get('model')!r}, this server runs {fingerprint!r}; "
            "re-ingest the stream with this model"
        )
    if meta.get("layout") != json.dumps(layout.__dict__, sort_keys=True):
        raise IncompatibleBlob(f"blob layout {meta.get('layout')} differs from {layout}")
    try:
        t = load(blob)
    except SafetensorError as exc:
        raise IncompatibleBlob(f"blob body is damaged: {exc}") from exc
    seg = EncodedSegment(t["keys"], t["values"], t["positions"], int(meta["next_pos"]), int(meta["max_pos"]), None)
    layout.check(seg)
    return seg
