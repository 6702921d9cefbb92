"""What every chat language-model adapter shares: the text adapter (`encoders.text_lm`) and, through
`encoders.video_lm`, the video families. Each family file holds only what is its own.

Shared here: the decoder stack's `ModelSpec`, the chat template's pieces (prefix, question suffix, proxy opener),
the cache plumbing, the prefill of blocks of input embeddings (clips, text chunks) behind their own streams'
memories with their retrieval keys and the proxy pass, prefilling stored embeddings again, the question's
retrieval queries, and greedy answers at the positions `generate` would use.

A family states what differs through these hooks:

* **positions**: `position_dims` 1 (1-D RoPE, positions [1, S]) or 3 (multimodal RoPE, [3, S]). Text tokens take
  the same position in every row (`_positions`); a family whose visual tokens have positions of their own
  computes those itself (Qwen-VL: `get_rope_index`). `_position_ids` turns stored positions into the decoder's
  `position_ids`.
* **the decoder stack**: `lm_config` (a composite config's `text_config`), `lm` (embeddings, layers, final norm;
  no LM head), `feature_dim` (one stored input embedding's width) and `_run_lm` (stored embeddings through the
  stack; Qwen3-VL adds its deepstack features there).
* **special tokens and the chat template**: `_template` (the stream's prefix text, and the assistant opener that
  follows the user's content), `_between_turns` (from an answer to the next user content), `QUESTION` (how the
  first question closes the stream's user turn), `END_OF_TURN` (the stop token besides the tokenizer's eos).
  The defaults are ChatML's.
* **batching**: `batch_prefill` (several streams' blocks in one padded prefill, or one prefill per block).

Host copies: the blocks' KV, positions, embeddings, frame ids and proxy queries stay on the model's device; the
retrieval keys are read back to the host once per prefill (`encoders.retrieval.blocks_keys`: they are what
the store writes to Redis with the chunk and what the index scores on the host), and `prefill_embeds` returns
its KV on the host.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from encoders import attention_probe
from encoders.base import ClipEncoding, EncodedSegment, ModelSpec, Turn
from encoders.decoding import greedy, stream_text
from encoders.kv_cache import cache_of, tail
from encoders.kv_layout import KVLayout
from encoders.retrieval import BlockKeys, QueryKeys, blocks_keys, calibration_mean, middle_layer, question_keys, \
    retrieval_layers

CHATML_OPENER = "<|im_end|>\n<|im_start|>assistant\n"  # closes the user turn, opens the assistant's
CHATML_NEXT_USER = "<|im_end|>\n<|im_start|>user\n"  # closes an assistant turn, opens the next user turn


@dataclass(frozen=True)
class Block:
    """A run of tokens ready to be prefilled behind its stream's memory (a clip, a text chunk), on the device."""

    embeds: torch.Tensor  # [S, F] input embeddings as stored (F = `feature_dim`)
    positions: torch.Tensor  # [P, S] int64 position ids
    next_pos: int  # first text position after the block (the model's own rule)
    max_pos: int  # largest position id in the block
    retrieve: torch.Tensor  # [S] bool: the tokens whose keys retrieve the block
    frame_ids: torch.Tensor  # [S] int64 frame group of each token, -1 for text
    n_frames: int  # frame groups in the block (0 for text)
    past: EncodedSegment  # the stream's prefix + working memory, ending at the block's first position
    key_rows: int  # representative retrieval keys per KV head and layer (<= 0: every token)


