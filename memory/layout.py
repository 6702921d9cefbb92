"""The one owner of memory shapes and byte sizes. Everything else asks this module.

`KVLayout` (the shapes and byte sizes a model's spec declares, `ModelSpec.layout`) is defined in
`encoders.kv_layout`, beside the spec that carries it, and re-exported here. Two shapes of memory exist:

* `EncodedSegment` (encoders/base.py): a run of tokens as the model produced it, every layer
  holding the same tokens; positions [P, S] (or [L, P, S] once layers kept different tokens).
* `TokenSet`: tokens kept per layer by the compressor. Every layer keeps the same *number* of
  tokens, but each layer chooses its own; each token carries its stream-wide serial number
  (prototypes: -1 - frame serial) so copies can be recognised, and the score it was kept with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.base import EncodedSegment
from encoders.kv_layout import KVLayout  # noqa: F401  (memory code asks this module for it)


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
        L, n, dev = seg.keys.shape[0], seg.length, seg.keys.device
        pos = seg.positions if seg.positions.dim() == 3 else seg.positions[None].expand(L, -1, -1)  # [L, P, n]
        serial = torch.arange(first_serial, first_serial + n, dtype=torch.int64, device=dev)[None].expand(L, -1)
        return TokenSet(seg.keys, seg.values, pos.to(torch.int64).contiguous(), serial.contiguous(),  # serial [L, n]
                        torch.zeros(L, n, dtype=torch.float32, device=dev))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TokenSet":
        """The same tokens on `device` (e.g. a working memory read back from the store, onto the model's)."""
        return TokenSet(*(t.to(device, non_blocking=non_blocking) for t in
                          (self.keys, self.values, self.positions, self.serial, self.score)))

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
        """The features at indices idx [m] (index_select: no host sync on any device)."""
        return FeatureSet(self.embeds.index_select(0, idx), self.positions.index_select(1, idx),
                          self.serial.index_select(0, idx), self.score.index_select(0, idx))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "FeatureSet":
        return FeatureSet(*(t.to(device, non_blocking=non_blocking) for t in
                            (self.embeds, self.positions, self.serial, self.score)))

    @staticmethod
    def cat(sets: list["FeatureSet"]) -> "FeatureSet":
        return FeatureSet(torch.cat([s.embeds for s in sets]), torch.cat([s.positions for s in sets], 1),
                          torch.cat([s.serial for s in sets]), torch.cat([s.score for s in sets]))


def check_tokens(layout: KVLayout, ts: TokenSet) -> None:
    """Raise ValueError if a token set does not have `layout`'s shapes and dtype."""
    n = ts.length
    if tuple(ts.keys.shape) != layout.kv_shape(n) or tuple(ts.values.shape) != layout.kv_shape(n):
        raise ValueError(f"KV shape {tuple(ts.keys.shape)} does not match layout {layout.kv_shape(n)}")
    if tuple(ts.positions.shape) != layout.layered_positions_shape(n):
        raise ValueError(f"positions shape {tuple(ts.positions.shape)} != {layout.layered_positions_shape(n)}")
    if tuple(ts.serial.shape) != (layout.num_layers, n) or tuple(ts.score.shape) != (layout.num_layers, n):
        raise ValueError("serial/score shapes do not match the layout")
    if ts.keys.dtype != layout.torch_dtype or ts.values.dtype != layout.torch_dtype:
        raise ValueError(f"KV dtypes {ts.keys.dtype}/{ts.values.dtype} do not match layout {layout.dtype}")


def check_features(layout: KVLayout, fs: FeatureSet) -> None:
    """Raise ValueError if a feature set does not have `layout`'s shapes and dtype."""
    n = fs.length
    if tuple(fs.embeds.shape) != (n, layout.feature_dim) or fs.embeds.dtype != layout.torch_dtype:
        raise ValueError(f"features {tuple(fs.embeds.shape)} {fs.embeds.dtype} do not match layout "
                         f"({n}, {layout.feature_dim}) {layout.dtype}")
    if tuple(fs.positions.shape) != layout.positions_shape(n) or tuple(fs.serial.shape) != (n,) \
            or tuple(fs.score.shape) != (n,):
        raise ValueError("feature positions/serial/score shapes do not match the layout")


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
