"""Bad input gets a clear status and message; the server keeps serving and loses nothing stored."""
from __future__ import annotations

import io
import math
import re
import struct
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from services.client import Client, state_name
from testkit import media
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


# ---- bounds (issue 11): decoded size, unreadable images, tokens, windows, echoed input -------------------------
def png16_rgba(width: int, height: int) -> bytes:
    """A constant 16-bit RGBA PNG written by hand (PIL cannot write one): row 1 Sub-filtered, the rest Up-filtered,
    so every filtered row is zeros and the file is ~1/230 of its raw size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(1)
    rows = [z.compress(b"\x01" + b"\x12\x34" * 4 + bytes(8 * (width - 1)))]
    same = b"\x02" + bytes(8 * width)
    rows += [z.compress(same) for _ in range(height - 1)] + [z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)  # 16 bits, colour type 6: RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(rows)) + chunk(b"IEND", b"")


def encoded(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, which runs the server: resident now, and the peak since reset_peak()."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


def test_example_images_huge_once_decoded_are_refused_from_the_header(served):
    _, c, good = served
    still_serving(c, good)  # the stream's index is loaded: the measured call allocates only what it decodes
    limit = 64 * 1024 * 1024  # max_example_decoded_bytes' default
    rgba16 = png16_rgba(4800, 4800)  # PIL holds it as 8-bit RGBA: 4800 * 4800 * 4 = 87.9 MiB
    gray16 = encoded(Image.fromarray(np.full((6000, 6000), 1234, np.uint16)))  # I;16: 6000 * 6000 * 2 = 68.7 MiB
    for data, mode, mib in ((rgba16, "RGBA", 87.9), (gray16, "I;16", 68.7)):
        assert len(data) < 1024 * 1024 < limit < mib * 2**20  # small on the wire, over the bound decoded
        reset_peak()
        before, _ = rss_mib()
        code, msg = code_of(lambda: c.ask(good.stream_id, "when?", example_image=data))
        _, peak = rss_mib()
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f" {mode}: {mib} MiB decoded; the limit is 64.0 MiB" in msg, msg
        assert peak - before < 32, f"refusing it still made the server's memory peak at +{peak - before:.0f} MiB"
    still_serving(c, good)


def test_unreadable_example_images_are_invalid_argument(served):
    _, c, good = served
    png = encoded(Image.effect_noise((160, 120), 60).convert("RGB"))
    frames = [Image.new("RGB", (32, 32), (7 * i, 0, 0)) for i in range(40)]
    for data, expect in [
        (png[: len(png) // 2], "not an image PIL can read: image file is truncated"),
        (png[:40], "not an image PIL can read"),  # the header cut inside IHDR
        (b"hello, this is not a picture at all\n" * 20, "not an image PIL can read: its bytes match no"),
        (encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), "JPEG or PNG, not GIF"),
        (encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]), "has 40 frames; at most 16"),
    ]:
        code, msg = code_of(lambda: c.ask(good.stream_id, "when?", example_image=data))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expect in msg, msg
    assert c.ask(good.stream_id, "when?", top_k=1, example_image=png).evidence  # the whole file is fine
    still_serving(c, good)


def test_a_question_is_counted_in_the_models_tokens(served):
    _, c, good = served
    cjk = "监控摄像头看到了什么" * 200  # 2 000 characters: under the character limit, ~4 200 tokens
    code, msg = code_of(lambda: c.ask(good.stream_id, cjk))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert re.fullmatch(r"question is (\d+) tokens \(2000 characters\); the limit is 256 tokens \(2000 characters\)",
                        msg) and int(re.match(r"question is (\d+)", msg)[1]) > 256, msg
    assert c.ask(good.stream_id, "监控摄像头看到了什么?", top_k=1).evidence  # a short one in the same script is fine
    still_serving(c, good)


def test_bad_windows_are_refused_not_read_as_everything(served):
    _, c, good = served
    for window, expect in [
        ((math.nan, 10.0), "NaN"), ((0.0, math.nan), "NaN"), ((math.inf, 0.0), "start must be a finite"),
        ((-1.0, 10.0), "start must be a finite number >= 0"), ((0.0, -5.0), "end must be >= 0"),
        ((0.0, -math.inf), "end must be >= 0"), ((8.0, 2.0), "end must come after its start"),
        ((4.0, 4.0), "end must come after its start"),
    ]:
        code, msg = code_of(lambda: c.ask(good.stream_id, "what happened?", window=window))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "time window" in msg and expect in msg, (window, msg)
    # end 0 still means "to the end", and a window from 0 to inf is the same
    whole = c.ask(good.stream_id, "what happened?", top_k=good.chunks, window=(0.0, 0.0))
    assert len(whole.evidence) == good.chunks and whole.searched_window.end_s == 0.0
    to_inf = c.ask(good.stream_id, "what happened?", top_k=good.chunks, window=(0.0, math.inf))
    assert len(to_inf.evidence) == good.chunks


def test_errors_echo_only_a_short_prefix_of_the_input(served):
    _, c, good = served
    long_id = "s" * 10_000
    for fn in (lambda: c.ask(long_id, "hi"), lambda: c.describe(long_id)):
        code, msg = code_of(fn)
        assert code == grpc.StatusCode.NOT_FOUND and "(10000 chars)" in msg and len(msg) < 140, msg
    code, msg = code_of(lambda: c.ask(good.stream_id, "hi", signals=["x" * 5000, "\x00" * 300]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown retrieval signal" in msg
    assert "(5000 chars)" in msg and "(300 chars)" in msg and len(msg) < 260, msg
    still_serving(c, good)