class ChatLMAdapter:
    """A chat language model reading blocks of tokens into a stream's memory and answering from a memory."""

    family = ""
    position_dims = 1  # P: 1 for 1-D RoPE; 3 for multimodal RoPE
    batch_prefill = True  # several blocks in one padded prefill; False: one prefill per block
    QUESTION = "{q}"  # the first question as it closes the stream's user turn
    END_OF_TURN = "<|im_end|>"

    def __init__(self, model, tokenizer, name: str, *, random_weights: bool, retrieval_layer: int | None = None,
                 system_prompt: str) -> None:
        self.model = model
        attention_probe.install(model)  # outputs unchanged (SDPA); lets ingest read the proxy's queries
        self.tok = tokenizer
        self.system_prompt = system_prompt
        cfg = self.lm_config(model.config)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.retrieval_layer = middle_layer(cfg.num_hidden_layers) if retrieval_layer is None else retrieval_layer
        self.retrieval_layers = retrieval_layers(cfg.num_hidden_layers)
        self.eos_ids = {self.tok.convert_tokens_to_ids(self.END_OF_TURN)} - {None, self.tok.unk_token_id}
        if self.tok.eos_token_id is not None:
            self.eos_ids.add(self.tok.eos_token_id)
        self._head, self._opener = self._template()
        digest = hashlib.sha256(
            (model.config.to_json_string(use_diff=False) + name + system_prompt + str(self.retrieval_layer)
             + str(self.retrieval_layers)).encode()
        ).hexdigest()[:16]
        self.spec = ModelSpec(
            family=self.family, name=name, fingerprint=digest,
            layout=KVLayout(num_layers=cfg.num_hidden_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                            position_dims=self.position_dims, dtype=str(self.dtype).removeprefix("torch."),
                            feature_dim=self.feature_dim()),
            retrieval_dim=self.num_kv_heads * self.head_dim, random_weights=random_weights,
            num_heads=self.num_heads, retrieval_layers=self.retrieval_layers,
        )
        with torch.inference_mode():
            self._calibration = calibration_mean(  # [C, G, D] what every question's queries share
                self.lm, lambda t: torch.tensor(self._text(t), device=self.device),
                self.retrieval_layers, self.num_kv_heads, self.num_heads, self.head_dim)

    # ---- hooks: the decoder stack ----------------------------------------------------------
    @staticmethod
    def lm_config(config):
        """The decoder stack's config (a composite config's `text_config`)."""
        return config

    @property
    def lm(self):
        """The decoder stack (embeddings, layers, final norm; no LM head)."""
        return self.model.model

    def feature_dim(self) -> int:
        """Width of one stored input embedding (what `_run_lm` reads)."""
        return self.lm_config(self.model.config).hidden_size

    def _run_lm(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache, hidden: bool = False,
                mask: torch.Tensor | None = None):
        """Stored input embeddings [B, S, F] at `position_ids` (`_position_ids`) through the decoder stack behind
        `cache`; `mask` [B, K] (K = cached + S tokens; 0: padding) or None (nothing padded); with `hidden`, the
        output's hidden_states are the states entering each layer ([B, S, Hd] each)."""
        return self.lm(inputs_embeds=embeds, position_ids=position_ids, cache=cache, attention_mask=mask,
                       use_cache=True, output_hidden_states=hidden)

    # ---- hooks: the chat template (ChatML unless a family says otherwise) ---------------------
    def _template(self) -> tuple[str, str]:
        """The text before the user's content (system turn, user turn opener) and after it (the assistant
        opener: the proxy query)."""
        return f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n", CHATML_OPENER

    def _between_turns(self) -> str:
        """The text from an answer to the next user turn's content."""
        return CHATML_NEXT_USER

    # ---- prompt pieces (token ids) -------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone (what a question adds to the prompt, before the chat template's own)."""
        return len(self._text(text))

    def prefix_ids(self) -> list[int]:
        """System turn + the user turn's opener: the stream's always-kept prefix."""
        return self._text(self._head)

    def proxy_ids(self) -> list[int]:
        """The template's text between the user's content and the assistant's answer (the proxy query)."""
        return self._text(self._opener)

    def suffix_ids(self, question: str, history: Sequence[Turn] = ()) -> list[int]:
        """What follows the stream when a question is asked: the question, then the proxy (assistant opener).
        Earlier turns of a conversation (`history`, oldest first) come first, as the chat template renders them:
        the first question closes the stream's user turn, each answer is an assistant turn, each later question
        a user turn of its own."""
        between = self._between_turns() if history else ""
        first, *later = [t.question for t in history] + [question]
        text = self.QUESTION.format(q=first) + "".join(
            self._opener + t.answer + between + q for t, q in zip(history, later))
        return self._text(text) + self.proxy_ids()

    # ---- positions ----------------------------------------------------------------------
    def _positions(self, ids: torch.Tensor, start: int) -> tuple[torch.Tensor, int]:
        """Text token ids [S] from `start` -> (positions [P, S] on the ids' device, the next position)."""
        n = ids.shape[0]
        pos = torch.arange(start, start + n, device=ids.device)[None].expand(self.position_dims, -1)  # [P, S]
        return pos.contiguous(), start + n

    def _position_ids(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions [P, B, S] -> the decoder's `position_ids`: [3, B, S] (multimodal RoPE) or [B, S] (1-D)."""
        return pos if self.position_dims > 1 else pos[0]

    # ---- cache plumbing -------------------------------------------------------------------
    def _cache(self, memory: EncodedSegment | None) -> DynamicCache:
        return cache_of(memory, self.model.config, self.device, self.dtype)

    _tail = staticmethod(tail)

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
                                                   (0, 0, P - p.length, 0)) for p in pasts])  # [B, Hkv, P, D]
                cache.update(k, v, layer)
        return cache, mask, P

    # ---- blocks: prefill, retrieval keys, the proxy pass --------------------------------------
    def _prefill(self, blocks: Sequence[Block]) -> tuple[DynamicCache, torch.Tensor | None, list[EncodedSegment]]:
        """Blocks behind their own memories in one pass: (cache, mask [B, P + S] or None, segments). One block
        runs unpadded (its cache is its memory's, exactly as the model's own prefill); several are padded, with a
        mask, and each reads its own rows back. The segments stay on the model's device, but for their retrieval
        keys (on the host: `_retrieval`)."""
        lengths = [b.embeds.shape[0] for b in blocks]
        if len(blocks) == 1:
            (b,) = blocks
            cache, mask, P = self._cache(b.past), None, b.past.length
            out = self._run_lm(b.embeds[None], self._position_ids(b.positions[:, None]), cache, hidden=True)
        else:
            cache, mask, P = self._batched_past([b.past for b in blocks], lengths)
            S = max(lengths)
            x = torch.stack([nn.functional.pad(b.embeds, (0, 0, 0, S - n))
                             for b, n in zip(blocks, lengths)])  # [B, S, F]
            pos = torch.stack([nn.functional.pad(b.positions, (0, S - n), value=b.max_pos)
                               for b, n in zip(blocks, lengths)], dim=1)  # [P, B, S]
            out = self._run_lm(x, self._position_ids(pos), cache, hidden=True, mask=mask)
        states = [[h[b, :n] for h in out.hidden_states] for b, n in enumerate(lengths)]  # [S_b, Hd] per layer
        retrieval = self._retrieval(blocks, states)
        segments = []
        for b, (blk, n) in enumerate(zip(blocks, lengths)):
            keys = torch.stack([layer.keys[b, :, P:P + n] for layer in cache.layers])  # [L, Hkv, S_b, D]
            values = torch.stack([layer.values[b, :, P:P + n] for layer in cache.layers])  # [L, Hkv, S_b, D]
            segments.append(EncodedSegment(keys, values, blk.positions, blk.next_pos, blk.max_pos, retrieval[b]))
        return cache, mask, segments

    def _retrieval(self, blocks: Sequence[Block], states: list[list[torch.Tensor]]) -> list[BlockKeys]:
        """Per block, the hidden states entering each layer ([S_b, Hd] each) -> its `retrieve` tokens' `BlockKeys`,
        blocks asking for the same number of rows together. This is where the host copy happens: `blocks_keys`
        reads the rows and mean keys back (one copy of each per group) because the store writes them to Redis
        with the chunk and the index scores them on the host; selecting the `retrieve` tokens (a boolean index)
        also waits for the device."""
        by_rows: dict[int, list[int]] = {}
        for b, blk in enumerate(blocks):
            by_rows.setdefault(blk.key_rows, []).append(b)
        found: dict[int, BlockKeys] = {}
        for rows, members in by_rows.items():
            keys = blocks_keys(self.lm.layers, [states[b] for b in members], [blocks[b].retrieve for b in members],
                               self.retrieval_layers, self.retrieval_layer, rows, self.num_kv_heads, self.head_dim)
            found.update(zip(members, keys))
        return [found[b] for b in range(len(blocks))]

    def _proxy(self, cache: DynamicCache, mask: torch.Tensor | None,
               segments: Sequence[EncodedSegment]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The proxy opener read behind each block at the positions a question's text would take (its KV stays
        in `cache`, which the caller drops): per block, its rotated queries [L, H, Q, D] and its own keys
        [L, Hkv, Q, D]."""
        proxy = torch.tensor(self.proxy_ids())  # [Q] on the host, as its positions
        Q, B = proxy.shape[0], len(segments)
        ppos = torch.stack([self._positions(proxy, seg.next_pos)[0] for seg in segments], dim=1)  # [P, B, Q]
        proxy, ppos = proxy.to(self.device), ppos.to(self.device)
        pmask = None if mask is None else torch.cat([mask, mask.new_ones(B, Q)], dim=1)  # [B, P + S + Q]
        with attention_probe.capture() as queries:
            self.lm(input_ids=proxy[None].expand(B, -1), position_ids=self._position_ids(ppos), cache=cache,
                    attention_mask=pmask, use_cache=True)
        return [(torch.stack([queries[i][b] for i in range(len(cache.layers))]),  # [L, H, Q, D]
                 torch.stack([layer.keys[b, :, -Q:] for layer in cache.layers]))  # [L, Hkv, Q, D]
                for b in range(B)]

    def _encode(self, blocks: Sequence[Block]) -> list[ClipEncoding]:
        """Each block's KV, its input embeddings, and the proxy opener's queries read behind its past + block (a
        second, few-token pass whose KV is dropped again); blocks run as one padded batch (`batch_prefill`) or
        one by one. All on the model's device but the retrieval keys (`_retrieval`)."""
        groups = [list(blocks)] if self.batch_prefill else [[b] for b in blocks]
        out = []
        for group in groups:
            cache, mask, segments = self._prefill(group)
            for blk, seg, (q, pk) in zip(group, segments, self._proxy(cache, mask, segments)):
                out.append(ClipEncoding(seg, blk.frame_ids, blk.n_frames, blk.embeds, q, pk))
        return out

    # ---- the stream's prefix, stored embeddings --------------------------------------------
    @torch.inference_mode()
    def encode_prefix(self) -> EncodedSegment:
        """The stream's opening tokens at position 0; the KV stays on the model's device (ingest keeps it there)."""
        ids = torch.tensor(self.prefix_ids(), device=self.device)
        pos, next_pos = self._positions(ids, 0)  # [P, S]
        cache = self._cache(None)
        self.lm(input_ids=ids[None], position_ids=self._position_ids(pos[:, None]), cache=cache, use_cache=True)
        keys, values = self._tail(cache, 0)
        return EncodedSegment(keys, values, pos, next_pos, next_pos - 1, None)

    @torch.inference_mode()
    def prefill_embeds(self, embeds: torch.Tensor, positions: torch.Tensor, past: EncodedSegment,
                       next_pos: int, max_pos: int) -> EncodedSegment:
        """Stored input embeddings [S, F] prefilled at their stored positions [P, S] behind `past`; the segment
        is returned on the host (`.cpu()`)."""
        cache = self._cache(past)
        self._run_lm(embeds.to(self.device, self.dtype)[None], self._position_ids(positions.to(self.device)[:, None]),
                     cache)
        keys, values = self._tail(cache, past.length)  # [L, Hkv, S, D]
        return EncodedSegment(keys.cpu(), values.cpu(), positions.cpu(), next_pos, max_pos, None)

    # ---- questions ----------------------------------------------------------------------
    @torch.inference_mode()
    def question_keys(self, question: str) -> QueryKeys:
        """The question alone (no memory) through the decoder stack: its pre-RoPE queries at the retrieval
        layers, the calibration mean removed (`encoders.retrieval`)."""
        ids = torch.tensor(self._text(question), device=self.device)
        return question_keys(self.lm, ids, self.retrieval_layers, self.retrieval_layer, self._calibration,
                             self.num_kv_heads, self.num_heads, self.head_dim)

    @torch.inference_mode()
    def answer_ids(self, memory: EncodedSegment, question: str, max_new_tokens: int,
                   history: Sequence[Turn] = ()) -> Iterator[int]:
        """Greedy tokens behind `memory` + the question suffix (at memory.next_pos..), decoded at
        max position + 1 + i as `generate` does; the stop token is yielded last."""
        ids = torch.tensor(self.suffix_ids(question, history), device=self.device)
        pos, _ = self._positions(ids, memory.next_pos)  # [P, Q]
        cache = self._cache(memory)
        logits = self.model(input_ids=ids[None], position_ids=self._position_ids(pos[:, None]), cache=cache,
                            use_cache=True, logits_to_keep=1).logits  # [1, 1, V]
        first = max(memory.max_pos, int(pos.max())) + 1  # generate's rule: max position + 1 + i
        P = self.position_dims

        def position(p: int) -> torch.Tensor:  # one new token: [3, 1, 1] (multimodal RoPE) or [1, 1]
            return self._position_ids(torch.full((P, 1, 1), p, dtype=torch.long, device=self.device))

        yield from greedy(self.model, logits, cache, first, position, self.eos_ids, max_new_tokens)

    def answer(self, memory: EncodedSegment, question: str, max_new_tokens: int,
               history: Sequence[Turn] = ()) -> Iterator[str]:
        """Decoded text pieces, streamed."""
        return stream_text(self.tok, self.answer_ids(memory, question, max_new_tokens, history), self.eos_ids)
