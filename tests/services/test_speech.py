"""What was said (issue 24), over the real service: footage with espeak-ng speech mixed in at known times
(testkit.media.spoken_footage), the real recognizer (faster-whisper, Whisper tiny.en), the real MiniLM, a real
gRPC server, a real MQTT broker and a real GStreamer RTSP server. One server for the module: a named camera (the
file) with spoken-word alert rules is ingested once; the other tests read it or add short streams."""
from __future__ import annotations

import time
import uuid

import pytest

from services.alerts import rules as R
from services.client import Client, state_name
from services.wire import ingest_pb2
from testkit import media, rtsp
from tests.conftest import Watcher, wait_done, wait_for
from tests.services.test_alerts import Subscriber, check_exactly_once, mqtt_settings

FPS, CLIP = 1.0, 4
SAID = [  # (start_s, what is said, a question about it worded otherwise, words the transcript must hold)
    (2.0, "The fire alarm is ringing in the kitchen.", "When was the fire alarm going off in the kitchen?",
     ("alarm", "kitchen")),
    (11.0, "Please send an ambulance to the parking garage.", "When did someone call for an ambulance?",
     ("ambulance", "garage")),
    (19.0, "The package was delivered to the front desk.", "When was the package dropped off at the front desk?",
     ("package", "desk")),
]
ALERT_AT = 25.0
ALERT_WORDS = "Somebody left the blue door open."
SECONDS = 30
TAG = uuid.uuid4().hex[:6]
CAMERA = f"talk-{TAG}"


def utterances():
    return [(t, text) for t, text, _, _ in SAID] + [(ALERT_AT, ALERT_WORDS)]


@pytest.fixture(scope="module")
def footage():
    return media.spoken_footage(utterances(), SECONDS)


SAID_SHORT_S = 2.0


@pytest.fixture(scope="module")
def short():
    """12 s: one utterance at 2 s (pushes, RTSP, the no-audio comparison)."""
    return [(SAID_SHORT_S, "Please send an ambulance to the parking garage.")]


@pytest.fixture(scope="module")
def subscriber():
    s = Subscriber()
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(module_server, footage, subscriber):
    """The module's server (speech on, frame index off) with the camera ingested: (server, address, stream id)."""
    cameras = [{"name": CAMERA, "source": str(footage), "fps": FPS, "clip_frames": CLIP, "alerts": [
        {"name": "door", "spoken": "left the blue door open"},
        {"name": "never", "spoken": "evacuate the building now"},
        {"name": "on-screen", "on_screen_text": "blue door"},  # speech is not on-screen text
    ]}]
    srv, addr = module_server(speech=True, cameras=cameras, mqtt=mqtt_settings())
    with Client(addr) as c:
        watch = Watcher(c, CAMERA)
        info = wait_done(c, CAMERA)
        watch.wait_ended()
    assert state_name(info.state) == "finished", info.error
    return srv, addr, info.stream_id, watch


def records(srv, sid):
    return srv.rt.store.chunk_records(sid)


def overlaps(ev, lo, hi) -> bool:
    return ev.end_s > lo and ev.start_s < hi


def test_each_utterance_is_transcribed_in_the_chunk_it_was_said_in(server):
    srv, _, sid, _ = server
    recs = records(srv, sid)
    assert len(recs) >= SECONDS // CLIP
    for t, text, _, words in SAID:
        holding = [r for r in recs if all(w in r.said.lower() for w in words)]
        assert len(holding) == 1, (text, [(r.start_s, r.end_s, r.said) for r in recs])
        (r,) = holding
        (seg,) = [s for s in r.speech if words[0] in s[2].lower()]
        assert abs(seg[0] - t) < 1.0 and seg[1] > seg[0]  # word timestamps on the media clock
        assert r.start_s - 1.0 <= seg[0] < r.end_s  # in (or straddling into) the chunk's range
    silent = [r for r in recs if not any(r.end_s > t - 1 and r.start_s < t + 4 for t, *_ in utterances())]
    assert silent and all(r.speech == () for r in silent), [(r.start_s, r.speech) for r in silent if r.speech]  # noise says nothing


