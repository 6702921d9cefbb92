"""Bad input gets a clear status and message; the server keeps serving and loses nothing stored."""
from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from services.client import Client, state_name
from tests import media
from tests.conftest import wait_done


def corrupt_middle(src: Path, dst: Path) -> Path:
    """Overwrite the middle third of a file with seeded random bytes (container index intact)."""
    data = bytearray(src.read_bytes())
    n = len(data)
    data[n // 3: 2 * n // 3] = np.random.default_rng(1).integers(0, 256, 2 * n // 3 - n // 3, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture
def served(make_server, pattern_video):
    """A server with one good stream already stored."""
    srv, addr = make_server()
    client = Client(addr)
    good = wait_done(client, client.start(str(pattern_video), fps=2, clip_frames=4).stream_id)
    assert state_name(good.state) == "finished"
    yield srv, client, good
    client.channel.close()


def still_serving(client: Client, good) -> None:
    now = client.describe(good.stream_id)
    assert now.chunks == good.chunks and now.frames == good.frames
    assert len(client.ask(good.stream_id, "still there?", top_k=2).evidence) == 2


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def test_missing_file(served, media_dir):
    _, c, good = served
    code, msg = code_of(lambda: c.start(str(media_dir / "nope.mp4")))
    assert code == grpc.StatusCode.NOT_FOUND and "no such file" in msg
    still_serving(c, good)


def test_path_outside_media_roots(served, tmp_path):
    _, c, good = served
    outside = media.synthetic_video(tmp_path / "outside.mp4", seconds=2)
    code, msg = code_of(lambda: c.start(str(outside)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "media roots" in msg
    code, _ = code_of(lambda: c.start("../../../../etc/passwd"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    still_serving(c, good)


def test_not_a_video(served, media_dir):
    _, c, good = served
    path = media.not_a_video(media_dir / "notes.mp4")
    code, msg = code_of(lambda: c.start(str(path)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a readable video" in msg
    still_serving(c, good)


def test_truncated_mp4_refused_before_a_stream_exists(served, media_dir, bikes):
    _, c, good = served
    path = media.truncated_copy(bikes, media_dir / "bikes-half.mp4", 0.5)
    before = len(c.list())
    code, msg = code_of(lambda: c.start(str(path)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bikes-half.mp4" in msg
    assert len(c.list()) == before
    still_serving(c, good)


def test_corrupt_mid_file_fails_the_stream_and_keeps_what_was_stored(served, media_dir, pattern_video):
    _, c, good = served
    path = corrupt_middle(pattern_video, media_dir / "pattern-corrupt.mp4")
    info = wait_done(c, c.start(str(path), fps=2, clip_frames=4).stream_id)
    assert state_name(info.state) == "failed"
    assert "decoding failed after" in info.error
    assert info.chunks >= 1  # the clips decoded before the damage were stored ...
    resp = c.ask(info.stream_id, "what was there before it broke?", top_k=8)
    assert len(resp.evidence) == info.chunks  # ... and stay answerable
    still_serving(c, good)


def test_megamind_bugy_avi_ingests_when_its_folder_is_a_media_root(make_server):
    """Debian's deliberately damaged Xvid AVI: PyAV decodes all 270 frames (ffmpeg only warns)."""
    path = media.megamind_bugy_avi()
    _, addr = make_server(media_roots=(str(path.parent),))
    with Client(addr) as c:
        info = wait_done(c, c.start(str(path), fps=1, clip_frames=4).stream_id)
        assert state_name(info.state) == "finished", info.error
        assert info.chunks == 3 and info.frames == 9  # 9 s at 1 fps
        assert len(c.ask(info.stream_id, "what happens?", top_k=3).evidence) == 3


def test_unknown_stream_id(served):
    _, c, good = served
    for fn in (lambda: c.describe("doesnotexist"), lambda: c.ask("doesnotexist", "hi"),
               lambda: c.stop("doesnotexist"), lambda: c.describe("../../x")):
        code, msg = code_of(fn)
        assert code == grpc.StatusCode.NOT_FOUND and "no stream" in msg
    still_serving(c, good)


@pytest.mark.parametrize("question, expect", [("", "empty"), ("   \n ", "empty"), ("x" * 100_000, "limit")])
def test_bad_questions(served, question, expect):
    _, c, good = served
    code, msg = code_of(lambda: c.ask(good.stream_id, question))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and expect in msg
    still_serving(c, good)


def test_bad_options(served, pattern_video):
    _, c, good = served
    for kwargs in ({"fps": 500}, {"clip_frames": 3}, {"clip_frames": 1000}):
        code, _ = code_of(lambda: c.start(str(pattern_video), **kwargs))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: c.ask(good.stream_id, "q", top_k=10_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = code_of(lambda: c.ask(good.stream_id, "q", window=(100.0, 200.0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "time window" in msg
    still_serving(c, good)
