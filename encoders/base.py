"""The narrow boundary between the model families and the rest of the service."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from encoders.retrieval import BlockKeys, QueryKeys


@dataclass(frozen=True)
class ModelSpec:
    """What a model family declares about its KV cache; `memory.layout` derives every shape from it."""

    family: str  # e.g. "qwen2_5_vl"
    name: str  # local path, hub id or "tiny"
    fingerprint: str  # changes whenever KV produced by the model would differ (weights, config)
    num_layers: int
    num_kv_heads: int
    head_dim: int
    position_dims: int  # rows of position ids per token (3 for multimodal RoPE)
    dtype: str  # torch dtype name of the KV, e.g. "float32"
    retrieval_dim: int  # size of the mean-key baseline vector (Hkv * D)
    feature_dim: int  # size of one input embedding (a visual feature as the language model reads it)
    num_heads: int  # query heads; num_heads // num_kv_heads share each KV head (GQA group)
    random_weights: bool  # True for the seeded tiny model: its answers are noise
    retrieval_layers: tuple[int, ...] = ()  # decoder layers whose representative keys retrieve blocks


@dataclass(frozen=True)
class Turn:
    """One earlier question and its answer in a conversation (what `answer`'s `history` renders)."""

    question: str
    answer: str


@dataclass(frozen=True)
class EncodedSegment:
    """A run of tokens prefilled through the language model, with everything needed to reuse it.

    keys/values hold the rotated keys and the values exactly as the model's cache holds them.
    """

    keys: torch.Tensor  # [L, Hkv, S, D]
    values: torch.Tensor  # [L, Hkv, S, D]
    positions: torch.Tensor  # [P, S] int64 position ids the model used
    next_pos: int  # first text position after this segment (the model's own rule)
    max_pos: int  # largest position id in the segment
    retrieval: BlockKeys | None  # the block's retrieval vectors; None for text-only segments

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])


@dataclass(frozen=True)
class ClipEncoding:
    """A clip prefilled behind a memory, plus what the memory compressor needs to score it."""

    segment: EncodedSegment  # the clip's own KV and positions
    frame_ids: torch.Tensor  # [S] int64: temporal frame group of each clip token within the clip, -1 for text
    n_frames: int  # temporal frame groups in the clip (the model's frame unit)
    embeds: torch.Tensor  # [S, F] the language model's input embeddings (text embeddings, visual features)
    proxy_queries: torch.Tensor  # [L, H, Q, D] rotated queries of the proxy opener read behind memory + clip
    proxy_keys: torch.Tensor  # [L, Hkv, Q, D] the proxy opener's own keys (its causal part of the softmax)


class VideoLM(Protocol):
    """A vision-language model that can prefill clips behind a memory and answer from a memory."""

    spec: ModelSpec

    def clip_frames(self) -> int:
        """Frames per clip must be a multiple of this (temporal patch size)."""

    def encode_prefix(self) -> EncodedSegment:
        """The stream's opening tokens (system prompt, user turn opener) at position 0."""

    def encode_clip(
        self,
        frames: np.ndarray,  # [T, H, W, 3] uint8 RGB
        fps: float,
        start_s: float,
        end_s: float,
        past: EncodedSegment,
    ) -> EncodedSegment:
        """Prefill one clip behind `past` (which ends at past.next_pos); returns only the clip's KV."""

    def ingest_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> ClipEncoding:
        """`encode_clip` plus the proxy query's view of `past` + the clip, for query-agnostic scoring;
        the clip's retrieval keys keep `key_rows` representative keys per KV head and layer."""

    def prefill_embeds(self, embeds: torch.Tensor, positions: torch.Tensor, past: EncodedSegment,
                       next_pos: int, max_pos: int) -> EncodedSegment:
        """Prefill stored input embeddings [S, F] at their stored positions [P, S] behind `past`."""

    def count_tokens(self, text: str) -> int:
        """How many tokens the model's own tokenizer makes of `text` (no special tokens, no template)."""

    def question_keys(self, question: str) -> QueryKeys:
        """The question's retrieval queries, in the same spaces as the clips' `BlockKeys`."""

    def example_keys(self, image: np.ndarray) -> QueryKeys:
        """A still image [H, W, 3] uint8 as retrieval rows: its own keys, centred (search by example)."""

    def answer(self, memory: EncodedSegment, question: str, max_new_tokens: int,
               history: Sequence[Turn] = ()) -> Iterator[str]:
        """Greedy answer tokens (decoded text pieces) generated on `memory` followed by the question; earlier
        turns of a conversation (`history`, oldest first) are rendered with the chat template before it."""
