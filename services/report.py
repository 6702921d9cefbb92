"""A report of a time range across cameras: for each camera (in the order selected) its window's stored chunks
summarised segment by segment (services/summarize.py: segments with their scene cuts, novelty and on-screen text
named as the activity that marks them), the camera's own overview, then one overview of all cameras by a
text-only pass. Progress is handed out as it goes."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from memory.assemble import answer_memory
from memory.store import Gap
from services import qa, summarize
from services.errors import InvalidRequest
from services.runtime import Runtime
from services.search import Target, WindowSpec, stream_window

OVERVIEW_PROMPT = ("These are reports of several cameras over the same time range:\n{parts}\n"
                   "Combine them into one short overview of what happened, naming each camera.")
NOVEL = 0.5  # a keyframe novelty at or above this marks a segment as novel
CAMERA, OVERVIEW = "camera", "overview"


@dataclass(frozen=True)
class ReportProgress:
    stage: str  # camera | overview
    camera_index: int  # 1-based
    cameras: int
    target: Target | None
    segment: int = 0
    segments: int = 0


@dataclass(frozen=True)
class ReportSegment:
    target: Target
    segment: summarize.SegmentSummary
    wall_start: float | None
    wall_end: float | None
    activity: tuple[str, ...]


@dataclass(frozen=True)
class CameraReport:
    target: Target
    summary: str
    segments: int
    chunks: int
    bounds: tuple[float, float]  # the media window reported (0, 0 when nothing was)
    gaps: list[Gap]
    skipped: str = ""


@dataclass(frozen=True)
class ReportDone:
    overview: str
    cameras: int
    latency_ms: float
    phrase: str = ""


def activity(seg: summarize.SegmentSummary) -> tuple[str, ...]:
    """What marks a segment: its scene cuts, a novel keyframe, text on screen ("quiet": none of them)."""
    out = []
    cuts = sum(c.cuts for c in seg.read)
    if cuts:
        out.append(f"scene cuts: {cuts}")
    if any(c.novelty >= NOVEL for c in seg.read):
        out.append("novelty")
    if seg.on_screen:
        out.append("text")
    return tuple(out) or ("quiet",)


def report(rt: Runtime, targets_: list[Target], spec: WindowSpec, detail: int = 0, max_new_tokens: int = 0,
           include_keyframes: bool = False, *, emit: Callable[[object], None],
           stop: threading.Event | None = None, now: float | None = None) -> int:
    """Per camera: progress, its segments, its CameraReport; then the overview's progress and ReportDone. Returns
    the cameras reported."""
    t0 = time.perf_counter()
    s = rt.settings
    if len(targets_) > s.max_report_cameras:
        raise InvalidRequest(f"{len(targets_)} cameras selected; one report covers at most {s.max_report_cameras}")
    n = len(targets_)
    done: list[CameraReport] = []
    phrase = ""
    for i, t in enumerate(targets_, 1):
        if stop is not None and stop.is_set():
            return len(done)
        rec = rt.store.get_stream(t.sid)
        index = rt.indexes.synced(t.sid)
        part = stream_window(rt, index, t, spec, "", rec.media_end_s, now)
        phrase = phrase or part.phrase
        ids = index.allowed(part.bounds) if not part.skipped and index.records else []
        if not ids:
            why = part.skipped or ("no stored chunks yet" if not index.records else "no chunk in the window")
            cam = CameraReport(t, "", 0, 0, (0.0, 0.0), [], why)
            emit(cam)
            continue
        emit(ReportProgress(CAMERA, i, n, t))
        holder: list[summarize.Summary] = []

        def inner(item, t=t, i=i, records=index.records):
            if isinstance(item, summarize.Progress):
                if item.stage == summarize.SEGMENT:
                    emit(ReportProgress(CAMERA, i, n, t, item.segment, item.segments))
            elif isinstance(item, summarize.SegmentSummary):
                walls = [(c.wall_start, c.wall_end) for c in item.read if c.wall_start]
                emit(ReportSegment(t, item, walls[0][0] if walls else None,
                                   (walls[-1][1] or walls[-1][0]) if walls else None, activity(item)))
            else:
                holder.append(item)

        summarize.summarize(rt, t.sid, part.bounds, detail, max_new_tokens, include_keyframes, emit=inner, stop=stop)
        if not holder:  # stopped
            return len(done)
        sm = holder[0]
        cam = CameraReport(t, sm.overview, sm.segments, len(ids), (sm.start_s, sm.end_s), sm.gaps)
        done.append(cam)
        emit(cam)
    emit(ReportProgress(OVERVIEW, n, n, None))
    overview = ""
    if done:
        parts = "\n".join(f"[{c.target.label}, {c.bounds[0]:.0f}s-{c.bounds[1]:.0f}s] {c.summary}" for c in done)
        prefix = rt.store.get_prefix(done[0].target.sid)
        head = answer_memory(prefix, None, [], prefix.next_pos, prefix.max_pos)
        budget = min(max_new_tokens or s.max_new_tokens, s.max_new_tokens_cap)
        overview = "".join(qa.generate(rt, head, OVERVIEW_PROMPT.format(parts=parts), budget, (), stop)).strip()
        if stop is not None and stop.is_set():
            return len(done)
    emit(ReportDone(overview, len(done), (time.perf_counter() - t0) * 1000, phrase))
    return len(done)
