"""The ingest-time memory step never waits for the device (issue 14): no host synchronisation in `step`,
`context`, `chunk_of`, `prune` and what they call, for every policy and chunk format, on real clip encodings
of the tiny seeded Qwen2.5-VL (real transformers classes).

On CPU a host sync leaves no device-to-host copy to see, but the profiler still records the ops that cause one.
Probed on torch 2.13 (CPU profiler), each way of reading a tensor on the host records:

    x.sum().item(), float(x[0]), int(x.argmax())  -> aten::item, aten::_local_scalar_dense
    bool(x.any()), `if (x > 0).all():`            -> aten::is_nonzero (+ aten::item, aten::_local_scalar_dense)
    x.tolist()                                    -> aten::resolve_conj, aten::resolve_neg (no aten::item on CPU)
                                                     at top level (mm and bmm call resolve_conj inside: allowed)
    x.numpy(), x.cpu(), x.to("cpu")               -> aten::to with a device argument (x.numpy(): + the two above)
    torch.unique(x[, return_inverse=True])        -> aten::_unique2 (unique_consecutive: aten::unique_consecutive)
    x.nonzero(), x[bool_mask], torch.where(mask)  -> aten::nonzero (torch.where(mask): + aten::nonzero_numpy)
    x.masked_select(mask)                         -> aten::masked_select (+ aten::item)
    torch.linspace(t0, t1, n) with tensor ends    -> aten::item
    torch.tensor(python_list), x[i] = python_val  -> aten::lift_fresh (a tensor built from host data)

A dtype conversion (x.float(), x.to(torch.int64)) also records aten::to, but through its 5-argument `to.dtype`
overload; only an aten::to that names a device (the `to.device` / `to.dtype_layout` overloads: 6 or 8
arguments) is forbidden. `aten::_to_copy` is what every conversion copies with, so it is not forbidden by name.

A second test runs the step on the meta device: any tensor the step creates on the host instead of on its
inputs' device, and any op whose output shape depends on tensor values, fails there. A third checks question
time: `answer_memory` reads one host value, the deduplicated memory's length.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from encoders.base import ClipEncoding, EncodedSegment
from memory.assemble import answer_memory
from memory.layout import TokenSet
from memory.options import MemoryOptions
from memory.working import WorkingState, context, step

FORBIDDEN = frozenset({
    "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero",  # .item(), int(t), float(t), bool(t), if t:
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",  # torch.unique*
    "aten::unique_dim_consecutive",
    "aten::nonzero", "aten::nonzero_static", "aten::nonzero_numpy", "aten::argwhere",  # x[mask], where(mask)
    "aten::masked_select",
    "aten::lift_fresh",  # torch.tensor(python data)
})
TOP_LEVEL_ONLY = frozenset({"aten::resolve_conj", "aten::resolve_neg"})  # .tolist(), .numpy(); mm/bmm call them too
TO_DTYPE_ARGS = 5  # aten::to.dtype(self, dtype, non_blocking, copy, memory_format): a conversion, no device

FPS = 1.0
CLIPS = 4  # clip 41 tokens, 2 frames: the working memory is full from the second clip on

CASES = {  # (policy, chunk format) -> options
    "attention-kv": MemoryOptions(working_tokens=64, chunk_tokens=8, prototypes=True, redundancy_weight=0.5,
                                  redundancy_window=16, novelty_weight=1.0),
    "attention-kv-all-pairs": MemoryOptions(working_tokens=64, chunk_tokens=8, redundancy_weight=0.25,
                                            redundancy_window=0),
    "attention-features": MemoryOptions(working_tokens=64, chunk_tokens=8, redundancy_weight=0.5,
                                        chunk_format="features"),
    "recency-kv": MemoryOptions(working_tokens=64, chunk_tokens=8, policy="recency", redundancy_weight=0.5),
    "recency-features": MemoryOptions(working_tokens=64, chunk_tokens=8, policy="recency", chunk_format="features"),
    "uniform-kv": MemoryOptions(working_tokens=64, chunk_tokens=8, policy="uniform", redundancy_weight=0.5),
    "uniform-features": MemoryOptions(working_tokens=64, chunk_tokens=8, policy="uniform", chunk_format="features"),
}


def clips(n: int, seed: int = 3) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        base = rs.randint(0, 255, size=(1, 1, 1, 3))
        out.append(np.clip(base + rs.randint(-40, 40, size=(4, 84, 112, 3)), 0, 255).astype(np.uint8))
    return out


def host_syncs(prof) -> list[str]:
    bad = []
    for e in prof.events():
        parent = e.cpu_parent.name if e.cpu_parent is not None else ""
        if e.name in FORBIDDEN or (e.name in TOP_LEVEL_ONLY and not parent.startswith("aten::")):
            bad.append(e.name)
        elif e.name == "aten::to" and len(e.input_shapes) != TO_DTYPE_ARGS:
            bad.append(f"aten::to{tuple(e.input_shapes)} (names a device)")
    return sorted(set(bad))


def profiled(fn):
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = fn()
    return out, host_syncs(prof)


def test_the_probe_sees_the_host_syncs_it_forbids():
    """The forbidden names are what a host sync records on this torch build (the list above stays true)."""
    x, mask = torch.randn(6), torch.tensor([True, False] * 3)
    for fn in (lambda: x.sum().item(), lambda: float(x[0]), lambda: bool(x.any()), lambda: x.tolist(),
               lambda: x.cpu(), lambda: torch.unique(x), lambda: x[mask], lambda: mask.nonzero(),
               lambda: torch.tensor([1, 2])):
        assert profiled(fn)[1], fn
    assert profiled(lambda: (x.float(), x.to(torch.int64), x[torch.arange(2)]))[1] == []


@pytest.fixture(scope="module")
def streams(tiny_adapter):
    """For each case: (prefix, the steps of a CLIPS-clip stream as (state before, encoding), options,
    the chunks with their spans, the final state)."""
    ad = tiny_adapter
    prefix = ad.encode_prefix()
    out = {}
    for name, policy in CASES.items():
        state, runs, chunks = WorkingState.empty(prefix), [], []
        for i, frames in enumerate(clips(CLIPS)):
            enc = ad.ingest_clip(frames, FPS, 4.0 * i, 4.0 * i + 4, context(prefix, state))
            runs.append((state, enc))
            done = step(prefix, state, enc, 0.3, policy)
            chunks.append((done.chunk, done.span))
            state = done.state
        out[name] = (prefix, runs, policy, chunks, state)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_step_and_context_record_no_host_sync(streams, case):
    prefix, runs, policy, _, _ = streams[case]
    pruned = 0
    for state, enc in runs:
        done, syncs = profiled(lambda: step(prefix, state, enc, 0.3, policy))
        assert syncs == [], f"{case}: step recorded {syncs}"
        pruned += state.tokens.length + enc.segment.length > policy.working_tokens
        _, syncs = profiled(lambda: context(prefix, done.state))
        assert syncs == [], f"{case}: context recorded {syncs}"
    assert pruned >= CLIPS - 1  # the pruning path ran, not only the everything-fits one


def _meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("case", list(CASES))
def test_step_runs_on_the_meta_device(streams, case):
    """No tensor made on the host, no value-dependent shape: the whole step runs on data-less tensors."""
    prefix, runs, policy, _, _ = streams[case]
    state, enc = runs[-1]
    mp = EncodedSegment(*(_meta(getattr(prefix, f)) for f in ("keys", "values", "positions")), prefix.next_pos,
                        prefix.max_pos, None)
    seg = enc.segment
    menc = ClipEncoding(EncodedSegment(_meta(seg.keys), _meta(seg.values), _meta(seg.positions), seg.next_pos,
                                       seg.max_pos, None),
                        _meta(enc.frame_ids), enc.n_frames, _meta(enc.embeds), _meta(enc.proxy_queries),
                        _meta(enc.proxy_keys))
    t = state.tokens
    mtokens = TokenSet(_meta(t.keys), _meta(t.values), _meta(t.positions), _meta(t.serial), _meta(t.score))
    mstate = WorkingState(mtokens, state.next_pos, state.max_pos, state.next_serial,
                          state.next_frame)
    done = step(mp, mstate, menc, 0.3, policy)
    ref = step(prefix, state, enc, 0.3, policy)
    assert done.state.tokens.keys.device.type == "meta"
    assert done.state.tokens.keys.shape == ref.state.tokens.keys.shape
    first = step(mp, WorkingState.empty(mp), menc, 0.3, policy)  # an empty working memory starts on the device
    assert first.state.tokens.serial.device.type == "meta" and first.chunk.score.device.type == "meta"
    assert context(mp, done.state).keys.device.type == "meta"


@pytest.mark.parametrize("case", ["attention-kv", "uniform-kv"])
def test_answer_memory_syncs_once_for_its_length(streams, case):
    """Question time: working memory + chunks deduplicated on the device; the one host value is the length."""
    prefix, _, _, chunks, state = streams[case]
    held = [s for s in state.tokens.serial[0].tolist() if s >= 0 and bool((state.tokens.serial == s).any(1).all())]
    chunks = chunks + [(state.tokens, (held[0], held[0] + 1))]  # a chunk the working memory covers: dropped
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        mem = answer_memory(prefix, state.tokens, chunks, state.next_pos, state.max_pos)
    names = [e.name for e in prof.events()]
    assert names.count("aten::item") == 1  # int(count): the deduplicated memory's length
    assert [n for n in host_syncs(prof) if n not in ("aten::item", "aten::_local_scalar_dense")] == []
    assert mem.length > prefix.length + state.tokens.length
