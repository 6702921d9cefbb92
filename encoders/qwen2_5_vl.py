"""Qwen2.5-VL adapter: clips prefilled behind a memory, answers generated from a memory.

Token layout of a stream (ChatML, one video per clip so clips can be stored and retrieved alone):

    prefix  <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n
    clip    Clip {a}s-{b}s: <|vision_start|><|video_pad|>*n<|vision_end|>\n      (repeated)
    suffix  {question}<|im_end|>\n<|im_start|>assistant\n

Positions are the model's own multimodal RoPE ids (`get_rope_index`), offset by where the segment
starts; the answer is decoded at max(position)+1+i exactly as `generate` does.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from encoders import attention_probe
from encoders.retrieval import (BlockKeys, QueryKeys, block_keys, calibration_mean, middle_layer, question_keys,
                                 retrieval_layers)
from encoders.decoding import greedy, stream_text
from encoders.kv_cache import cache_of, tail
from encoders.base import ClipEncoding, EncodedSegment, ModelSpec, Turn
from encoders.vision_prep import PatchGeometry, frames_to_patches

DEFAULT_SYSTEM = "You are watching a video stream. Answer questions about what was seen."
PROXY_OPENER = "<|im_end|>\n<|im_start|>assistant\n"  # the chat template's assistant turn opener


class Qwen25VLAdapter:
    family = "qwen2_5_vl"

    def __init__(self, model, tokenizer, name: str, geometry: PatchGeometry, *,
                 random_weights: bool, retrieval_layer: int | None = None,
                 system_prompt: str = DEFAULT_SYSTEM) -> None:
        self.model = model
        attention_probe.install(model)  # outputs unchanged (SDPA); lets ingest read the proxy's queries
        self.tok = tokenizer
        self.geo = geometry
        self.system_prompt = system_prompt
        cfg = model.config
        tcfg = cfg.text_config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.num_heads = tcfg.num_attention_heads
        self.num_kv_heads = tcfg.num_key_value_heads
        self.head_dim = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads
        self.retrieval_layer = middle_layer(tcfg.num_hidden_layers) if retrieval_layer is None else retrieval_layer
        self.retrieval_layers = retrieval_layers(tcfg.num_hidden_layers)
        self.video_token_id = cfg.video_token_id
        self.vision_start_id = cfg.vision_start_token_id
        self.vision_end_id = cfg.vision_end_token_id
        self.eos_ids = {self.tok.convert_tokens_to_ids("<|im_end|>")}
        if self.tok.eos_token_id is not None:
            self.eos_ids.add(self.tok.eos_token_id)
        digest = hashlib.sha256(
            (cfg.to_json_string(use_diff=False) + name + system_prompt + str(self.retrieval_layer)
             + str(self.retrieval_layers)).encode()
        ).hexdigest()[:16]
        self.spec = ModelSpec(
            family=self.family, name=name, fingerprint=digest,
            num_layers=tcfg.num_hidden_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            position_dims=3, dtype=str(self.dtype).removeprefix("torch."),
            retrieval_dim=self.num_kv_heads * self.head_dim, random_weights=random_weights,
            feature_dim=self.feature_dim(cfg), num_heads=self.num_heads, retrieval_layers=self.retrieval_layers,
        )
        with torch.inference_mode():
            self._calibration = calibration_mean(  # [C, G, D] what every question's queries share
                self.model.model.language_model, lambda t: torch.tensor(self._text(t), device=self.device),
                self.retrieval_layers, self.num_kv_heads, self.num_heads, self.head_dim)

    def feature_dim(self, cfg) -> int:
        """Width of one stored input embedding (`_run_lm` reads what `_clip_embeds` writes)."""
        return cfg.text_config.hidden_size

    # ---- prompt pieces (token ids) -------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone (what a question adds to the prompt, before the chat template's own)."""
        return len(self._text(text))

    def prefix_ids(self) -> list[int]:
        return self._text(f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n")

    def clip_ids(self, n_video_tokens: int, start_s: float, end_s: float) -> list[int]:
        return (self._text(f"Clip {start_s:.1f}s-{end_s:.1f}s: ") + [self.vision_start_id]
                + [self.video_token_id] * n_video_tokens + [self.vision_end_id] + self._text("\n"))

    def suffix_ids(self, question: str, history: Sequence[Turn] = ()) -> list[int]:
        """The question closing the user turn, then the assistant opener. Earlier turns of a conversation come
        first, as ChatML renders them: the first question closes the user turn that holds the video, each answer
        is an assistant turn, each later question a user turn of its own."""
        turns = "".join(f"{t.question}<|im_end|>\n<|im_start|>assistant\n{t.answer}<|im_end|>\n<|im_start|>user\n"
                        for t in history)
        return self._text(f"{turns}{question}<|im_end|>\n<|im_start|>assistant\n")

    def proxy_ids(self) -> list[int]:
        return self._text(PROXY_OPENER)

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
        """ids [S] -> (positions [3, S] offset by `start`, next text position)."""
        if grid_thw is None:
            pos = torch.arange(ids.shape[0] + 1, device=self.device).view(1, -1).expand(3, -1)
        else:
            # One trailing text token makes the model's own rule report where the next text starts.
            probe = torch.cat([ids, ids.new_zeros(1)])[None]  # [1, S+1]
            mm_types = (probe == self.video_token_id).int() * 2  # text 0, video 2
            pos, _ = self.model.model.get_rope_index(
                probe, mm_token_type_ids=mm_types, video_grid_thw=grid_thw, second_per_grid_ts=second_per_grid,
            )
            pos = pos[:, 0]  # [3, S+1]
        pos = pos + start
        return pos[:, :-1].contiguous(), int(pos[0, -1])

    # ---- cache plumbing -------------------------------------------------------------------
    def _cache(self, memory: EncodedSegment | None) -> DynamicCache:
        return cache_of(memory, self.model.config, self.device, self.dtype)

    _tail = staticmethod(tail)

    def _retrieval_from_hidden(self, hidden_states, mask: torch.Tensor, key_rows: int) -> BlockKeys:
        """The hidden states entering each layer ([1, S, Hd] each) -> the masked tokens' `BlockKeys`."""
        return block_keys(self.model.model.language_model.layers, [h[0] for h in hidden_states], mask,
                          self.retrieval_layers, self.retrieval_layer, key_rows, self.num_kv_heads, self.head_dim)

    # ---- the VideoLM protocol -----------------------------------------------------------
    @torch.inference_mode()
    def encode_prefix(self) -> EncodedSegment:
        ids = torch.tensor(self.prefix_ids(), device=self.device)
        pos, next_pos = self._positions(ids, 0)
        cache = self._cache(None)
        self.model.model(input_ids=ids[None], position_ids=pos[:, None], cache=cache, use_cache=True)
        keys, values = self._tail(cache, 0)
        return EncodedSegment(keys.cpu(), values.cpu(), pos.cpu(), next_pos, int(pos.max()), None)

    def clip_ids_for(self, grid_thw: torch.Tensor, start_s: float, end_s: float) -> list[int]:
        """The clip's token ids for a video of grid `grid_thw` [1, 3] (one video span)."""
        return self.clip_ids(self.n_video_tokens(grid_thw), start_s, end_s)

    def _clip_embeds(self, ids: torch.Tensor, pv: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """ids [S] -> the language model's input embeddings [S, F]: text embeddings, visual features at the
        video tokens (what the model's own forward scatters in)."""
        core = self.model.model
        video = core.get_video_features(pv, grid_thw, return_dict=True)
        feats = torch.cat(video.pooler_output, dim=0).to(self.dtype)  # [n_video, F]
        embeds = core.get_input_embeddings()(ids).clone()  # [S, F]
        embeds[ids == self.video_token_id] = feats
        return embeds

    def _run_lm(self, embeds: torch.Tensor, pos: torch.Tensor, cache: DynamicCache, hidden: bool = False):
        """Stored input embeddings [S, F] at positions [3, S] through the decoder stack behind `cache`;
        with `hidden`, the output's hidden_states are the states entering each layer."""
        return self.model.model.language_model(inputs_embeds=embeds[None], position_ids=pos[:, None], cache=cache,
                                               use_cache=True, output_hidden_states=hidden)

    def _prefill_clip(self, frames, fps, start_s, end_s, past: EncodedSegment, key_rows: int):
        """One clip behind `past`: (segment, ids [S], embeds [S, F], grid_thw [1, 3], cache after the clip)."""
        pv, grid_thw, spg = self.video_inputs(frames, fps)
        ids = torch.tensor(self.clip_ids_for(grid_thw, start_s, end_s), device=self.device)
        pos, next_pos = self._positions(ids, past.next_pos, grid_thw, spg)
        embeds = self._clip_embeds(ids, pv, grid_thw)  # [S, F]
        cache = self._cache(past)
        out = self._run_lm(embeds, pos, cache, hidden=True)
        keys, values = self._tail(cache, past.length)
        retrieval = self._retrieval_from_hidden(out.hidden_states, ids == self.video_token_id, key_rows)
        segment = EncodedSegment(keys.cpu(), values.cpu(), pos.cpu(), next_pos, int(pos.max()), retrieval)
        return segment, ids, embeds, grid_thw, cache

    @torch.inference_mode()
    def encode_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> EncodedSegment:
        return self._prefill_clip(frames, fps, start_s, end_s, past, key_rows)[0]

    @torch.inference_mode()
    def ingest_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> ClipEncoding:
        """The clip's KV (as `encode_clip`), its input embeddings, and the proxy opener's queries
        read behind past + clip (a second, few-token pass whose KV is dropped again)."""
        segment, ids, embeds, grid_thw, cache = self._prefill_clip(frames, fps, start_s, end_s, past, key_rows)
        is_video = ids == self.video_token_id  # [S]
        # proxy opener at the text positions a question would take
        proxy = torch.tensor(self.proxy_ids(), device=self.device)
        ppos, _ = self._positions(proxy, segment.next_pos)
        with attention_probe.capture() as queries:
            self.model.model.language_model(input_ids=proxy[None], position_ids=ppos[:, None], cache=cache,
                                            use_cache=True)
        q = torch.stack([queries[i][0] for i in range(len(cache.layers))])  # [L, H, Q, D]
        pk = torch.stack([layer.keys[0, :, -proxy.shape[0]:] for layer in cache.layers])  # [L, Hkv, Q, D]
        groups = int(grid_thw[0, 1] // self.geo.merge_size) * int(grid_thw[0, 2] // self.geo.merge_size)
        frame_ids = torch.full((ids.shape[0],), -1, dtype=torch.long)
        frame_ids[is_video.cpu()] = torch.arange(int(is_video.sum())) // groups  # video tokens are t-major
        return ClipEncoding(segment, frame_ids, int(grid_thw[0, 0]), embeds.cpu(), q.cpu(), pk.cpu())

    @torch.inference_mode()
    def prefill_embeds(self, embeds: torch.Tensor, positions: torch.Tensor, past: EncodedSegment,
                       next_pos: int, max_pos: int) -> EncodedSegment:
        cache = self._cache(past)
        self._run_lm(embeds.to(self.device, self.dtype), positions.to(self.device), cache)  # [S, F] at [3, S]
        keys, values = self._tail(cache, past.length)
        return EncodedSegment(keys.cpu(), values.cpu(), positions.cpu(), next_pos, max_pos, None)

    @torch.inference_mode()
    def example_keys(self, image: np.ndarray) -> QueryKeys:
        """A still, shown as a clip of identical frames behind the prompt prefix: every one of its visual
        tokens' keys at the retrieval layers, minus their own mean (what all keys share would otherwise
        decide), as rows scored against the clips' keys: search by example."""
        frames = np.repeat(image[None], self.geo.temporal_patch_size, axis=0)  # [T, H, W, 3]
        keys = self.encode_clip(frames, 1.0, 0.0, 0.0, self.encode_prefix(), key_rows=0).retrieval
        rows = keys.tokens.astype(np.float32)  # [C, S, D]
        return QueryKeys(rows - rows.mean(axis=1, keepdims=True), keys.mean)

    @torch.inference_mode()
    def question_keys(self, question: str) -> QueryKeys:
        """The question alone (no memory) through the language model: its pre-RoPE queries at the retrieval
        layers, the calibration mean removed (`encoders.retrieval`)."""
        ids = torch.tensor(self._text(question), device=self.device)
        return question_keys(self.model.model.language_model, ids, self.retrieval_layers, self.retrieval_layer,
                             self._calibration, self.num_kv_heads, self.num_heads, self.head_dim)

    @torch.inference_mode()
    def answer_ids(self, memory: EncodedSegment, question: str, max_new_tokens: int,
                   history: Sequence[Turn] = ()) -> Iterator[int]:
        ids = torch.tensor(self.suffix_ids(question, history), device=self.device)
        pos, _ = self._positions(ids, memory.next_pos)
        cache = self._cache(memory)
        logits = self.model(input_ids=ids[None], position_ids=pos[:, None], cache=cache,
                            use_cache=True, logits_to_keep=1).logits  # [1, 1, V]
        first = max(memory.max_pos, int(pos.max())) + 1  # generate's rule: max position + 1 + i
        def position(p: int) -> torch.Tensor:  # [3, 1, 1] multimodal RoPE: one new token
            return torch.full((3, 1, 1), p, dtype=torch.long, device=self.device)

        yield from greedy(self.model, logits, cache, first, position, self.eos_ids, max_new_tokens)

    def answer(self, memory: EncodedSegment, question: str, max_new_tokens: int,
               history: Sequence[Turn] = ()) -> Iterator[str]:
        """Decoded text pieces, streamed."""
        return stream_text(self.tok, self.answer_ids(memory, question, max_new_tokens, history), self.eos_ids)