def test_a_question_about_each_utterance_finds_its_moment_with_the_transcript(server):
    _, addr, sid, _ = server
    with Client(addr) as c:
        for t, text, question, words in SAID:
            resp = c.ask(sid, question, top_k=3)
            top = max(resp.evidence, key=lambda e: e.score)
            said = " ".join(s.text for s in top.speech).lower()
            assert top.rank == 1 and overlaps(top, t - 0.5, t + 3.0), (question, [
                (e.start_s, e.end_s, e.score, [s.text for s in e.speech]) for e in resp.evidence])
            assert all(w in said for w in words), said
            assert "speech" in {s.signal for s in top.signals}
            assert all(top.start_s - 1.0 <= s.start_s < top.end_s for s in top.speech)
            assert all(s.wall_start_unix == 0.0 for s in top.speech)  # a file has no wall clock
        only = c.ask(sid, SAID[1][2], top_k=1, signals=["speech"])
        assert overlaps(only.evidence[0], SAID[1][0] - 0.5, SAID[1][0] + 3.0)


def test_a_spoken_word_alert_fires_once_over_mqtt_and_watch(server, subscriber):
    srv, _, sid, watch = server
    srv.stop_thread()  # the publisher hands over what is queued (the module is done with the server after this)
    subscriber.barrier(CAMERA)
    got = subscriber.alerts(CAMERA)
    (a,) = check_exactly_once(got, watch.alerts(), "door")
    assert a["kind"] == "spoken" and a["signal"] == "speech" and a["score"] >= R.MIN_SIMILARITY
    assert "door open" in a["matched_text"].lower()
    assert a["start_s"] - 1.0 <= ALERT_AT < a["end_s"] and a["stream_id"] == sid
    assert {x["rule"] for x in got} == {"door"}  # "never" and on-screen text never matched


@pytest.fixture(scope="module")
def make_server_module(module_server):
    """A second server of the module (speech on) for the short streams: the camera's server is stopped by the
    alert test."""
    srv, addr = module_server(speech=True, http_port=-1)
    return srv, addr


def _chunks(path, size=32 * 1024):
    data = path.read_bytes()
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_a_pushed_mpegts_with_audio_is_transcribed(make_server_module, short):
    srv, addr = make_server_module
    ts = media.spoken_footage(short, 12, fmt="mpegts")
    with Client(addr) as c:
        info = c.push(_chunks(ts), name=f"push-{TAG}", fmt="mpegts", fps=FPS, clip_frames=CLIP)
        info = wait_done(c, info.stream_id)
    assert state_name(info.state) == "finished", info.error
    said = " ".join(r.said for r in records(srv, info.stream_id)).lower()
    assert "ambulance" in said and "garage" in said


def test_a_stream_without_audio_is_unchanged(make_server_module, short):
    """The same video with and without an audio track: the same chunks (times, frames, keyframes); none says
    anything. (tests/streamer/test_audio.py: the decoded frames are identical.)"""
    srv, addr = make_server_module
    with_audio = media.spoken_footage(short, 12)
    without = media.spoken_footage(short, 12, audio=False)
    with Client(addr) as c:
        a = wait_done(c, c.start(str(with_audio), fps=FPS, clip_frames=CLIP).stream_id)
        b = wait_done(c, c.start(str(without), fps=FPS, clip_frames=CLIP).stream_id)
    ra, rb = records(srv, a.stream_id), records(srv, b.stream_id)
    shape = lambda rs: [(r.chunk_id, r.start_s, r.end_s, r.frames, r.keyframe_s) for r in rs]  # noqa: E731
    assert shape(ra) == shape(rb) and a.frames == b.frames
    assert any(r.speech for r in ra) and not any(r.speech for r in rb)

    # the JSON API: each chunk's speech, and the evidence of an answer with what was said in its range
    from tests.http.test_api import call, get_json, sse_events

    status, page = get_json(srv.http_port, f"/api/v1/streams/{a.stream_id}/chunks", token=None)
    said = [s for c in page["chunks"] for s in c["speech"]]
    assert status == 200 and any("ambulance" in s["text"].lower() for s in said)
    assert all(set(s) >= {"start_s", "end_s", "text"} for s in said)
    status, _, raw = call(srv.http_port, f"/api/v1/streams/{a.stream_id}/ask", token=None, body={
        "question": "When did someone call for an ambulance?", "top_k": 1, "max_new_tokens": 2})
    (top,) = dict(sse_events(raw))["evidence"]["evidence"]
    assert status == 200 and "ambulance" in " ".join(s["text"] for s in top["speech"]).lower()

    # the timeline page: a speech bar over the segment, its text as the label
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = b.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(60_000)  # a loaded machine
            page.goto(f"http://127.0.0.1:{srv.http_port}/#stream={a.stream_id}")
            page.wait_for_selector("button.speech")  # a bar (the legend's swatch is a span.speech)
            labels = page.eval_on_selector_all("button.speech", "es => es.map(e => [e.dataset.start, e.title])")
            assert any("ambulance" in t.lower() and abs(float(start) - SAID_SHORT_S) < 1.0 for start, t in labels), labels
        finally:
            b.close()


