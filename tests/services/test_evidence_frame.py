"""The evidence image is the frame whose text was read: a clip whose sign is on screen only in a frame the frame
index reads but that is not the chunk's keyframe (the real gRPC service, the real frame index, Redis). The returned
evidence JPEG is decoded and read again with the project's own OCR (PP-OCRv4 through rapidocr): the text is in it."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.describe import text_frame_of
from encoders.ocr import FrameText
from services.client import Client
from streamer.testpattern import Caption, captioned_video
from testkit import media
from tests.conftest import wait_done

FPS, CLIP = 2, 4  # the clip's own rate: every frame sampled, 2 s a chunk
SIGN = "FORKLIFT 3 MOVING"
# the pattern's second scene starts at 4.0 s: the cut frame is chunk 2's keyframe (most novel); the sign shows only
# at 5.5 s, chunk 2's last frame, one of the two frames the frame index reads (frames 1 and 3 of 4). "DOCK 4 OPEN"
# is on every frame of chunk 1, its keyframe included: that chunk stores no second frame.
CAPTIONS = (Caption(2.0, 4.0, "DOCK 4 OPEN"), Caption(5.5, 6.0, SIGN))
QUESTION = "When was the forklift moving?"


def text_off_keyframe_clip(media_dir: Path) -> Path:
    """An 8-s, 2-fps, 320x240 test pattern (two scenes) with CAPTIONS burnt in; made once in the media cache."""
    return media.shared_file(media_dir / "sign-off-keyframe-8s.mp4", lambda tmp: captioned_video(
        None, tmp, CAPTIONS, seconds=8, fps=FPS, size=(320, 240), scenes=2))


def read_text(describer, jpeg: bytes) -> str:
    """The on-screen text of a JPEG as the frame index reads it (letters and digits, upper case)."""
    img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return "".join(ch for ch in describer.describe([img]).text.upper() if ch.isalnum())


@pytest.fixture(scope="module")
def stream(module_server, media_dir):
    srv, addr = module_server(frame_index=True)
    with Client(addr) as c:
        info = wait_done(c, c.start(str(text_off_keyframe_clip(media_dir)), fps=FPS, clip_frames=CLIP).stream_id)
    assert info.chunks == 4
    return srv, addr, info.stream_id


def test_the_evidence_image_shows_the_text_that_was_read(stream, describer):
    srv, addr, sid = stream
    sign = SIGN.replace(" ", "")
    with Client(addr) as c:
        resp = c.ask(sid, QUESTION, include_keyframes=True)
    found = [e for e in resp.evidence if sign in e.on_screen_text.replace(" ", "").upper()]
    assert len(found) == 1, [(e.chunk_id, e.on_screen_text) for e in resp.evidence]
    ev = found[0]
    assert "ocr" in {s.signal for s in ev.signals}
    rec = next(r for r in srv.rt.store.chunk_records(sid) if r.chunk_id == ev.chunk_id)
    # the footage is what this test is about: the chunk's keyframe (the scene cut at 4.0 s) lacks the sign
    assert rec.keyframe_s == pytest.approx(4.0) and rec.text_frame_s == pytest.approx(5.5)
    keyframe = srv.rt.store.keyframes(sid, [ev.chunk_id])[0]
    assert keyframe and sign not in read_text(describer, keyframe)
    # the evidence shows the frame the text was read in, and says when it is
    assert ev.keyframe_s == pytest.approx(5.5)
    assert ev.keyframe_jpeg != keyframe
    assert sign in read_text(describer, ev.keyframe_jpeg)


def test_only_text_read_off_the_keyframe_stores_a_second_frame(stream):
    srv, addr, sid = stream
    recs = srv.rt.store.chunk_records(sid)
    # chunk 1 shows "DOCK 4 OPEN" on its keyframe too; chunks 0 and 3 have no text: one extra JPEG in all
    assert [r.chunk_id for r in recs if r.text_frame_s is not None] == [2]
    assert "DOCK" in next(r for r in recs if r.chunk_id == 1).text
    # the other chunks' evidence shows their keyframes, as before
    with Client(addr) as c:
        resp = c.ask(sid, "What does the sign at the dock say?", top_k=4)
    keyframe_s = {r.chunk_id: r.keyframe_s for r in recs}
    assert len(resp.evidence) == 4
    assert all(e.keyframe_s == pytest.approx(keyframe_s[e.chunk_id]) for e in resp.evidence if e.chunk_id != 2)


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 96, 3), dtype=np.uint8)


def test_which_frame_shows_the_text():
    a, b = _frame(1), _frame(2)
    line = [FrameText("GATE 7", 0.9, 1, (10, 10, 60, 30))]
    assert text_frame_of([a, b], {1: line}, keyframe=0) == 1  # read off the keyframe, which looks different there
    assert text_frame_of([a, b], {0: line, 1: line}, keyframe=0) is None  # the keyframe read as much
    assert text_frame_of([a, b], {1: line}, keyframe=1) is None  # read on the keyframe itself
    assert text_frame_of([a, b], {1: []}, keyframe=0) is None  # nothing read
    same = b.copy()
    same[40:, :] = 0  # differs only outside the text's box: the keyframe shows the same text
    assert text_frame_of([same, b], {1: line}, keyframe=0) is None
