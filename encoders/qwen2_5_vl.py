"""Qwen2.5-VL adapter: clips prefilled behind a memory, answers generated from a memory.

Token layout of a stream (ChatML, one video per clip so clips can be stored and retrieved alone):

    prefix  <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n
    clip    Clip {a}s-{b}s: <|vision_start|><|video_pad|>*n<|vision_end|>\n      (repeated)
    suffix  {question}<|im_end|>\n<|im_start|>assistant\n

What is this family's own (the rest is `encoders.chat_lm` / `encoders.video_lm`):

* **Patches.** Frames are resized to the patch grid and laid out as the vision tower's flattened patches
  (`vision_prep.frames_to_patches`); a clip holds a multiple of the temporal patch size of frames.
* **Multimodal RoPE** (`position_dims` 3): positions are the model's own (`get_rope_index`), computed on the host
  in `prepare_clip` and offset by where the clip starts; text takes the same position in all three rows, and the
  answer is decoded at max(position)+1+i exactly as `generate` does.
* **Vision special tokens** around each clip's `<|video_pad|>` run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from encoders.base import ClipRequest, PreparedClip
from encoders.chat_lm import Block
from encoders.video_lm import DEFAULT_SYSTEM, VideoLMAdapter
from encoders.vision_prep import PatchGeometry, frames_to_patches


@dataclass(frozen=True)
class _Prepared(PreparedClip):
    """One clip's model inputs, before the prefill."""
    pv: torch.Tensor  # [N, C*tp*p*p] patches
    grid_thw: torch.Tensor  # [1, 3]
    ids: torch.Tensor  # [S] token ids
    pos: torch.Tensor  # [3, S] position ids
    next_pos: int
    max_pos: int
    n_frames: int  # temporal patch groups
    groups: int  # video tokens per temporal group



