"""Summaries of a window, built from its stored memory (no footage is decoded again).

The window's chunks, in time order, are grouped into segments (`plan_segments`: about equal time each, a
boundary moved onto a nearby scene cut when there is one); each segment is summarised by the model on the
stream prefix + that segment's chunks alone (`memory.assemble.answer_memory`, the path questions take, without
the working memory: it speaks for the whole stream) with a fixed prompt; then the segment summaries, with their
times, are combined into one overview by a text-only pass on the prefix. Each segment carries the chunks the
model read (evidence) and the on-screen text read in any of its chunks.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memory.assemble import answer_memory
from memory.errors import clipped
from memory.layout import FeatureSet, TokenSet
from memory.store import ChunkRecord, Gap
from services import qa
from services.errors import InvalidRequest, NotReady
from services.runtime import Runtime

SEGMENT_PROMPT = ("Summarise what happens in this part of the video, from {a:.1f}s to {b:.1f}s, in two or three "
                  "sentences. Mention any text shown on screen.")
OVERVIEW_PROMPT = ("These are summaries of consecutive parts of one video, with their times:\n{parts}\n"
                   "Combine them into one short overview of the whole video, in time order.")
CUT_REACH = 0.25  # a boundary moves onto a scene cut at most this share of a segment's length away
SEGMENT, OVERVIEW = "segment", "overview"


@dataclass(frozen=True)
class SegmentPlan:
    start_s: float
    end_s: float
    chunks: tuple[ChunkRecord, ...]  # every chunk of the segment, time order


@dataclass(frozen=True)
class Progress:
    segment: int  # 1-based: the one being summarised now (= segments at the overview stage)
    segments: int
    stage: str  # segment | overview


@dataclass(frozen=True)
class SegmentSummary:
    index: int  # 1-based
    segments: int
    start_s: float
    end_s: float
    text: str
    read: tuple[ChunkRecord, ...]  # the chunks the model read, time order
    keyframes: tuple[bytes, ...]  # of `read` (empty bytes unless asked for)
    on_screen: tuple[str, ...]  # text read on screen in any of the segment's chunks, first seen first
    chunks: int  # chunks in the segment


@dataclass(frozen=True)
class Summary:
    overview: str
    start_s: float
    end_s: float
    segments: int
    latency_ms: float
    gaps: list[Gap]


def plan_segments(chunks: Sequence[ChunkRecord], n: int, lo: float = 0.0, hi: float = math.inf) -> list[SegmentPlan]:
    """At most `n` segments covering [max(lo, first start), min(hi, last end)] in order without overlap, each
    holding whole chunks (`chunks`: those overlapping [lo, hi)). Boundaries fall on chunk starts near equal
    time steps; a chunk that starts a scene (cuts > 0) within CUT_REACH of a segment's length wins over a nearer
    one that does not."""
    cs = sorted(chunks, key=lambda c: c.start_s)
    if not cs or n < 1:
        return []
    a, b = max(lo, cs[0].start_s), min(hi, max(c.end_s for c in cs))
    n = min(n, len(cs))
    step = (b - a) / n
    cuts: list[int] = []  # split before chunk k
    for j in range(1, n):
        first, last = (cuts[-1] + 1 if cuts else 1), len(cs) - (n - j)  # room for the boundaries still to come
        target = a + j * step
        options = range(first, last + 1)
        near = min(options, key=lambda k: (abs(cs[k].start_s - target), k))
        scene = [k for k in options if cs[k].cuts > 0 and abs(cs[k].start_s - target) <= CUT_REACH * step]
        cuts.append(min(scene, key=lambda k: (abs(cs[k].start_s - target), k)) if scene else near)
    edges = [0, *cuts, len(cs)]
    times = [a, *(min(max(cs[k].start_s, a), b) for k in cuts), b]
    return [SegmentPlan(times[i], times[i + 1], tuple(cs[edges[i]:edges[i + 1]])) for i in range(n)]


def spread(items: Sequence, k: int) -> list:
    """At most `k` of `items`, evenly spread, first and last kept, order kept."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def on_screen_text(chunks: Sequence[ChunkRecord]) -> tuple[str, ...]:
    """The lines read on screen in `chunks` (each chunk's `text`, lines joined with " | "), each once, in the
    order first seen."""
    return tuple(dict.fromkeys(line.strip() for c in chunks for line in c.text.split(" | ") if line.strip()))


