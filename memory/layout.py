"""The one owner of memory shapes and byte sizes. Everything else asks this module.

Two shapes of memory exist:

* `EncodedSegment` (encoders/base.py): a run of tokens as the model produced it, every layer
  holding the same tokens; positions [P, S] (or [L, P, S] once layers kept different tokens).
* `TokenSet`: tokens kept per layer by the compressor. Every layer keeps the same *number* of
  tokens, but each layer chooses its own; each token carries its stream-wide serial number
  (prototypes: -1 - frame serial) so copies can be recognised, and the score it was kept with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.base import EncodedSegment, ModelSpec

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
POSITION_BYTES = 8  # int64 position ids
SERIAL_BYTES = 8  # int64 serials
SCORE_BYTES = 4  # float32 scores
INT8_SCALE_BYTES = 4  # float32 scale per (layer, head, token) of int8 KV


@dataclass(frozen=True)
class TokenSet:
    keys: torch.Tensor  # [L, Hkv, n, D] rotated keys as the cache holds them
    values: torch.Tensor  # [L, Hkv, n, D]
    positions: torch.Tensor  # [L, P, n] int64 position ids the tokens were encoded at
    serial: torch.Tensor  # [L, n] int64 stream-wide token number; prototypes -1 - frame serial
    score: torch.Tensor  # [L, n] float32 score the token was kept with

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])

    @staticmethod
    def from_segment(seg: EncodedSegment, first_serial: int) -> "TokenSet":
        """All tokens of a segment, numbered from `first_serial`, with zero scores."""
        L, n = seg.keys.shape[0], seg.length
        pos = seg.positions if seg.positions.dim() == 3 else seg.positions[None].expand(L, -1, -1)  # [L, P, n]
        serial = torch.arange(first_serial, first_serial + n, dtype=torch.int64)[None].expand(L, -1)  # [L, n]
        return TokenSet(seg.keys, seg.values, pos.to(torch.int64).contiguous(), serial.contiguous(),
                        torch.zeros(L, n, dtype=torch.float32))

    def take(self, idx: torch.Tensor) -> "TokenSet":
        """The tokens at per-layer indices idx [L, m]."""
        kidx = idx[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[3])  # [L, Hkv, m, D]
        pidx = idx[:, None, :].expand(-1, self.positions.shape[1], -1)  # [L, P, m]
        return TokenSet(self.keys.gather(2, kidx), self.values.gather(2, kidx), self.positions.gather(2, pidx),
                        self.serial.gather(1, idx), self.score.gather(1, idx))

    def with_scores(self, score: torch.Tensor) -> "TokenSet":
        return TokenSet(self.keys, self.values, self.positions, self.serial, score.to(torch.float32))

    @staticmethod
    def cat(sets: list["TokenSet"]) -> "TokenSet":
        return TokenSet(torch.cat([s.keys for s in sets], 2), torch.cat([s.values for s in sets], 2),
                        torch.cat([s.positions for s in sets], 2), torch.cat([s.serial for s in sets], 1),
                        torch.cat([s.score for s in sets], 1))


@dataclass(frozen=True)
class FeatureSet:
    """Compressed visual features: the language model's input embeddings of the kept tokens of one
    clip, to be prefilled again at question time at their stored positions."""

    embeds: torch.Tensor  # [n, F]
    positions: torch.Tensor  # [P, n] int64
    serial: torch.Tensor  # [n] int64
    score: torch.Tensor  # [n] float32

    @property
    def length(self) -> int:
        return int(self.embeds.shape[0])

    def take(self, idx: torch.Tensor) -> "FeatureSet":
        return FeatureSet(self.embeds[idx], self.positions[:, idx], self.serial[idx], self.score[idx])

    @staticmethod
    def cat(sets: list["FeatureSet"]) -> "FeatureSet":
        return FeatureSet(torch.cat([s.embeds for s in sets]), torch.cat([s.positions for s in sets], 1),
                          torch.cat([s.serial for s in sets]), torch.cat([s.score for s in sets]))


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    position_dims: int
    dtype: str
    feature_dim: int

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "KVLayout":
        return cls(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.position_dims, spec.dtype,
                   spec.feature_dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES[self.dtype]

    def kv_shape(self, tokens: int) -> tuple[int, int, int, int]:
        return (self.num_layers, self.num_kv_heads, tokens, self.head_dim)  # [L, Hkv, S, D]

    def positions_shape(self, tokens: int) -> tuple[int, int]:
        return (self.position_dims, tokens)  # [P, S]

    def layered_positions_shape(self, tokens: int) -> tuple[int, int, int]:
        return (self.num_layers, self.position_dims, tokens)  # [L, P, S]

    # ---- byte sizes (tensor payload; a blob adds its JSON header) ---------------------------
    @property
    def bytes_per_token(self) -> int:
        """An uncompressed segment token: K and V of every layer plus its positions."""
        kv = 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes
        return kv + self.position_dims * POSITION_BYTES

    def segment_bytes(self, tokens: int) -> int:
        return tokens * self.bytes_per_token

    def kv_token_bytes(self, int8: bool) -> int:
        """K and V of one token in every layer, native dtype or int8 with a scale per head."""
        per_head = self.head_dim + INT8_SCALE_BYTES if int8 else self.head_dim * self.dtype_bytes
        return 2 * self.num_layers * self.num_kv_heads * per_head

    def token_set_bytes(self, tokens: int, int8: bool = False) -> int:
        """A TokenSet of `tokens` per layer: KV plus per-layer positions, serial and score."""
        per_layer_meta = self.position_dims * POSITION_BYTES + SERIAL_BYTES + SCORE_BYTES
        return tokens * (self.kv_token_bytes(int8) + self.num_layers * per_layer_meta)

    def feature_bytes(self, tokens: int) -> int:
        """Compressed visual features: one input embedding per token plus positions, serial and score."""
        return tokens * (self.feature_dim * self.dtype_bytes + self.position_dims * POSITION_BYTES
                         + SERIAL_BYTES + SCORE_BYTES)

    def check_features(self, fs: FeatureSet) -> None:
        n = fs.length
        if tuple(fs.embeds.shape) != (n, self.feature_dim) or fs.embeds.dtype != self.torch_dtype:
            raise ValueError(f"features {tuple(fs.embeds.shape)} {fs.embeds.dtype} do not match layout "
                             f"({n}, {self.feature_dim}) {self.dtype}")
        if tuple(fs.positions.shape) != self.positions_shape(n) or tuple(fs.serial.shape) != (n,) \
                or tuple(fs.score.shape) != (n,):
            raise ValueError("feature positions/serial/score shapes do not match the layout")

    # ---- checks --------------------------------------------------------------------------
    def check(self, seg: EncodedSegment) -> None:
        """Raise ValueError if a segment does not have this layout."""
        n = seg.length
        if tuple(seg.keys.shape) != self.kv_shape(n) or tuple(seg.values.shape) != self.kv_shape(n):
            raise ValueError(f"KV shape {tuple(seg.keys.shape)} does not match layout {self.kv_shape(n)}")
        if tuple(seg.positions.shape) not in (self.positions_shape(n), self.layered_positions_shape(n)):
            raise ValueError(f"positions shape {tuple(seg.positions.shape)} != {self.positions_shape(n)}")
        if seg.keys.dtype != self.torch_dtype or seg.values.dtype != self.torch_dtype:
            raise ValueError(f"KV dtypes {seg.keys.dtype}/{seg.values.dtype} do not match layout {self.dtype}")

    def check_tokens(self, ts: TokenSet) -> None:
        n = ts.length
        if tuple(ts.keys.shape) != self.kv_shape(n) or tuple(ts.values.shape) != self.kv_shape(n):
            raise ValueError(f"KV shape {tuple(ts.keys.shape)} does not match layout {self.kv_shape(n)}")
        if tuple(ts.positions.shape) != self.layered_positions_shape(n):
            raise ValueError(f"positions shape {tuple(ts.positions.shape)} != {self.layered_positions_shape(n)}")
        if tuple(ts.serial.shape) != (self.num_layers, n) or tuple(ts.score.shape) != (self.num_layers, n):
            raise ValueError("serial/score shapes do not match the layout")
        if ts.keys.dtype != self.torch_dtype or ts.values.dtype != self.torch_dtype:
            raise ValueError(f"KV dtypes {ts.keys.dtype}/{ts.values.dtype} do not match layout {self.dtype}")


def layered(positions: torch.Tensor, num_layers: int) -> torch.Tensor:
    """[P, S] or [L, P, S] -> [L, P, S]."""
    return positions if positions.dim() == 3 else positions[None].expand(num_layers, -1, -1)


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
    if any(s.positions.dim() == 3 for s in segments):
        L = keys.shape[0]
        positions = torch.cat([layered(s.positions, L) for s in segments], dim=2)  # [L, P, sum S]
    else:
        positions = torch.cat([s.positions for s in segments], dim=1)  # [P, sum S]
    return EncodedSegment(
        keys=keys, values=values, positions=positions,
        next_pos=segments[-1].next_pos if next_pos is None else next_pos,
        max_pos=max(s.max_pos for s in segments) if max_pos is None else max_pos, retrieval=None,
    )
