"""The KV layout a model declares (`ModelSpec.layout`): every memory shape and byte size derives from it.

It lives beside the model spec because a model declares it, and imports nothing from the project, so both
`encoders` (whose specs carry it) and `memory` (whose `memory.layout` re-exports it) can use it. Whether a
tensor record fits a layout is checked beside each record's type: `encoders.base.check_segment`,
`memory.layout.check_tokens` / `check_features`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
POSITION_BYTES = 8  # int64 position ids
SERIAL_BYTES = 8  # int64 serials
SCORE_BYTES = 4  # float32 scores
INT8_SCALE_BYTES = 4  # float32 scale per (layer, head, token) of int8 KV


@dataclass(frozen=True)
class KVLayout:
    """A model's KV cache, positions and stored input embeddings, as its adapter declares them."""

    num_layers: int  # L decoder layers
    num_kv_heads: int  # Hkv
    head_dim: int  # D
    position_dims: int  # P rows of position ids per token: 3 for multimodal RoPE, 1 for 1-D positions
    dtype: str  # torch dtype name of the KV, e.g. "float32"
    feature_dim: int  # F: one stored input embedding (a visual feature as the language model reads it)

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
