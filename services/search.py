"""Search across streams (cameras): which streams a request covers (names, ids, a config group, or all), each
one's window (media time, wall-clock time, or time words), each stream's signals ranked in parallel on its own
index (bounded by `search_workers`), then one ranking of all their chunks with scores that compare across streams
(memory/across.py).

    targets(rt, streams, group) -> [Target]          a camera's name and its stream id, in the order asked
    search(rt, question, targets, spec, ...) -> Searched moments, best first, and how each stream took part
"""
from __future__ import annotations

import math
import time
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from encoders.signals import FRAME_INDEX
from memory.across import fuse_across
from memory.errors import StreamNotFound, clipped
from memory.fusion import Ranked
from memory.index import Query, StreamIndex
from memory.store import ChunkRecord
from memory.timewords import window_from_question
from services import qa
from services.errors import InvalidRequest
from services.runtime import Runtime

MAX_SELECTED = 1000  # names one selector may list


@dataclass(frozen=True)
class Target:
    camera: str  # "" for a stream with no camera name
    sid: str

    @property
    def label(self) -> str:
        return self.camera or self.sid


@dataclass(frozen=True)
class WindowSpec:
    """The window a cross-stream request asks for: at most one of the three; none: the question's time words."""
    media: tuple[float, float] | None = None  # checked, end inf: to the end
    wall: tuple[float, float] | None = None  # unix seconds, end inf: until now
    when: str = ""  # time words ("since 22:00", "last night")

    def __post_init__(self) -> None:
        if sum(x is not None and x != "" for x in (self.media, self.wall, self.when)) > 1:
            raise InvalidRequest("give at most one of window, wall_window and when")
        if self.wall is not None:
            lo, hi = self.wall
            if not (math.isfinite(lo) and lo >= 0) or math.isnan(hi) or hi <= lo:
                raise InvalidRequest(f"wall_window [{lo:g}, {hi:g}] is invalid: its start must be a time >= 0 and "
                                     "its end after it (0: until now)")
        if len(self.when) > 200:
            raise InvalidRequest(f"when is {len(self.when)} characters; the limit is 200")


@dataclass(frozen=True)
class StreamPart:
    """How one stream took part: the media window searched, its chunks in it, or why it was skipped."""
    target: Target
    bounds: tuple[float, float] | None = None  # None: everything
    chunks: int = 0
    skipped: str = ""
    phrase: str = ""


@dataclass(frozen=True)
class Moment:
    target: Target
    chunk: ChunkRecord
    score: float
    signals: tuple = ()  # memory.fusion.SignalScore, calibrated
    rank: int = 0
    keyframe: bytes = b""


@dataclass(frozen=True)
class Searched:
    moments: list[Moment]  # best first
    parts: list[StreamPart]  # in the order of the targets
    phrase: str = ""
    latency_ms: float = 0.0
    query: Query | None = field(default=None, repr=False)


def targets(rt: Runtime, streams: list[str], group: str = "") -> list[Target]:
    """The streams a selector names, each once, in the order named: camera names or stream ids (`streams`), a
    camera group of the config file (`group`), or every stream. Unknown: NOT_FOUND."""
    if len(streams) > MAX_SELECTED:
        raise InvalidRequest(f"{len(streams)} streams named; at most {MAX_SELECTED}")
    names = rt.store.names()  # camera name -> stream id
    camera_of = {sid: name for name, sid in names.items()}
    wanted: list[str] = list(streams)
    if group:
        members = rt.settings.camera_groups.get(group)
        if members is None:
            known = ", ".join(sorted(rt.settings.camera_groups)) or "none"
            raise StreamNotFound(f"no camera group {clipped(group)} in the config file (groups: {clipped(known, 200)})")
        wanted += list(members)
    if not wanted:
        sids = [r.stream_id for r in rt.store.list_streams()]
    else:
        sids = []
        for w in wanted:
            sid = names.get(w, w)
            rt.store.get_stream(sid)  # NOT_FOUND names it
            sids.append(sid)
    sids = list(dict.fromkeys(sids))
    if len(sids) > rt.settings.max_search_streams:
        raise InvalidRequest(f"{len(sids)} streams selected; one search covers at most "
                             f"{rt.settings.max_search_streams} (VIGIL_MAX_SEARCH_STREAMS): name cameras or a group")
    return [Target(camera_of.get(s, ""), s) for s in sids]


def _tz(rt: Runtime):
    return zoneinfo.ZoneInfo(rt.settings.timezone) if rt.settings.timezone else None


