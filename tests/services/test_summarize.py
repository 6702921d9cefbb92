"""Summarize over the real gRPC service: real footage with captions burnt in at known times (the frame index
reads them with real OCR), segments that cover the window in order, evidence inside them, the on-screen text of
each segment, streamed progress; the segment planner on its own; `vigil summarize` in a subprocess."""
from __future__ import annotations

import json
import math
import re

import grpc
import pytest

from memory.store import ChunkRecord
from services.client import Client
from services.summarize import on_screen_text, plan_segments, spread
from testkit import media
from tests.conftest import wait_done
from tests.services.test_cli import run, serve_process  # noqa: F401  (serve_process: a fixture)

FPS, CLIP = 1.0, 8
CAPTIONS = [(12.0, 17.0, "GATE 7 CLOSED"), (41.0, 46.0, "TRUCK 22 ARRIVED"), (70.0, 75.0, "LOT B FULL")]


def squash(text: str) -> str:
    return text.replace(" ", "").upper()


# ---- the planner ----------------------------------------------------------------------------------------

def chunk(i: int, start: float, end: float, cuts: int = 0, text: str = "") -> ChunkRecord:
    return ChunkRecord(chunk_id=i, start_s=start, end_s=end, frames=8, tokens=32, keyframe_s=start, cuts=cuts,
                       text=text)


def test_segments_cover_the_span_in_order_with_whole_chunks():
    cs = [chunk(i, 4.0 * i, 4.0 * (i + 1)) for i in range(10)]  # 0..40 s
    for n in range(1, 13):
        plans = plan_segments(cs, n)
        assert len(plans) == min(n, 10)
        assert plans[0].start_s == 0.0 and plans[-1].end_s == 40.0
        assert all(a.end_s == b.start_s for a, b in zip(plans, plans[1:]))  # contiguous, no overlap
        assert [c.chunk_id for p in plans for c in p.chunks] == list(range(10))  # each chunk once, in order
        assert all(p.chunks and p.start_s <= p.chunks[0].start_s and p.chunks[-1].end_s <= p.end_s for p in plans)
    assert [len(p.chunks) for p in plan_segments(cs, 2)] == [5, 5]  # equal time
    # a window cuts the span; the chunks straddling its edges stay whole
    plans = plan_segments([c for c in cs if c.end_s > 10 and c.start_s < 30], 2, 10.0, 30.0)
    assert (plans[0].start_s, plans[-1].end_s) == (10.0, 30.0)
    assert [c.chunk_id for p in plans for c in p.chunks] == [2, 3, 4, 5, 6, 7]


def test_a_boundary_moves_onto_a_nearby_scene_cut():
    cs = [chunk(i, 4.0 * i, 4.0 * (i + 1), cuts=int(i == 6)) for i in range(10)]  # a scene starts at 24 s
    plans = plan_segments(cs, 2)  # equal time would split at 20 s; the cut is 4 s (0.2 of a segment) away
    assert plans[1].start_s == 24.0 and plans[1].chunks[0].chunk_id == 6
    far = [chunk(i, 4.0 * i, 4.0 * (i + 1), cuts=int(i == 8)) for i in range(10)]  # 12 s away: too far
    assert plan_segments(far, 2)[1].start_s == 20.0


def test_spread_and_on_screen_text():
    assert spread(list(range(10)), 3) == [0, 4, 9] and spread([1, 2], 5) == [1, 2] and spread([1, 2, 3], 1) == [2]
    cs = [chunk(0, 0, 4, text="GATE 7 | EXIT"), chunk(1, 4, 8, text="EXIT"), chunk(2, 8, 12),
          chunk(3, 12, 16, text="LOT B")]
    assert on_screen_text(cs) == ("GATE 7", "EXIT", "LOT B")


# ---- over gRPC --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def footage():
    return media.captioned_footage("bikes.mp4", CAPTIONS, seconds=90, fps=5, size=(480, 204))


@pytest.fixture(scope="module")
def stream(module_server, footage):
    srv, addr = module_server(frame_index=True, summary_chunks=16)  # every chunk of a segment is read (and is evidence)
    with Client(addr) as c:
        info = wait_done(c, c.start(str(footage), fps=FPS, clip_frames=CLIP).stream_id)
    assert info.chunks >= 10
    return srv, addr, info


def check_segments(msgs, lo: float, hi: float):
    """The summary's messages are well formed; returns (segments, done)."""
    kinds = [m.WhichOneof("msg") for m in msgs]
    segs = [m.segment for m in msgs if m.segment.index]
    n = len(segs)
    assert kinds == ["progress", "segment"] * n + ["progress", "done"], kinds
    progress = [m.progress for m in msgs if m.WhichOneof("msg") == "progress"]
    assert [(p.segment, p.segments, p.stage) for p in progress] == \
        [(i, n, "segment") for i in range(1, n + 1)] + [(n, n, "overview")]
    assert all(m.random_weights and m.model for m in msgs)  # the tiny model's text is noise, and says so
    done = msgs[-1].done
    assert [s.index for s in segs] == list(range(1, n + 1)) and all(s.segments == n for s in segs)
    assert done.segments == n and done.overview and done.latency_ms > 0
    assert segs[0].start_s == done.window.start_s >= lo and segs[-1].end_s == done.window.end_s <= hi
    assert all(a.end_s == b.start_s for a, b in zip(segs, segs[1:]))  # in order, no overlap, no hole
    for s in segs:
        assert s.start_s < s.end_s and s.summary and s.evidence
        for e in s.evidence:  # each chunk the model read lies in its segment and in the window
            assert e.end_s > s.start_s and e.start_s < s.end_s and e.end_s > lo and e.start_s < hi
            if s.start_s <= e.start_s and e.end_s <= s.end_s:
                assert s.start_s <= e.keyframe_s <= s.end_s
        assert [e.start_s for e in s.evidence] == sorted(e.start_s for e in s.evidence)
    ids = [e.chunk_id for s in segs for e in s.evidence]
    assert len(ids) == len(set(ids))  # no chunk in two segments
    return segs, done


