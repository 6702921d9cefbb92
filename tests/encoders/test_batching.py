"""Several streams' clips encoded as one batch (`ingest_clips`) equal each stream's own unbatched encoding, for
every tiny family, and the scheduler that batches them (`services/scheduler.py`) on real threads: chunks equal
their serial run, batches really form, and a question waits for at most one batch.

Tolerance: float32 on CPU, batched vs unbatched differ only by summation order in the padded matmuls; every
tensor agrees within 1e-5 absolute (measured: <= 2e-6), token selection (kept serials) is identical.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from encoders.base import ClipRequest
from encoders.loading import ModelOptions, load_adapter
from memory.options import MemoryOptions
from memory.working import WorkingState, context, step
from services.scheduler import EncodeScheduler, ModelGate

ATOL = 1e-5
FAMILIES = ["tiny", "tiny:qwen3_vl", "tiny:llava_onevision"]
OPTS = MemoryOptions(working_tokens=96, chunk_tokens=32)


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request, cache_dir):
    return load_adapter(ModelOptions(name=request.param, device="cpu"), cache_dir=cache_dir / "vigil")


def clips(n: int, seed: int, frames: int = 4) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)
    return [rs.randint(0, 255, (frames, 56, 84, 3)).astype(np.uint8) for _ in range(n)]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=ATOL, rtol=0))


def assert_same_encoding(one, other) -> None:
    s, t = one.segment, other.segment
    assert close(s.keys, t.keys) and close(s.values, t.values)
    assert torch.equal(s.positions, t.positions) and (s.next_pos, s.max_pos) == (t.next_pos, t.max_pos)
    assert np.allclose(s.retrieval.tokens.astype(np.float32), t.retrieval.tokens.astype(np.float32), atol=1e-3)
    assert np.allclose(s.retrieval.mean, t.retrieval.mean, atol=ATOL)
    assert close(one.embeds, other.embeds) and torch.equal(one.frame_ids, other.frame_ids)
    assert one.n_frames == other.n_frames
    assert close(one.proxy_queries, other.proxy_queries) and close(one.proxy_keys, other.proxy_keys)


def test_a_batch_of_streams_with_different_memories_equals_each_stream_alone(adapter):
    prefix = adapter.encode_prefix()
    states = []
    for s, n in enumerate([0, 1, 3]):  # memories of different lengths: the batch pads them
        state = WorkingState.empty(prefix)
        for i, frames in enumerate(clips(n, seed=s)):
            enc = adapter.ingest_clip(frames, 2.0, 2.0 * i, 2.0 * i + 2, context(prefix, state))
            state = step(prefix, state, enc, 0.0, OPTS).state
        states.append(state)
    assert len({context(prefix, st).length for st in states}) == 3
    last = clips(3, seed=9)
    # clips of different lengths too: the last one has 2 frames (fewer video tokens)
    last[2] = last[2][:2]
    reqs = [ClipRequest(f, 2.0, 20.0, 22.0, context(prefix, st)) for f, st in zip(last, states)]
    alone = [adapter.ingest_clip(r.frames, r.fps, r.start_s, r.end_s, r.past) for r in reqs]
    together = adapter.ingest_clips([adapter.prepare_clip(r) for r in reqs])
    assert len({a.segment.length for a in alone}) == 2
    for one, other, state in zip(alone, together, states):
        assert_same_encoding(one, other)
        a, b = step(prefix, state, one, 0.0, OPTS), step(prefix, state, other, 0.0, OPTS)
        assert torch.equal(a.state.tokens.serial, b.state.tokens.serial)  # the same tokens kept
        assert torch.equal(a.chunk.serial, b.chunk.serial)
        assert close(a.chunk.keys, b.chunk.keys)


def run_streams(adapter, n_streams: int, n_clips: int, max_batch: int):
    """n_streams threads, each ingesting its own clips through one scheduler; (chunks per stream, scheduler)."""
    sched = EncodeScheduler(adapter, ModelGate(), max_batch)
    prefix = adapter.encode_prefix()
    out: dict[int, list] = {}
    errors = []

    def stream(i: int) -> None:
        try:
            state, chunks = WorkingState.empty(prefix), []
            for j, frames in enumerate(clips(n_clips, seed=100 + i)):
                enc = sched.encode(ClipRequest(frames, 2.0, 2.0 * j, 2.0 * j + 2, context(prefix, state)), stream=i)
                done = step(prefix, state, enc, 0.0, OPTS)
                state = done.state
                chunks.append(done.chunk)
            out[i] = chunks
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n_streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    sched.close()
    assert not errors, errors
    return out, sched


def test_scheduler_batches_streams_and_each_stream_gets_its_own_chunks(adapter):
    batched, sched = run_streams(adapter, 4, 4, max_batch=4)
    assert sched.clips == 16 and sched.batches < 16  # clips of several streams really ran together
    serial, one = run_streams(adapter, 4, 4, max_batch=1)
    assert one.batches == 16
    for i in range(4):
        for a, b in zip(batched[i], serial[i]):
            assert torch.equal(a.serial, b.serial) and close(a.keys, b.keys) and close(a.values, b.values)


def test_a_question_waits_for_at_most_the_batch_that_is_running(adapter):
    """Six streams keep the scheduler busy with full batches of two (so it never pauses to gather); questions take
    the model in between: each gets it before a second batch starts after its request (without priority, the
    batch loop takes the model again and again)."""
    sched = EncodeScheduler(adapter, ModelGate(), max_batch=2)
    prefix = adapter.encode_prefix()
    stop = threading.Event()

    def stream(i: int) -> None:
        state = WorkingState.empty(prefix)
        for j, frames in enumerate(clips(40, seed=200 + i)):
            if stop.is_set():
                return
            enc = sched.encode(ClipRequest(frames, 2.0, 2.0 * j, 2.0 * j + 2, context(prefix, state)), stream=i)
            state = step(prefix, state, enc, 0.0, OPTS).state

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    waited = []
    try:
        for _ in range(8):
            threading.Event().wait(0.03)
            before = sched.batches
            with sched.gate:
                waited.append(sched.batches - before)  # batches completed while this question waited
                adapter.question_keys("what happened?")  # real model work under the gate
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        sched.close()
    assert sched.batches > 0 and max(waited) <= 1, waited
