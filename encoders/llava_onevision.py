"""LLaVA-OneVision adapter (transformers' `LlavaOnevisionForConditionalGeneration`): a SigLIP tower, a 2-layer
projector and a Qwen2 language model with plain 1-D RoPE.

Token layout of a stream (ChatML, as the Qwen adapters; the family's chat template puts a video's
`<video>` tokens before the text, then a newline):

    prefix  <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    clip    Clip {a}s-{b}s: <video>*(T*p*p + 1)\\n                                   (repeated)
    suffix  {question}<|im_end|>\\n<|im_start|>assistant\\n

What this family does differently from the Qwen ones:

* **Whole frames at one fixed size.** Each frame is resized to the tower's `image_size` square and normalised
  (`vision_prep.frames_to_pixels`); there are no patches to lay out and no temporal patches: a clip may hold
  any number of frames (`clip_frames` 1).
* **Pooled frame tokens and one newline.** The model's own `get_video_features` pools each frame's n x n patch
  features bilinearly to p x p (p = ceil(n / 2)) and appends the learned `image_newline` once, after the last
  frame: a clip's `<video>` span is T*p*p + 1 tokens, frame-major. The newline belongs to no frame (frame id
  -1, like text) and is left out of the clip's retrieval keys (it is the same vector in every clip).
* **1-D positions.** Positions are [1, S] (`position_dims` 1): every segment starts at the stream's
  `next_pos`, and answer token i goes at max position + 1 + i, as `generate` places it on the whole prompt.
  The language model is a plain Qwen2 stack, so the 1-D text adapter's plumbing (`encoders.text_lm`: prefix,
  prefill at stored positions, the proxy pass, question keys, greedy answers) runs on it unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from encoders.base import ClipEncoding, ClipRequest, EncodedSegment, PreparedClip
from encoders.qwen2_5_vl import DEFAULT_SYSTEM, PROXY_OPENER, Qwen25VLAdapter
from encoders.retrieval import QueryKeys
from encoders.text_lm import TextLMAdapter
from encoders.vision_prep import PatchGeometry, frames_to_pixels


@dataclass(frozen=True)
class _Prepared(PreparedClip):
    pixels: torch.Tensor  # [T, C, H, W] resized, normalised frames on the model's device
    ids: torch.Tensor  # [S] the clip's token ids
    n_frames: int


class LlavaOnevisionAdapter(TextLMAdapter):
    family = "llava_onevision"

    def __init__(self, model, tokenizer, name: str, geometry: PatchGeometry, *, random_weights: bool,
                 retrieval_layer: int | None = None, system_prompt: str = DEFAULT_SYSTEM) -> None:
        vcfg = model.config.vision_config
        self.geo = geometry  # only its normalisation applies: the frame size is the tower's
        self.frame_size = vcfg.image_size
        side = math.ceil(vcfg.image_size // vcfg.patch_size / 2)  # the pooled grid side p
        self.tokens_per_frame = side * side
        self.video_token_id = model.config.video_token_id
        super().__init__(model, tokenizer, name, random_weights=random_weights, retrieval_layer=retrieval_layer,
                         system_prompt=system_prompt)

    # ---- the language model inside --------------------------------------------------------
    @staticmethod
    def lm_config(config):
        return config.text_config

    @property
    def lm(self):
        return self.model.model.language_model

    # ---- prompt pieces (token ids) -------------------------------------------------------
    def _template(self) -> tuple[str, str]:
        """ChatML (the Qwen2 language model's own turns), not the tokenizer's template: the stream's prefix up
        to the user's content, and the assistant opener after it (the proxy query)."""
        return f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n", PROXY_OPENER

    suffix_ids = Qwen25VLAdapter.suffix_ids  # the question, earlier turns rendered as ChatML

    def clip_frames(self) -> int:
        return 1

    def n_video_tokens(self, n_frames: int) -> int:
        """T frames of p*p pooled tokens each, then the one newline token."""
        return n_frames * self.tokens_per_frame + 1

    def clip_ids(self, n_video_tokens: int, start_s: float, end_s: float) -> list[int]:
        return self._text(f"Clip {start_s:.1f}s-{end_s:.1f}s: ") + [self.video_token_id] * n_video_tokens \
            + self._text("\n")

    def video_inputs(self, frames: np.ndarray) -> torch.Tensor:
        """[T, H, W, 3] uint8 -> pixel_values_videos [1, T, 3, size, size] on the model's device."""
        pixels = frames_to_pixels(frames, self.frame_size, self.geo.mean, self.geo.std)  # [T, 3, size, size]
        return torch.from_numpy(pixels)[None].to(self.device, self.dtype)

    # ---- clips ---------------------------------------------------------------------------
    def _video_features(self, pvs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Several clips' frames [1, T_b, 3, size, size] through the tower in one call (frames are encoded one
        by one) -> per clip, its `<video>` span's features [T_b*p*p + 1, F] (pooled frames, then the newline)."""
        if len({pv.shape[1] for pv in pvs}) == 1:
            pooled = self.model.model.get_video_features(torch.cat(list(pvs)), return_dict=True).pooler_output
            return [f.to(self.dtype) for f in pooled]  # [T*p*p + 1, F] each
        return [self._video_features([pv])[0] for pv in pvs]  # clips of different lengths: one call each

    def _clip_embeds(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """ids [S] and the clip's features [n_video, F] -> input embeddings [S, F] (features at the video
        tokens, as the model's own forward scatters them in)."""
        embeds = self.lm.get_input_embeddings()(ids)  # [S, F]
        return embeds.masked_scatter((ids == self.video_token_id)[:, None], feats)

    def _frame_ids(self, ids: torch.Tensor, n_frames: int) -> torch.Tensor:
        """ids [S] -> [S] int64: the frame of each pooled frame token, -1 for text and the trailing newline."""
        order = torch.cumsum((ids == self.video_token_id).long(), 0) - 1  # [S] index among the video tokens
        frame = torch.div(order, self.tokens_per_frame, rounding_mode="floor")
        return torch.where((ids == self.video_token_id) & (frame < n_frames), frame, torch.full_like(order, -1))

    def prepare_clip(self, req: ClipRequest) -> _Prepared:
        """The clip's frames resized and normalised, and its token ids (host-side work, the caller's thread)."""
        n = req.frames.shape[0]
        ids = torch.tensor(self.clip_ids(self.n_video_tokens(n), req.start_s, req.end_s), device=self.device)
        return _Prepared(req, self.video_inputs(req.frames), ids, n)

    def _encode(self, preps: Sequence[_Prepared], proxy: bool) -> list[ClipEncoding | EncodedSegment]:
        """Clips behind their own memories: one vision pass for all, then each clip's prefill (and, with
        `proxy`, the proxy pass behind it) on its own stream's cache. Results stay on the model's device."""
        feats = self._video_features([p.pixels for p in preps])
        out = []
        for p, f in zip(preps, feats):
            r = p.request
            embeds = self._clip_embeds(p.ids, f)  # [S, F]
            frame_ids = self._frame_ids(p.ids, p.n_frames)  # [S]
            segment, cache = self._prefill(embeds, r.past, frame_ids >= 0, r.key_rows)
            if not proxy:
                out.append(segment)
                continue
            q, pk = self._proxy(cache, segment.next_pos)
            out.append(ClipEncoding(segment, frame_ids, p.n_frames, embeds, q, pk))
        return out

    # ---- the VideoLM protocol -----------------------------------------------------------
    @torch.inference_mode()
    def encode_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> EncodedSegment:
        return self._encode([self.prepare_clip(ClipRequest(frames, fps, start_s, end_s, past, key_rows))],
                            proxy=False)[0]

    @torch.inference_mode()
    def ingest_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> ClipEncoding:
        return self._encode([self.prepare_clip(ClipRequest(frames, fps, start_s, end_s, past, key_rows))],
                            proxy=True)[0]

    @torch.inference_mode()
    def ingest_clips(self, preps: Sequence[_Prepared]) -> list[ClipEncoding]:
        """`ingest_clip` for each prepared clip: the frames of all go through the vision tower at once; each clip
        is then prefilled behind its own memory (no padded batch: each equals its own `ingest_clip`)."""
        return self._encode(preps, proxy=True)

    @torch.inference_mode()
    def example_keys(self, image: np.ndarray) -> QueryKeys:
        """A still as a one-frame clip behind the prompt prefix: its frame tokens' keys at the retrieval layers,
        minus their own mean, as rows scored against the clips' keys (search by example)."""
        keys = self.encode_clip(image[None], 1.0, 0.0, 0.0, self.encode_prefix(), key_rows=0).retrieval
        rows = keys.tokens.astype(np.float32)  # [C, S, D]
        return QueryKeys(rows - rows.mean(axis=1, keepdims=True), keys.mean)
