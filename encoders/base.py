"""The narrow boundary between the model families and the rest of the service."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from encoders.kv_layout import KVLayout
from encoders.retrieval import BlockKeys, QueryKeys


@dataclass(frozen=True)
class ModelSpec:
    """What a model family declares about itself; its `layout` is the KV layout every memory shape and byte
    size derives from (`memory.layout`)."""

    family: str  # e.g. "qwen2_5_vl"
    name: str  # local path, hub id or "tiny"
    fingerprint: str  # changes whenever KV produced by the model would differ (weights, config)
    layout: KVLayout  # L, Hkv, D, position rows P (3: multimodal RoPE, 1: 1-D), KV dtype, feature width F
    retrieval_dim: int  # size of the mean-key baseline vector (Hkv * D)
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

    def to(self, device: torch.device) -> "EncodedSegment":
        """The segment with its tensors on `device` (the same tensors when they are there already)."""
        return replace(self, keys=self.keys.to(device), values=self.values.to(device),
                       positions=self.positions.to(device))


def check_segment(layout: KVLayout, seg: EncodedSegment) -> None:
    """Raise ValueError if a segment does not have `layout`'s shapes and dtype."""
    n = seg.length
    if tuple(seg.keys.shape) != layout.kv_shape(n) or tuple(seg.values.shape) != layout.kv_shape(n):
        raise ValueError(f"KV shape {tuple(seg.keys.shape)} does not match layout {layout.kv_shape(n)}")
    if tuple(seg.positions.shape) not in (layout.positions_shape(n), layout.layered_positions_shape(n)):
        raise ValueError(f"positions shape {tuple(seg.positions.shape)} != {layout.positions_shape(n)}")
    if seg.keys.dtype != layout.torch_dtype or seg.values.dtype != layout.torch_dtype:
        raise ValueError(f"KV dtypes {seg.keys.dtype}/{seg.values.dtype} do not match layout {layout.dtype}")


@dataclass(frozen=True)
class ClipEncoding:
    """A clip prefilled behind a memory, plus what the memory compressor needs to score it."""

    segment: EncodedSegment  # the clip's own KV and positions
    frame_ids: torch.Tensor  # [S] int64: temporal frame group of each clip token within the clip, -1 for text
    n_frames: int  # temporal frame groups in the clip (the model's frame unit)
    embeds: torch.Tensor  # [S, F] the language model's input embeddings (text embeddings, visual features)
    proxy_queries: torch.Tensor  # [L, H, Q, D] rotated queries of the proxy opener read behind memory + clip
    proxy_keys: torch.Tensor  # [L, Hkv, Q, D] the proxy opener's own keys (its causal part of the softmax)


@dataclass(frozen=True)
class ClipRequest:
    """One stream's next clip, to be prefilled behind that stream's own memory (`VideoLM.ingest_clips`)."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    fps: float
    start_s: float
    end_s: float
    past: EncodedSegment  # the stream's prefix + working memory, ending at past.next_pos
    key_rows: int = 64  # representative retrieval keys per KV head and layer
    speech: str = ""  # what was said during the clip (encoders.speech): text tokens after its visual tokens


@dataclass(frozen=True)
class PreparedClip:
    """A clip's host-side model inputs (resized frames as patches, token ids, positions), made by
    `VideoLM.prepare_clip` in the caller's thread so the model's own thread only runs the model. Each adapter
    extends it with what its family needs."""

    request: ClipRequest


class VideoLM(Protocol):
    """A vision-language model that can prefill clips behind a memory and answer from a memory.

    Clips go in as batches (`prepare_clip` in each stream's thread, then `ingest_clips`); the one-clip forms
    (`ingest_clip`, `encode_clip`) are helpers defined once on top of these, in `encoders.video_lm.VideoLMAdapter`,
    not members every adapter implements."""

    spec: ModelSpec
    device: torch.device  # where the model, its KV and every stream's working memory live

    def clip_frames(self) -> int:
        """Frames per clip must be a multiple of this (temporal patch size)."""

    def encode_prefix(self) -> EncodedSegment:
        """The stream's opening tokens (system prompt, user turn opener) at position 0."""

    def prepare_clip(self, request: ClipRequest) -> PreparedClip:
        """The clip's host-side inputs (no model work): called by the stream's own thread."""

    def ingest_clips(self, clips: Sequence[PreparedClip]) -> list[ClipEncoding]:
        """Several streams' prepared clips, each prefilled behind its own `past` (one vision pass, then the
        prefill and the proxy pass): per clip its KV, positions, input embeddings, frame ids and the proxy
        opener's view of `past` + the clip, for query-agnostic scoring; its retrieval keys keep `key_rows`
        representative keys per KV head and layer. Each result equals that clip ingested alone within float
        rounding."""

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