def test_summary_of_the_whole_stream(stream):
    srv, addr, info = stream
    with Client(addr) as c:
        msgs = list(c.summarize(info.stream_id, detail=3, max_new_tokens=8, include_keyframes=True))
    segs, done = check_segments(msgs, 0.0, math.inf)
    assert len(segs) == 3 and done.window.start_s == 0.0 and done.window.end_s == pytest.approx(info.duration_s)
    # every stored chunk is in exactly one segment, and was read
    assert sum(s.chunks for s in segs) == info.chunks and all(s.chunks == len(s.evidence) for s in segs)
    assert all(e.keyframe_jpeg[:2] == b"\xff\xd8" for s in segs for e in s.evidence)
    for lo, hi, text in CAPTIONS:  # each caption is on screen in the segment(s) its time falls in, and no other
        inside = [s for s in segs if s.end_s > lo and s.start_s < hi]
        assert any(squash(text) in squash(" ".join(s.on_screen_text)) for s in inside), (text, inside)
        for s in segs:
            if s not in inside:
                assert squash(text) not in squash(" ".join(s.on_screen_text)), (text, s.start_s, s.end_s)
    for s in segs:  # the segment's text is its chunks' text, each line once
        lines = [x for e in s.evidence for x in e.on_screen_text.split(" | ") if x]
        assert list(s.on_screen_text) == list(dict.fromkeys(lines))


def test_summary_of_a_window_and_refusals(stream):
    srv, addr, info = stream
    with Client(addr) as c:
        msgs = list(c.summarize(info.stream_id, window=(20.0, 70.0), detail=2, max_new_tokens=6))
        segs, done = check_segments(msgs, 20.0, 70.0)
        assert len(segs) == 2 and (done.window.start_s, done.window.end_s) == (20.0, 70.0)
        to_end, done = check_segments(list(c.summarize(info.stream_id, window=(40.0, 0.0), max_new_tokens=4)),
                                      40.0, math.inf)  # end 0: to the end
        assert len(to_end) == srv.settings.summary_segments and done.window.end_s == pytest.approx(info.duration_s)
        for kwargs, code in [(dict(window=(500.0, 600.0)), grpc.StatusCode.INVALID_ARGUMENT),
                             (dict(window=(30.0, 10.0)), grpc.StatusCode.INVALID_ARGUMENT),
                             (dict(detail=srv.settings.max_summary_segments + 1), grpc.StatusCode.INVALID_ARGUMENT),
                             (dict(stream_id="nosuchstream"), grpc.StatusCode.NOT_FOUND)]:
            with pytest.raises(grpc.RpcError) as err:
                list(c.summarize(kwargs.pop("stream_id", info.stream_id), max_new_tokens=4, **kwargs))
            assert err.value.code() == code, kwargs
        assert "no chunk of stream" in _details(c, info.stream_id, (500.0, 600.0))


def _details(c, sid, window) -> str:
    try:
        list(c.summarize(sid, window=window))
    except grpc.RpcError as err:
        return err.details()
    return ""


def test_summary_segments_read_at_most_summary_chunks(make_server, footage):
    srv, addr = make_server(summary_chunks=2)
    with Client(addr) as c:
        info = wait_done(c, c.start(str(footage), fps=FPS, clip_frames=CLIP).stream_id)
        segs, _ = check_segments(list(c.summarize(info.stream_id, detail=2, max_new_tokens=4)), 0.0, math.inf)
    first, second = segs
    assert first.chunks + second.chunks == info.chunks and first.chunks > 2 and second.chunks > 2
    # evenly spread over each segment's chunks (ids 0..n-1 in time order): its first and last are read
    assert [e.chunk_id for e in first.evidence] == [0, first.chunks - 1]
    assert [e.chunk_id for e in second.evidence] == [first.chunks, info.chunks - 1]


# ---- the CLI -----------------------------------------------------------------------------------------------

def test_summarize_command(serve_process, pattern_video):
    addr, env = serve_process
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=2.0, clip_frames=4).stream_id).stream_id
    out = run(["summarize", sid, "--since", "0", "--until", "12", "--detail", "2", "--max-new-tokens", "6",
               "--server", addr], env)
    assert out.returncode == 0, out.stderr
    times = re.findall(r"^\[\s*([\d.]+)s -\s*([\d.]+)s\] ", out.stdout, flags=re.M)
    assert len(times) == 2 and float(times[0][0]) == 0.0 and times[0][1] == times[1][0], out.stdout
    assert "Overview (" in out.stdout and "evidence:" in out.stdout and "random weights" in out.stdout
    js = run(["summarize", sid, "--detail", "3", "--max-new-tokens", "4", "--json", "--server", addr], env)
    assert js.returncode == 0, js.stderr
    got = json.loads(js.stdout)
    assert len(got["segments"]) == 3 and got["overview"] and got["random_weights"] is True
    assert [s["index"] for s in got["segments"]] == [1, 2, 3]
    bad = run(["summarize", sid, "--since", "500", "--until", "600", "--server", addr], env)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
