"""Greedy decoding behind a prefilled cache, and turning the tokens into streamed text: shared by every adapter
(each supplies its own position ids for one new token)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch


def greedy(model, logits: torch.Tensor, cache, first_pos: int, position: Callable[[int], torch.Tensor],
           eos_ids: set[int], max_new_tokens: int) -> Iterator[int]:
    """Tokens argmax-decoded from `logits` [1, 1, V] (the prompt's last), each fed back at `position(p)` for
    p = first_pos, first_pos + 1, ... as `generate` does; the stop token is yielded last."""
    step_pos = first_pos
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        yield token
        if token in eos_ids:
            return
        ids = torch.tensor([[token]], device=logits.device)
        logits = model(input_ids=ids, position_ids=position(step_pos), cache=cache, use_cache=True).logits
        step_pos += 1


def stream_text(tok, tokens: Iterable[int], eos_ids: set[int]) -> Iterator[str]:
    """Decoded text pieces as the tokens arrive (incremental decode keeps multi-byte characters whole)."""
    produced: list[int] = []
    shown = ""
    for token in tokens:
        if token in eos_ids:
            break
        produced.append(token)
        text = tok.decode(produced, skip_special_tokens=True)
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            yield text[len(shown):]
            shown = text
