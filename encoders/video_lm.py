"""What the video families share on top of `encoders.chat_lm`: clips turned into blocks and ingested, the one-clip
forms of `ingest_clips` (defined once, here, not by each family), and search by example.

A family states how frames become the language model's input through three hooks:

* `clip_frames()`: frames per clip must be a multiple of this (Qwen-VL: the temporal patch size; whole-frame
  families: 1);
* `prepare_clip(request)`: the clip's host-side inputs (resized frames as patches or as whole frames, token ids,
  positions), in the caller's thread;
* `_blocks(prepared)`: several streams' prepared clips through the vision tower at once -> each clip's `Block`
  (its stored input embeddings, positions, frame ids, the tokens whose keys retrieve it).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch

from encoders.base import ClipEncoding, ClipRequest, EncodedSegment, PreparedClip
from encoders.chat_lm import Block, ChatLMAdapter
from encoders.retrieval import QueryKeys

DEFAULT_SYSTEM = "You are watching a video stream. Answer questions about what was seen."


class VideoLMAdapter(ChatLMAdapter, ABC):
    """A `ChatLMAdapter` whose blocks are video clips: implements `encoders.base.VideoLM`."""

    # ---- the language model inside a composite (vision + text) model --------------------------
    @staticmethod
    def lm_config(config):
        return config.text_config

    @property
    def lm(self):
        return self.model.model.language_model

    # ---- hooks: frames -> the language model's input (every family defines them; abstract: a family that
    # misses one cannot be built) ------------------------------------------------------------------------
    @abstractmethod
    def clip_frames(self) -> int: ...

    @abstractmethod
    def prepare_clip(self, request: ClipRequest) -> PreparedClip: ...

    @abstractmethod
    def _blocks(self, preps: Sequence[PreparedClip]) -> list[Block]: ...

    def _clip_label(self, start_s: float, end_s: float) -> list[int]:
        """The text before a clip's visual tokens (every family's clip opens with its time span)."""
        return self._text(f"Clip {start_s:.1f}s-{end_s:.1f}s: ")

    speech_tokens = 96  # at most this many tokens of a clip's transcript enter the context (the service sets it)

    def _speech_ids(self, speech: str) -> list[int]:
        """The text after a clip's visual tokens: what was said during the clip ("Said: ...\n", at most
        `speech_tokens` tokens of the transcript, in time order), [] when nothing was. Ordinary text tokens of the
        clip's block: prefilled, scored and compressed like any other."""
        speech = " ".join(speech.split())
        if not speech or self.speech_tokens <= 0:
            return []
        said = self._text(speech)[:self.speech_tokens]
        return self._text("Said: ") + said + self._text("\n")

    # ---- the VideoLM protocol -----------------------------------------------------------
    @torch.inference_mode()
    def ingest_clips(self, preps: Sequence[PreparedClip]) -> list[ClipEncoding]:
        """Each prepared clip prefilled behind its own stream's memory (one vision pass for all, then one padded
        prefill or one per clip, `batch_prefill`) with its proxy pass; each result equals that stream's own
        `ingest_clip` within float rounding. Results stay on the model's device but for the retrieval keys,
        which are copied to the host here (`ChatLMAdapter._retrieval`)."""
        return self._encode(self._blocks(preps))

    @torch.inference_mode()
    def example_keys(self, image: np.ndarray) -> QueryKeys:
        """A still, shown as a clip of identical frames (`clip_frames` of them) behind the prompt prefix: every one
        of its retrieving tokens' keys at the retrieval layers, minus their own mean (what all keys share would
        otherwise decide), as rows scored against the clips' keys: search by example."""
        frames = np.repeat(image[None], self.clip_frames(), axis=0)  # [T, H, W, 3]
        keys = self.encode_clip(frames, 1.0, 0.0, 0.0, self.encode_prefix(), key_rows=0).retrieval
        rows = keys.tokens.astype(np.float32)  # [C, S, D]
        return QueryKeys(rows - rows.mean(axis=1, keepdims=True), keys.mean)

    # ---- one clip: helpers on top of the protocol, not part of it --------------------------------
    @torch.inference_mode()
    def ingest_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> ClipEncoding:
        """One clip [T, H, W, 3] uint8 behind `past`: `ingest_clips` of that one clip."""
        return self.ingest_clips([self.prepare_clip(ClipRequest(frames, fps, start_s, end_s, past, key_rows))])[0]

    @torch.inference_mode()
    def encode_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> EncodedSegment:
        """One clip prefilled behind `past` (which ends at past.next_pos), without the proxy pass: only the clip's
        own segment (KV on the model's device, retrieval keys on the host)."""
        blocks = self._blocks([self.prepare_clip(ClipRequest(frames, fps, start_s, end_s, past, key_rows))])
        return self._prefill(blocks)[2][0]