def stream_window(rt: Runtime, index: StreamIndex, target: Target, spec: WindowSpec, question: str,
                  media_end_s: float, now: float | None = None) -> StreamPart:
    """One stream's media-time window for a cross-stream request, or why it has none."""
    if spec.media is not None:
        return StreamPart(target, spec.media)
    records = list(index.records.values())
    if spec.wall is not None:
        lo, hi = spec.wall
        inside = [r for r in records if r.wall_start and (r.wall_end or r.wall_start) >= lo and r.wall_start < hi]
        if not any(r.wall_start for r in records):
            return StreamPart(target, skipped="no wall-clock times (not a live stream)")
        if not inside:
            return StreamPart(target, skipped="no chunk received in the wall-clock window")
        return StreamPart(target, (min(r.start_s for r in inside), max(r.end_s for r in inside)))
    text = spec.when or qa._QUOTED.sub(lambda m: " " * len(m.group()), question)
    anchors = index.wall_anchors()
    tw = window_from_question(text, duration_s=media_end_s, wall_anchor=anchors or None, now_unix=now, tz=_tz(rt))
    if tw is None and spec.when and not anchors:
        probe = window_from_question(text, duration_s=media_end_s, wall_anchor=[(0.0, now or time.time())],
                                     now_unix=now, tz=_tz(rt))
        if probe is not None:  # words of the wall clock, and this stream has none
            return StreamPart(target, skipped=f"{clipped(probe.phrase)} is a wall-clock time; this stream has none "
                                              "(not a live stream)", phrase=probe.phrase)
    if tw is None:
        if spec.when:
            raise InvalidRequest(f"the time words {clipped(spec.when)} were not understood (e.g. \"since 22:00\", "
                                 "\"last night\", \"between 18:00 and 06:00\", \"in the last hour\")")
        return StreamPart(target)
    if tw.clock == "wall" and not anchors:
        if spec.when:
            return StreamPart(target, skipped=f"{clipped(tw.phrase)} is a wall-clock time; this stream has none "
                                              "(not a live stream)", phrase=tw.phrase)
        return StreamPart(target)  # question words a file cannot place: search it all
    bounds = (tw.start_s, tw.end_s)
    if not spec.when and not index.allowed(bounds):
        return StreamPart(target)  # the question's words point where nothing is stored: all of it
    return StreamPart(target, bounds, phrase=tw.phrase)


def query_for(rt: Runtime, question: str, example_image: bytes) -> Query:
    """The question's (or example's) keys and frame-index vectors, made once for every stream."""
    s = rt.settings
    example = (qa.decode_example(example_image, s.max_example_bytes, s.frame_max_side, s.max_example_decoded_bytes)
               if example_image else None)
    return qa.question_query(rt, question, example, "")


def _one(rt: Runtime, target: Target, query: Query, spec: WindowSpec, question: str,
         now: float | None) -> tuple[StreamPart, Ranked, dict[int, ChunkRecord]]:
    rec = rt.store.get_stream(target.sid)
    index = rt.indexes.synced(target.sid)
    if not index.records:
        return StreamPart(target, skipped=f"no stored chunks yet (state: {rec.state})"), {}, {}
    part = stream_window(rt, index, target, spec, question, rec.media_end_s, now)
    if part.skipped:
        return part, {}, {}
    allowed = index.allowed(part.bounds)
    if not allowed:
        return replace(part, skipped="no chunk in the window"), {}, {}
    q = query
    if rt.describer is not None and rec.frames_fingerprint not in ("", rt.describer.fingerprint):
        q = Query(query.keys, {})  # described by another model: its vectors do not compare
    ranked = index.ranked(q, part.bounds)
    return replace(part, chunks=len(allowed)), ranked, dict(index.records)


def search(rt: Runtime, question: str, targets_: list[Target], spec: WindowSpec, *, top_k: int = 0,
           example_image: bytes = b"", signals: list[str] | None = None, include_keyframes: bool = False,
           now: float | None = None, query: Query | None = None) -> Searched:
    """The top_k moments of all `targets_` for `question` (or `example_image`), best first. `query`: the
    question's Query when it is made already (`query_for`)."""
    t0 = time.perf_counter()
    s = rt.settings
    if question.strip() or not example_image:
        question = qa.validate_question(question, s.max_question_chars, s.max_question_tokens,
                                        rt.adapter.count_tokens)
    if top_k > s.max_top_k:
        raise InvalidRequest(f"top_k {top_k} is over the limit of {s.max_top_k}")
    opts = qa.search_options(rt, list(signals or []))
    if query is None:
        query = query_for(rt, question or "this", example_image)
    if example_image:  # the example decides the frame-index vectors; the words (if any) nothing more
        query = Query(query.keys, {k: v for k, v in query.dense.items() if k in FRAME_INDEX})
    workers = max(1, min(s.search_workers, len(targets_)))
    with ThreadPoolExecutor(workers, thread_name_prefix="search") as pool:
        results = list(pool.map(lambda t: _one(rt, t, query, spec, question, now), targets_))
    parts = [r[0] for r in results]
    found = fuse_across([r[1] for r in results], opts, top_k or s.top_k)
    moments = [Moment(targets_[f.stream], results[f.stream][2][f.chunk_id], f.score, f.signals, i)
               for i, f in enumerate(found, 1)]
    if include_keyframes and moments:
        by_sid: dict[str, list[int]] = {}
        for m in moments:
            by_sid.setdefault(m.target.sid, []).append(m.chunk.chunk_id)
        jpgs = {sid: dict(zip(ids, rt.store.keyframes(sid, ids))) for sid, ids in by_sid.items()}
        moments = [replace(m, keyframe=jpgs[m.target.sid].get(m.chunk.chunk_id, b"")) for m in moments]
    phrase = next((p.phrase for p in parts if p.phrase), "")
    return Searched(moments, parts, phrase, (time.perf_counter() - t0) * 1000, query)


