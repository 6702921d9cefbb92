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
  The language model is a plain Qwen2 stack under a composite config (`text_config`), so the shared plumbing
  (`encoders.chat_lm`: prefix, prefill at stored positions, the proxy pass, question keys, greedy answers)
  runs on it with 1-D positions.
* **One prefill per clip.** A batch of clips shares the vision pass; each clip is then prefilled behind its
  own memory (`batch_prefill` False: no padded batch, so each equals its own `ingest_clip`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from encoders.base import ClipRequest, PreparedClip
from encoders.chat_lm import Block
from encoders.video_lm import DEFAULT_SYSTEM, VideoLMAdapter
from encoders.vision_prep import PatchGeometry, frames_to_pixels


@dataclass(frozen=True)
class _Prepared(PreparedClip):
    pixels: torch.Tensor  # [1, T, C, H, W] resized, normalised frames on the model's device
    ids: torch.Tensor  # [S] the clip's token ids
    n_frames: int


class LlavaOnevisionAdapter(VideoLMAdapter):
    family = "llava_onevision"
    batch_prefill = False  # one prefill per clip (the vision pass is shared)

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

    # ---- token layout -------------------------------------------------------------------
    def clip_frames(self) -> int:
        return 1

    def n_video_tokens(self, n_frames: int) -> int:
        """T frames of p*p pooled tokens each, then the one newline token."""
        return n_frames * self.tokens_per_frame + 1

    def clip_ids(self, n_video_tokens: int, start_s: float, end_s: float) -> list[int]:
        return self._clip_label(start_s, end_s) + [self.video_token_id] * n_video_tokens + self._text("\n")

    def video_inputs(self, frames: np.ndarray) -> torch.Tensor:
        """[T, H, W, 3] uint8 -> pixel_values_videos [1, T, 3, size, size] on the model's device."""
        pixels = frames_to_pixels(frames, self.frame_size, self.geo.mean, self.geo.std)  # [T, 3, size, size]
        return torch.from_numpy(pixels)[None].to(self.device, self.dtype)

    # ---- clips ---------------------------------------------------------------------------
    def prepare_clip(self, req: ClipRequest) -> _Prepared:
        """The clip's frames resized and normalised, and its token ids (host-side work, the caller's thread)."""
        n = req.frames.shape[0]
        ids = torch.tensor(self.clip_ids(self.n_video_tokens(n), req.start_s, req.end_s) + self._speech_ids(req.speech),
                           device=self.device)
        return _Prepared(req, self.video_inputs(req.frames), ids, n)

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

    def _blocks(self, preps: Sequence[_Prepared]) -> list[Block]:
        """One vision pass for all clips -> each clip's block at the stream's next 1-D positions; the frame tokens
        retrieve it (not the newline, the same vector in every clip)."""
        feats = self._video_features([p.pixels for p in preps])
        blocks = []
        for p, f in zip(preps, feats):
            r = p.request
            frame_ids = self._frame_ids(p.ids, p.n_frames)  # [S]
            pos, next_pos = self._positions(p.ids, r.past.next_pos)  # [1, S]
            blocks.append(Block(self._clip_embeds(p.ids, f), pos, next_pos, next_pos - 1, frame_ids >= 0, frame_ids,
                                p.n_frames, r.past, r.key_rows))
        return blocks