@pytest.mark.timeout(180)
def test_an_rtsp_camera_with_audio_is_transcribed_and_watched(make_server_module, short):
    if (why := rtsp.gstreamer_rtsp_available()) is not None:
        pytest.fail(f"GStreamer's RTSP server is missing ({why}): scripts/setup.sh installs it")
    srv, addr = make_server_module
    clip = media.spoken_footage(short, 12)
    with rtsp.RtspServer(clip) as cam, Client(addr) as c:
        sid = c.start(cam.url, fps=2, clip_frames=4).stream_id
        watch = Watcher(c, sid)
        try:
            def heard():
                return [r for r in records(srv, sid) if "ambulance" in r.said.lower()]

            (r, *_) = wait_for(heard, 90, "a chunk of the camera with the ambulance in its transcript")
            (seg,) = [s for s in r.speech if "ambulance" in s[2].lower()]
            assert abs(seg[0] - 2.0) < 1.5  # the camera's clock: the file starts at 0 when the stream starts
            assert r.wall_start is not None
            wait_for(lambda: [e for e in watch.events if e.kind == ingest_pb2.StreamEvent.KIND_TRANSCRIPT], 10,
                     "a transcript event on WatchStream")
            said = [s for e in watch.events if e.kind == ingest_pb2.StreamEvent.KIND_TRANSCRIPT for s in e.speech]
            assert any("ambulance" in s.text.lower() for s in said), said
            assert all(abs(s.wall_start_unix - time.time()) < 120 for s in said)  # on the wall clock
        finally:
            c.stop(sid)
            watch.close()


# ---- the spoken-word rule, pure ----------------------------------------------------------------------------
def facts(i: int, speech: str = "", text: str = "") -> R.ChunkFacts:
    return R.ChunkFacts(chunk_id=i, start_s=i * 4.0, end_s=(i + 1) * 4.0, keyframe_s=i * 4.0 + 1, text=text,
                        speech=speech)


@pytest.mark.parametrize("heard,fires", [
    ("The white truck has arrived at dock four.", True), ("The right truck has arrived at dock for.", True),
    ("the white truck has arrived at Dark 4", False),  # "dock four" -> "Dark 4": too far
    ("The package was delivered to the front desk.", False), ("", False)])
def test_spoken_rule_tolerates_recognition_slips_like_on_screen_text(heard, fires):
    rule = R.Rule(name="dock", kind=R.RuleKind.SPOKEN, text="arrived at dock four")
    state, firing = R.evaluate_chunk(rule, R.RuleState(), facts(0, speech=heard))
    assert (firing is not None) == fires
    if fires:
        assert firing.signal == "speech" and firing.matched == heard and firing.score >= R.MIN_SIMILARITY
    # on-screen text alone never fires a spoken rule, nor speech an on-screen one
    assert R.evaluate_chunk(rule, R.RuleState(), facts(0, text=heard))[1] is None
    screen = R.Rule(name="dock", kind=R.RuleKind.ON_SCREEN_TEXT, text="arrived at dock four")
    assert R.evaluate_chunk(screen, R.RuleState(), facts(0, speech=heard))[1] is None


def test_a_camera_file_takes_spoken_rules_with_their_tolerance():
    from services.cameras import AlertRuleConfig

    rule = AlertRuleConfig(name="door", spoken="blue door open", min_similarity=0.7).rule()
    assert rule.kind == R.RuleKind.SPOKEN and rule.text == "blue door open" and rule.min_similarity == 0.7
    for bad in ({"name": "x", "spoken": "..."}, {"name": "x", "spoken": "a", "min_score": 0.5},
                {"name": "x", "spoken": "a", "query": "b"}):
        with pytest.raises(ValueError):
            AlertRuleConfig(**bad)


def test_the_cli_prints_what_was_said_under_each_evidence_item(capsys):
    from services.cli.render import print_answer
    from services.wire import common_pb2, qa_pb2

    resp = qa_pb2.AskResponse(answer="at 12 s", evidence=[qa_pb2.Evidence(
        chunk_id=3, start_s=10.0, end_s=14.0, rank=1, speech=[common_pb2.SpeechSegment(
            start_s=11.2, end_s=13.9, text="Please send an ambulance to the parking garage.")])])
    print_answer(resp, None)
    assert "said @ 11.2s: 'Please send an ambulance to the parking garage.'" in capsys.readouterr().out