def spread_of(values: list[float]) -> tuple[float, float]:
    """(mean, standard deviation) of some scores: what the benchmark reports per signal."""
    a = np.asarray(values, np.float64)
    return (float(a.mean()), float(a.std())) if a.size else (0.0, 0.0)


# ---- an answer across cameras ----------------------------------------------------------------------------------
#
# One model pass per camera, on that camera's own memory (its prefix, working memory and the chunks retrieved for
# the question in the same window), not one prompt of several cameras' chunks: a stream's stored KV was computed
# after its own prefix and working memory at its own positions, so chunks of two streams cannot share one cache
# without re-prefilling them (the cost of a feature-chunk answer per chunk); a pass per camera costs one answer
# per camera read, which `across_cameras` bounds (benchmarks/bench_cameras.py times both sides).

ACROSS = "*across*"  # the stream id a conversation across cameras is recorded under


@dataclass(frozen=True)
class CameraAnswer:
    target: Target
    text: str
    memory_tokens: int
    evidence: list[Moment]  # the chunks the model read, time order


@dataclass(frozen=True)
class AcrossAnswer:
    text: str  # each camera's part, "camera: ..." per line
    cameras: list[CameraAnswer]  # best camera first
    searched: Searched
    latency_ms: float
    conversation_id: str = ""
    history_turns: int = 0

    @property
    def evidence(self) -> list[Moment]:
        return [m for c in self.cameras for m in c.evidence]


def _history(rt: Runtime, conversation_id: str):
    from memory.conversations import CONVERSATION_ID, recent_turns

    if not CONVERSATION_ID.match(conversation_id):
        raise InvalidRequest(f"conversation_id {clipped(conversation_id)} is not 1-64 letters, digits, '-' or '_'")
    conv = qa.conversations(rt).get(conversation_id)
    if conv.stream_id != ACROSS:
        raise InvalidRequest(f"conversation {clipped(conversation_id)} is about stream {clipped(conv.stream_id)}; "
                             "continue it with Ask")
    return recent_turns(conv.turns, rt.settings.max_conversation_tokens, rt.adapter.count_tokens)


def ask_across(rt: Runtime, question: str, targets_: list[Target], spec: WindowSpec, *, top_k: int = 0,
               max_cameras: int = 0, max_new_tokens: int = 0, include_keyframes: bool = False,
               conversation_id: str = "", new_conversation: bool = False, now: float | None = None) -> AcrossAnswer:
    """Search across `targets_`, then one answer per camera among the best `max_cameras` (by their best moment)."""
    from encoders.base import Turn

    t0 = time.perf_counter()
    s = rt.settings
    if max_cameras > s.max_across_cameras:
        raise InvalidRequest(f"max_cameras {max_cameras} is over the limit of {s.max_across_cameras}")
    if conversation_id and new_conversation:
        raise InvalidRequest("give conversation_id to continue a conversation, or new_conversation to start one; "
                             "not both")
    history = _history(rt, conversation_id) if conversation_id else ()
    found = search(rt, question, targets_, spec, top_k=top_k, now=now)
    best = list(dict.fromkeys(m.target for m in found.moments))[:max_cameras or s.across_cameras]
    if not best:
        raise InvalidRequest(f"nothing stored in the window on any of the {len(targets_)} streams: "
                             + "; ".join(f"{p.target.label}: {p.skipped or 'no match'}" for p in found.parts)[:400])
    bounds = {p.target: p.bounds for p in found.parts}
    cross = {(m.target, m.chunk.chunk_id): m for m in found.moments}
    parts: list[CameraAnswer] = []
    for t in best:
        p = qa.prepare(rt, t.sid, question, top_k=top_k, window=bounds[t], max_new_tokens=max_new_tokens,
                       include_keyframes=include_keyframes)
        text = "".join(qa.generate(rt, p.memory, p.question, p.budget, history)).strip()
        ev = []
        for h, jpg in zip(p.hits, p.keyframes):
            m = cross.get((t, h.chunk.chunk_id))
            ev.append(Moment(t, h.chunk, m.score if m else 0.0, m.signals if m else h.signals, m.rank if m else 0,
                             jpg))
        parts.append(CameraAnswer(t, text, p.memory.length, ev))
    text = "\n".join(f"{c.target.label}: {c.text}" for c in parts)
    cid = conversation_id
    if new_conversation:
        cid = qa.conversations(rt).create(ACROSS).conversation_id
    if cid:
        qa.conversations(rt).append(cid, Turn(question.strip(), text))
    return AcrossAnswer(text, parts, found, (time.perf_counter() - t0) * 1000, cid, len(history))
