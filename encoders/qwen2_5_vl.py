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
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from encoders import attention_probe
from encoders.retrieval import (BlockKeys, QueryKeys, blocks_keys, calibration_mean, middle_layer, question_keys,
                                 retrieval_layers)
from encoders.decoding import greedy, stream_text
from encoders.kv_cache import cache_of, tail
from encoders.kv_layout import KVLayout
from encoders.base import ClipEncoding, ClipRequest, EncodedSegment, ModelSpec, PreparedClip, Turn
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
            layout=KVLayout(num_layers=tcfg.num_hidden_layers, num_kv_heads=self.num_kv_heads,
                            head_dim=self.head_dim, position_dims=3, dtype=str(self.dtype).removeprefix("torch."),
                            feature_dim=self.feature_dim(cfg)),
            retrieval_dim=self.num_kv_heads * self.head_dim, random_weights=random_weights,
            num_heads=self.num_heads, retrieval_layers=self.retrieval_layers,
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
            pos = torch.arange(ids.shape[0] + 1, device=ids.device).view(1, -1).expand(3, -1)
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

    def _retrieval_from_hidden(self, hidden_states: list, masks: list[torch.Tensor], key_rows: int) -> list[BlockKeys]:
        """Per clip, the hidden states entering each layer ([S_b, Hd] each) -> its masked tokens' `BlockKeys`."""
        return blocks_keys(self.model.model.language_model.layers, hidden_states, masks, self.retrieval_layers,
                           self.retrieval_layer, key_rows, self.num_kv_heads, self.head_dim)

    # ---- the VideoLM protocol -----------------------------------------------------------
    @torch.inference_mode()
    def encode_prefix(self) -> EncodedSegment:
        """The stream's opening tokens; the KV stays on the model's device (ingest keeps it there)."""
        ids = torch.tensor(self.prefix_ids(), device=self.device)
        pos, next_pos = self._positions(ids, 0)
        cache = self._cache(None)
        self.model.model(input_ids=ids[None], position_ids=pos[:, None], cache=cache, use_cache=True)
        keys, values = self._tail(cache, 0)
        return EncodedSegment(keys, values, pos, next_pos, int(pos.max()), None)

    def clip_ids_for(self, grid_thw: torch.Tensor, start_s: float, end_s: float) -> list[int]:
        """The clip's token ids for a video of grid `grid_thw` [1, 3] (one video span)."""
        return self.clip_ids(self.n_video_tokens(grid_thw), start_s, end_s)

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
        base = self.model.model.get_input_embeddings()(ids)  # [S, Hd]
        parts = []
        for i, feat in enumerate(feats):
            scattered = base.new_zeros(base.shape).masked_scatter(is_video, feat)  # [S, Hd]: feat at video tokens
            parts.append(torch.where(is_video, scattered, base) if i == 0 else scattered)
        return torch.cat(parts, dim=1)  # [S, Hd * kinds]

    def _run_lm(self, embeds: torch.Tensor, pos: torch.Tensor, cache: DynamicCache, hidden: bool = False,
                mask: torch.Tensor | None = None):
        """Stored input embeddings [B, S, F] at positions [3, B, S] through the decoder stack behind `cache`;
        `mask` [B, K] (K = cached + S tokens; 0: padding) or None (nothing padded); with `hidden`, the output's
        hidden_states are the states entering each layer ([B, S, Hd] each)."""
        return self.model.model.language_model(inputs_embeds=embeds, position_ids=pos, cache=cache,
                                               attention_mask=mask, use_cache=True, output_hidden_states=hidden)

    def prepare_clip(self, req: ClipRequest) -> _Prepared:
        """The clip's patches and token ids, its positions by the model's own rule computed on the host (from host
        ints: nothing is read back from the device), then moved to the device."""
        patches, grid = frames_to_patches(req.frames, self.geo)  # grid: host ints (t, h, w)
        pv = torch.from_numpy(patches).to(self.device, self.dtype)
        grid_host = torch.tensor([grid], dtype=torch.long)  # [1, 3]
        spg = torch.tensor([self.geo.temporal_patch_size / req.fps], dtype=torch.float32)
        ids = torch.tensor(self.clip_ids_for(grid_host, req.start_s, req.end_s))  # [S] on the host
        pos, next_pos = self._positions(ids, req.past.next_pos, grid_host, spg)  # [3, S] on the host
        t, h, w = grid
        return _Prepared(req, pv, grid_host.to(self.device), ids.to(self.device), pos.to(self.device), next_pos,
                         int(pos.max()), t, (h // self.geo.merge_size) * (w // self.geo.merge_size))

    def _batched_past(self, pasts: Sequence[EncodedSegment], lengths: Sequence[int]):
        """Several streams' memories as one cache, left-padded to the longest: (cache, mask [B, P + S], P), where
        S = max(lengths) is the new tokens' padded length (right-padded) and mask is 0 at every pad."""
        B, P, S = len(pasts), max(p.length for p in pasts), max(lengths)
        cache = DynamicCache(config=self.model.config)
        mask = torch.zeros(B, P + S, dtype=torch.long, device=self.device)
        for b, (past, n) in enumerate(zip(pasts, lengths)):
            mask[b, P - past.length:P + n] = 1
        if P:
            for layer in range(pasts[0].keys.shape[0]):
                k = torch.stack([nn.functional.pad(p.keys[layer].to(self.device, self.dtype), (0, 0, P - p.length, 0))
                                 for p in pasts])  # [B, Hkv, P, D]
                v = torch.stack([nn.functional.pad(p.values[layer].to(self.device, self.dtype),
                                                   (0, 0, P - p.length, 0)) for p in pasts])
                cache.update(k, v, layer)
        return cache, mask, P

    def _prefill_clips(self, preps: Sequence[_Prepared]):
        """Prepared clips behind their own memories, in one pass: (embeds [S_b, F] each, cache, mask, P, segments).
        One clip runs unpadded (its cache is its memory's, exactly as the model's own prefill); several are
        padded, with a mask, and each reads its own rows back."""
        reqs = [p.request for p in preps]
        feats = self._video_features([p.pv for p in preps], [p.grid_thw for p in preps])
        embeds = [self._clip_embeds(p.ids, f) for p, f in zip(preps, feats)]  # [S_b, F] each
        lengths = [p.ids.shape[0] for p in preps]
        if len(reqs) == 1:
            cache, mask, P = self._cache(reqs[0].past), None, reqs[0].past.length
            out = self._run_lm(embeds[0][None], preps[0].pos[:, None], cache, hidden=True)
        else:
            cache, mask, P = self._batched_past([r.past for r in reqs], lengths)
            S = max(lengths)
            x = torch.stack([nn.functional.pad(e, (0, 0, 0, S - e.shape[0])) for e in embeds])  # [B, S, F]
            pos = torch.stack([nn.functional.pad(p.pos, (0, S - p.pos.shape[1]), value=p.max_pos)
                               for p in preps], dim=1)  # [3, B, S]
            out = self._run_lm(x, pos, cache, hidden=True, mask=mask)
        states = [[h[b, :n] for h in out.hidden_states] for b, n in enumerate(lengths)]  # [S_b, Hd] per layer
        masks = [p.ids == self.video_token_id for p in preps]
        by_rows: dict[int, list[int]] = {}  # clips asking for the same number of retrieval rows go together
        for b, r in enumerate(reqs):
            by_rows.setdefault(r.key_rows, []).append(b)
        retrieval: dict[int, BlockKeys] = {}
        for rows, members in by_rows.items():
            found = self._retrieval_from_hidden([states[b] for b in members], [masks[b] for b in members], rows)
            retrieval.update(zip(members, found))
        segments = []
        for b, (p, n) in enumerate(zip(preps, lengths)):
            keys = torch.stack([layer.keys[b, :, P:P + n] for layer in cache.layers])  # [L, Hkv, S_b, D]
            values = torch.stack([layer.values[b, :, P:P + n] for layer in cache.layers])
            segments.append(EncodedSegment(keys, values, p.pos, p.next_pos, p.max_pos, retrieval[b]))
        return embeds, cache, mask, P, segments

    @torch.inference_mode()
    def encode_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> EncodedSegment:
        return self._prefill_clips([self.prepare_clip(ClipRequest(frames, fps, start_s, end_s, past, key_rows))])[-1][0]

    @torch.inference_mode()
    def ingest_clip(self, frames: np.ndarray, fps: float, start_s: float, end_s: float,
                    past: EncodedSegment, key_rows: int = 64) -> ClipEncoding:
        return self.ingest_clips([self.prepare_clip(ClipRequest(frames, fps, start_s, end_s, past, key_rows))])[0]

    @torch.inference_mode()
    def ingest_clips(self, preps: Sequence[_Prepared]) -> list[ClipEncoding]:
        """Each clip's KV (as `encode_clip`), its input embeddings, and the proxy opener's queries read behind
        its past + clip (a second, few-token pass whose KV is dropped again); several streams' clips run as one
        batch. Everything stays on the model's device (no host sync)."""
        embeds, cache, mask, P, segments = self._prefill_clips(preps)
        proxy = torch.tensor(self.proxy_ids())  # [Q] at the text positions a question would take
        Q, B = proxy.shape[0], len(preps)
        ppos = torch.stack([self._positions(proxy, seg.next_pos)[0] for seg in segments], dim=1)  # [3, B, Q]
        proxy, ppos = proxy.to(self.device), ppos.to(self.device)
        pmask = None if mask is None else torch.cat([mask, mask.new_ones(B, Q)], dim=1)  # [B, P + S + Q]
        with attention_probe.capture() as queries:
            self.model.model.language_model(input_ids=proxy[None].expand(B, -1), position_ids=ppos, cache=cache,
                                            attention_mask=pmask, use_cache=True)
        out = []
        for b, (p, seg, e) in enumerate(zip(preps, segments, embeds)):
            q = torch.stack([queries[i][b] for i in range(len(cache.layers))])  # [L, H, Q, D]
            pk = torch.stack([layer.keys[b, :, -Q:] for layer in cache.layers])  # [L, Hkv, Q, D]
            is_video = p.ids == self.video_token_id  # [S]
            order = torch.cumsum(is_video.long(), 0) - 1  # [S] index among the video tokens (t-major)
            frame_ids = torch.where(is_video, torch.div(order, p.groups, rounding_mode="floor"),
                                    torch.full_like(order, -1))  # [S] frame group of each video token, -1 text
            out.append(ClipEncoding(seg, frame_ids, p.n_frames, e, q, pk))
        return out

    @torch.inference_mode()
    def prefill_embeds(self, embeds: torch.Tensor, positions: torch.Tensor, past: EncodedSegment,
                       next_pos: int, max_pos: int) -> EncodedSegment:
        cache = self._cache(past)
        self._run_lm(embeds.to(self.device, self.dtype)[None], positions.to(self.device)[:, None], cache)  # [S, F] at [3, S]
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