def summary_window(window: tuple[float, float] | None) -> tuple[float, float]:
    return (0.0, math.inf) if window is None else qa.check_window(*window)


def summarize(rt: Runtime, sid: str, window: tuple[float, float] | None = None, detail: int = 0,
              max_new_tokens: int = 0, include_keyframes: bool = False, *,
              emit: Callable[[Progress | SegmentSummary | Summary], None],
              stop: threading.Event | None = None) -> int:
    """Summarise the stored chunks of `window` (None: all), handing out as it goes: Progress before each
    segment, its SegmentSummary, Progress of the overview stage, then the Summary. Returns the segments done;
    `stop` set: it ends after the current token, with no Summary."""
    t0 = time.perf_counter()
    s = rt.settings
    if detail > s.max_summary_segments:
        raise InvalidRequest(f"detail {detail} is over the limit of {s.max_summary_segments} segments")
    lo, hi = summary_window(window)
    rec = rt.store.get_stream(sid)  # NOT_FOUND first
    index = rt.indexes.synced(sid)
    if not index.records:
        raise NotReady(f"stream {clipped(sid)} has no stored chunks yet (state: {rec.state})")
    ids = index.allowed((lo, hi))
    if not ids:
        raise InvalidRequest(f"no chunk of stream {clipped(sid)} lies in the time window [{lo:g}, {hi:g}] "
                             f"(its stored footage: {min(r.start_s for r in index.records.values()):g}s to "
                             f"{max(r.end_s for r in index.records.values()):g}s)")
    plans = plan_segments([index.records[i] for i in ids], detail or s.summary_segments, lo, hi)
    budget = min(max_new_tokens or s.max_new_tokens, s.max_new_tokens_cap)
    prefix = rt.store.get_prefix(sid)
    n = len(plans)
    done: list[SegmentSummary] = []
    for i, plan in enumerate(plans, 1):
        if stop is not None and stop.is_set():
            return len(done)
        emit(Progress(i, n, SEGMENT))
        read = spread(plan.chunks, s.summary_chunks)
        read_ids = [c.chunk_id for c in read]
        payloads = rt.store.chunk_payloads(sid, read_ids)  # ABORTED when retention removed them meanwhile
        kv = [(p, (c.span_start, c.span_end)) for p, c in zip(payloads, read) if isinstance(p, TokenSet)]
        memory = answer_memory(prefix, None, kv, rec.next_pos, rec.max_pos)
        features = [p for p in payloads if isinstance(p, FeatureSet)]
        if features:
            with rt.model_lock:
                memory = qa.prefill_features(rt, memory, features)
        prompt = SEGMENT_PROMPT.format(a=plan.start_s, b=plan.end_s)
        text = "".join(qa.generate(rt, memory, prompt, budget, (), stop)).strip()
        if stop is not None and stop.is_set():
            return len(done)
        keyframes = rt.store.keyframes(sid, read_ids) if include_keyframes else [b""] * len(read)
        seg = SegmentSummary(i, n, plan.start_s, plan.end_s, text, tuple(read), tuple(keyframes),
                             on_screen_text(plan.chunks), len(plan.chunks))
        done.append(seg)
        emit(seg)
    emit(Progress(n, n, OVERVIEW))
    start_s, end_s = plans[0].start_s, plans[-1].end_s
    parts = "\n".join(f"[{d.start_s:.1f}s-{d.end_s:.1f}s] {d.text}" for d in done)
    head = answer_memory(prefix, None, [], prefix.next_pos, prefix.max_pos)  # text only: no footage
    overview = "".join(qa.generate(rt, head, OVERVIEW_PROMPT.format(parts=parts), budget, (), stop)).strip()
    if stop is not None and stop.is_set():
        return len(done)
    gaps = [g for g in rt.store.gaps(sid) if g.overlaps(start_s, end_s)]
    emit(Summary(overview, start_s, end_s, n, (time.perf_counter() - t0) * 1000, gaps))
    return len(done)
