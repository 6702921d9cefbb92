"""Qwen3-VL adapter (transformers' `Qwen3VLForConditionalGeneration`): the Qwen2.5-VL stream layout, patches and
multimodal RoPE (`encoders.qwen2_5_vl`, whose adapter it extends), with what this family does differently:

* **Frames carry their time as text.** The model reads a video as one span per temporal patch group, each
  after its timestamp: `<{t:.1f} seconds><|vision_start|><|video_pad|>*h*w<|vision_end|>`. Its own
  `get_rope_index` splits a video's grid into one-frame grids and walks the spans in order, so the clip's
  token ids must hold exactly these spans (`clip_ids_for`).
* **Interleaved multimodal RoPE** (t, h, w frequencies interleaved): the model's rotary embedding does it
  from the same [3, S] position ids; positions are `get_rope_index`'s, offset as for Qwen2.5-VL.
* **Deepstack.** The vision tower also returns features from some of its blocks; the decoder adds the
  i-th of them to the hidden states of the visual tokens after decoder layer i. A clip's stored input
  embedding is therefore the visual feature and its deepstack features side by side, [S, Hd * (1 + k)]
  (zeros for text tokens: adding 0.0 changes nothing), so a features chunk prefilled again gives the same
  KV; the hidden states entering each layer (retrieval keys) get the same additions.
* **q/k norms** in attention: `encoders.retrieval` applies them when it reads pre-RoPE keys and queries.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from encoders.qwen2_5_vl import Qwen25VLAdapter


class Qwen3VLAdapter(Qwen25VLAdapter):
    family = "qwen3_vl"

    def feature_dim(self) -> int:
        cfg = self.model.config
        return cfg.text_config.hidden_size * (1 + self._deepstack_layers(cfg))

    @staticmethod
    def _deepstack_layers(cfg) -> int:
        return len(cfg.vision_config.deepstack_visual_indexes)

    # ---- token layout -------------------------------------------------------------------
    def clip_ids_for(self, grid_thw: torch.Tensor, start_s: float, end_s: float) -> list[int]:
        """Clip {a}s-{b}s: then, per temporal patch group, its timestamp and its own vision span."""
        t, h, w = (int(x) for x in grid_thw[0])
        per_frame = (h // self.geo.merge_size) * (w // self.geo.merge_size)
        step = (end_s - start_s) / max(t, 1)
        ids = self._clip_label(start_s, end_s)
        for i in range(t):
            ids += (self._text(f"<{start_s + i * step:.1f} seconds>") + [self.vision_start_id]
                    + [self.video_token_id] * per_frame + [self.vision_end_id])
        return ids + self._text("\n")

    # ---- deepstack --------------------------------------------------------------------------
    # `_clip_embeds` (shared) stores the deepstack features beside the input embedding: [S, Hd * (1 + k)].
    def _run_lm(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache, hidden: bool = False,
                mask: torch.Tensor | None = None):
        """Stored [B, S, Hd * (1 + k)] embeddings through the decoder: the first Hd as input embeddings, the
        rest as the deepstack additions after layers 0..k-1 (at every token; text and padding tokens add zeros)."""
        B, S, hd = embeds.shape[0], embeds.shape[1], self.model.config.text_config.hidden_size
        k = embeds.shape[2] // hd - 1
        stack = embeds[..., hd:].reshape(B, S, k, hd)  # [B, S, k, Hd]
        out = self.lm(
            inputs_embeds=embeds[..., :hd], position_ids=position_ids, cache=cache, attention_mask=mask,
            use_cache=True, output_hidden_states=hidden,
            visual_pos_masks=torch.ones(B, S, dtype=torch.bool, device=embeds.device),
            deepstack_visual_embeds=[stack[:, :, i].reshape(B * S, hd) for i in range(k)],  # [B*S, Hd] row-major
        )
        if hidden:  # the recorded states are the layers' outputs; layer i + 1 reads them plus deepstack i
            states = list(out.hidden_states)
            for i in range(min(k, len(states) - 1)):
                states[i + 1] = states[i + 1] + stack[:, :, i]
            out.hidden_states = tuple(states)
        return out