class Qwen25VLAdapter(VideoLMAdapter):
    family = "qwen2_5_vl"
    position_dims = 3  # multimodal RoPE: t, h, w rows

    def __init__(self, model, tokenizer, name: str, geometry: PatchGeometry, *,
                 random_weights: bool, retrieval_layer: int | None = None,
                 system_prompt: str = DEFAULT_SYSTEM) -> None:
        self.geo = geometry
        cfg = model.config
        self.video_token_id = cfg.video_token_id
        self.vision_start_id = cfg.vision_start_token_id
        self.vision_end_id = cfg.vision_end_token_id
        super().__init__(model, tokenizer, name, random_weights=random_weights, retrieval_layer=retrieval_layer,
                         system_prompt=system_prompt)

    # ---- token layout -------------------------------------------------------------------
    def clip_ids(self, n_video_tokens: int, start_s: float, end_s: float) -> list[int]:
        return (self._clip_label(start_s, end_s) + [self.vision_start_id]
                + [self.video_token_id] * n_video_tokens + [self.vision_end_id] + self._text("\n"))

    def clip_ids_for(self, grid_thw: torch.Tensor, start_s: float, end_s: float) -> list[int]:
        """The clip's token ids for a video of grid `grid_thw` [1, 3] (one video span)."""
        return self.clip_ids(self.n_video_tokens(grid_thw), start_s, end_s)

    def clip_frames(self) -> int:
        return self.geo.temporal_patch_size

    def video_inputs(self, frames: np.ndarray, fps: float):
        """[T,H,W,3] uint8 -> (pixel_values_videos [N, C*tp*p*p], grid_thw [1,3], second_per_grid [1])."""
        patches, grid = frames_to_patches(frames, self.geo)
        pv = torch.from_numpy(patches).to(self.device, self.dtype)
        grid_thw = torch.tensor([grid], dtype=torch.long, device=self.device)
        second_per_grid = torch.tensor([self.geo.temporal_patch_size / fps], dtype=torch.float32)
        return pv, grid_thw, second_per_grid

    def n_video_tokens(self, grid_thw: torch.Tensor) -> int:
        m = self.geo.merge_size
        t, h, w = (int(x) for x in grid_thw[0])
        return t * (h // m) * (w // m)

    # ---- positions ----------------------------------------------------------------------
    def _positions(self, ids: torch.Tensor, start: int, grid_thw=None, second_per_grid=None) -> tuple[torch.Tensor, int]:
        """ids [S] -> (positions [3, S] offset by `start`, next text position); text alone without a grid."""
        if grid_thw is None:
            return super()._positions(ids, start)
        # One trailing text token makes the model's own rule report where the next text starts.
        probe = torch.cat([ids, ids.new_zeros(1)])[None]  # [1, S+1]
        mm_types = (probe == self.video_token_id).int() * 2  # text 0, video 2
        pos, _ = self.model.model.get_rope_index(
            probe, mm_token_type_ids=mm_types, video_grid_thw=grid_thw, second_per_grid_ts=second_per_grid,
        )
        pos = pos[:, 0] + start  # [3, S+1]
        return pos[:, :-1].contiguous(), int(pos[0, -1])

    # ---- clips --------------------------------------------------------------------------
    def prepare_clip(self, req: ClipRequest) -> _Prepared:
        """The clip's patches and token ids, its positions by the model's own rule computed on the host (from host
        ints: nothing is read back from the device), then moved to the device."""
        patches, grid = frames_to_patches(req.frames, self.geo)  # grid: host ints (t, h, w)
        pv = torch.from_numpy(patches).to(self.device, self.dtype)
        grid_host = torch.tensor([grid], dtype=torch.long)  # [1, 3]
        spg = torch.tensor([self.geo.temporal_patch_size / req.fps], dtype=torch.float32)
        ids = torch.tensor(self.clip_ids_for(grid_host, req.start_s, req.end_s) + self._speech_ids(req.speech))  # [S]
        pos, next_pos = self._positions(ids, req.past.next_pos, grid_host, spg)  # [3, S] on the host
        t, h, w = grid
        return _Prepared(req, pv, grid_host.to(self.device), ids.to(self.device), pos.to(self.device), next_pos,
                         int(pos.max()), t, (h // self.geo.merge_size) * (w // self.geo.merge_size))

    def _video_features(self, pvs: Sequence[torch.Tensor], grids: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Several videos through the vision tower in one call (it attends within each video only) -> per video,
        its features as the decoder reads them: [visual features [n, Hd]] plus, where the family has them, its
        deepstack features ([n, Hd] each, Qwen3-VL)."""
        video = self.model.model.get_video_features(torch.cat(list(pvs)), torch.cat(list(grids)), return_dict=True)
        kinds = [video.pooler_output] + list(getattr(video, "deepstack_features", None) or [])  # each: per video
        return [[kind[i].to(self.dtype) for kind in kinds] for i in range(len(pvs))]

    def _clip_embeds(self, ids: torch.Tensor, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """ids [S] and one video's features -> the stored input embeddings [S, F]: text embeddings with the visual
        features at the video tokens (what the model's own forward scatters in), then each further feature kind
        (deepstack) beside them, zeros at text tokens (adding 0.0 changes nothing)."""
        is_video = (ids == self.video_token_id)[:, None]  # [S, 1]
        base = self.lm.get_input_embeddings()(ids)  # [S, Hd]
        parts = []
        for i, feat in enumerate(feats):
            scattered = base.new_zeros(base.shape).masked_scatter(is_video, feat)  # [S, Hd]: feat at video tokens
            parts.append(torch.where(is_video, scattered, base) if i == 0 else scattered)
        return torch.cat(parts, dim=1)  # [S, Hd * kinds]

    def _blocks(self, preps: Sequence[_Prepared]) -> list[Block]:
        """One vision pass for all clips -> each clip's block: its embeddings, positions, and frame groups (every
        video token retrieves; text tokens are frame -1)."""
        feats = self._video_features([p.pv for p in preps], [p.grid_thw for p in preps])
        blocks = []
        for p, f in zip(preps, feats):
            is_video = p.ids == self.video_token_id  # [S]
            order = torch.cumsum(is_video.long(), 0) - 1  # [S] index among the video tokens (t-major)
            frame_ids = torch.where(is_video, torch.div(order, p.groups, rounding_mode="floor"),
                                    torch.full_like(order, -1))  # [S] frame group of each video token, -1 text
            blocks.append(Block(self._clip_embeds(p.ids, f), p.pos, p.next_pos, p.max_pos, is_video, frame_ids,
                                p.n_frames, p.request.past, p.request.key_rows))
        return blocks
