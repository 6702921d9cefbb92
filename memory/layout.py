"""The one owner of KV shapes and byte sizes. Everything else asks this module."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.base import EncodedSegment, ModelSpec

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    position_dims: int
    dtype: str

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "KVLayout":
        return cls(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.position_dims, spec.dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def kv_shape(self, tokens: int) -> tuple[int, int, int, int]:
        return (self.num_layers, self.num_kv_heads, tokens, self.head_dim)  # [L, Hkv, S, D]

    def positions_shape(self, tokens: int) -> tuple[int, int]:
        return (self.position_dims, tokens)  # [P, S]

    @property
    def bytes_per_token(self) -> int:
        kv = 2 * self.num_layers * self.num_kv_heads * self.head_dim * _DTYPE_BYTES[self.dtype]
        return kv + self.position_dims * 8

    def segment_bytes(self, tokens: int) -> int:
        return tokens * self.bytes_per_token

    def check(self, seg: EncodedSegment) -> None:
        """Raise ValueError if a segment does not have this layout."""
        n = seg.length
        if tuple(seg.keys.shape) != self.kv_shape(n) or tuple(seg.values.shape) != self.kv_shape(n):
            raise ValueError(f"KV shape {tuple(seg.keys.shape)} does not match layout {self.kv_shape(n)}")
        if tuple(seg.positions.shape) != self.positions_shape(n):
            raise ValueError(f"positions shape {tuple(seg.positions.shape)} != {self.positions_shape(n)}")
        if seg.keys.dtype != self.torch_dtype or seg.values.dtype != self.torch_dtype:
            raise ValueError(f"KV dtypes {seg.keys.dtype}/{seg.values.dtype} do not match layout {self.dtype}")


def concat_segments(segments: list[EncodedSegment], next_pos: int | None = None,
                    max_pos: int | None = None) -> EncodedSegment:
    """Join segments in the given (time) order along the token axis.

    `next_pos` is where text after the joined memory starts (default: the last segment's) and
    `max_pos` the largest position the stream has used (default: the segments' own); answers are
    decoded after it.
    Positions are kept as stored: gaps left by segments not retrieved stay gaps.
    """
    if not segments:
        raise ValueError("no segments to join")
    keys = torch.cat([s.keys for s in segments], dim=2)  # [L, Hkv, sum S, D]
    values = torch.cat([s.values for s in segments], dim=2)  # [L, Hkv, sum S, D]
    positions = torch.cat([s.positions for s in segments], dim=1)  # [P, sum S]
    return EncodedSegment(
        keys=keys, values=values, positions=positions,
        next_pos=segments[-1].next_pos if next_pos is None else next_pos,
        max_pos=max(s.max_pos for s in segments) if max_pos is None else max_pos, retrieval=None,
    )
