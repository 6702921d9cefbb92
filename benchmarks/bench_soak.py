"""Soak: hours of footage through a real `vigil serve`, a camera that keeps dying, questions all along.

    python benchmarks/bench_soak.py                     # 6 h of 1 fps footage, camera killed every 60 s (~15-20 min)
    python benchmarks/bench_soak.py --quick             # 1 h of footage, camera killed every 20 s (~3 min)
    python benchmarks/bench_soak.py --json /tmp/soak.json --frame-index

What runs (all real, all on the production path):

* a `vigil serve` subprocess (the `.venv/bin/vigil` console script, tiny model, its own embedded redis-server,
  i.e. no VIGIL_REDIS_URL: that Redis holds this run's data only). Every VIGIL_* variable of the calling
  environment is dropped; the run sets VIGIL_CACHE_DIR, VIGIL_MEDIA_ROOTS, VIGIL_MEMORY__MAX_BYTES (a retention
  limit, as an operator would set for a long stream), VIGIL_FRAMES__ENABLED (off unless --frame-index: OCR
  per chunk is the slow part on 2 cores) and VIGIL_HTTP_PORT=-1 (a free port); `--set KEY=VALUE` adds others.
* a file stream: a `--hours` long 1 fps 320x180 `testsrc2` H.264 file generated once with ffmpeg (cached under
  tests/.cache/soak), StartStream(fps=1, clip_frames=8): ingested as fast as the model allows.
* a live stream from a real GStreamer RTSP camera (tests/rtsp.py, the looped bikes clip at 25 fps; fps=1,
  clip_frames=8, its own retention limit `--camera-max-mb`), SIGKILLed every `--kill-every` s while it is
  running, down `--down-s` s, then restarted on the same port.
* an Ask every `--ask-every` s, alternating the two streams and a few questions (some with time words).

Every `--sample-every` s: the server's RSS (/proc/PID/status VmRSS), open fds (/proc/PID/fd), threads, the
embedded Redis's INFO used_memory (the redis-server child of the server pid, found in /proc, read over its unix
socket), and DescribeStream of both streams (media seconds ingested = the x axis, "hours of footage").

The run ends when the file stream finishes (or `--hours` of footage are stored); the server gets SIGTERM;
everything started is stopped by pid. Flatness: median of the last quarter of samples vs the median of the
second quarter (the first quarter is warm-up: the retention limits fill up), and the least-squares slope per
hour of footage over the last three quarters. Ask latency also follows the machine's load, so after the soak the
same server ingests a fresh stream of the same footage until it holds the same retained bytes, and questions are
asked on both, interleaved: soaked / fresh p50 is the same-run ratio. Exits 1 if a bound is broken (the --max-*
options, the printed FAIL list: also any stream FAILED, any Ask error, a kill without its reconnect, a stuck file
stream, an unclean SIGTERM), so it can be used as a check.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import md_table, pct  # noqa: E402
from services.client import Client, state_name  # noqa: E402
from services.wire import ingest_pb2, qa_pb2  # noqa: E402
from testkit import rtsp  # noqa: E402
from testkit.media import cache_dir  # noqa: E402

VIGIL = str(Path(sys.executable).with_name("vigil"))
QUESTIONS = ["what happened in the first minute?", "What is happening?", "what happened in the last 5 minutes?",
             "Does anything move?", "what was on screen between 2:00 and 3:00?", "What colour is the scene?"]
MB = 1024 * 1024
log = functools.partial(common.log, tag="soak", clock=True)  # progress: "[soak 12:34:56] ..."


# -- footage --------------------------------------------------------------------------------------------------

def make_footage(seconds: int, size: str = "320x180") -> Path:
    """A `seconds` long 1 fps H.264 test pattern (ffmpeg testsrc2), generated once and cached."""
    dst = cache_dir() / "soak" / f"testsrc2-{size}-1fps-{seconds}s.mp4"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=".mp4")
    os.close(fd)
    t0 = time.monotonic()
    try:
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
               "-i", f"testsrc2=size={size}:rate=1:duration={seconds}", "-c:v", "libx264", "-preset", "veryfast",
               "-crf", "28", "-g", "60", "-pix_fmt", "yuv420p", "-movflags", "+faststart", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log(f"generated {dst} ({seconds} frames, {dst.stat().st_size / MB:.1f} MB) in {time.monotonic() - t0:.0f} s")
    return dst


# -- the server process and its Redis ---------------------------------------------------------------------------

def start_server(port: int, run_dir: Path, media_dir: Path, max_bytes: int, frame_index: bool,
                 extra: dict[str, str], verbose: bool) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_CACHE_DIR=str(cache_dir() / "vigil"), VIGIL_MEDIA_ROOTS=str(media_dir),
               VIGIL_MEMORY__MAX_BYTES=str(max_bytes), VIGIL_FRAMES__ENABLED="true" if frame_index else "false",
               VIGIL_HTTP_PORT="-1")  # the HTTP side on a free port: never collides with another server's 8080
    env.update(extra)
    log_path = run_dir / "server.log"
    out = open(log_path, "wb")
    cmd = [VIGIL, *(["-v"] if verbose else []), "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            cwd=run_dir)
    out.close()
    return proc, log_path


def wait_serving(proc: subprocess.Popen, addr: str, log_path: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(addr) as ch:
        ready = grpc.channel_ready_future(ch)
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"vigil serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    ready.result(timeout=1)
                    return
                except grpc.FutureTimeoutError:
                    continue
        finally:
            ready.cancel()
    raise RuntimeError(f"vigil serve did not listen on {addr} within {timeout_s:.0f} s")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after "(comm)"
            out.append(int(d))
    return out


def find_redis(server_pid: int) -> tuple[int, str] | None:
    """The embedded redis-server child of `server_pid`, and its unix socket: from `--unixsocket PATH` in its
    command line, or the `unixsocket:PATH` title Redis rewrites it to, else `redis.sock` in its working dir."""
    for pid in children(server_pid):
        cmd = _cmdline(pid)
        words = " ".join(cmd).split()
        if not words or not os.path.basename(words[0]).startswith("redis-server"):
            continue
        for i, w in enumerate(words):
            if w == "--unixsocket" and i + 1 < len(words):
                return pid, words[i + 1]
            if w.startswith("unixsocket:"):
                return pid, w.removeprefix("unixsocket:")
        try:
            return pid, str(Path(os.readlink(f"/proc/{pid}/cwd")) / "redis.sock")
        except OSError:
            continue
    return None


def alive(pid: int) -> bool:
    """`pid` runs redis-server and is not a zombie (a container's pid 1 may never reap what it inherits)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X") and "redis-server" in " ".join(_cmdline(pid))


def proc_status(pid: int) -> dict:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        vals[k] = v.strip()
    return {"rss_mb": int(vals["VmRSS"].split()[0]) / 1024, "threads": int(vals["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def dir_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total / MB


# -- load: questions and a dying camera ------------------------------------------------------------------------

class Asker(threading.Thread):
    """One Ask every `every` s (or right after the previous one, if it took longer), alternating streams."""

    def __init__(self, addr: str, streams: list[tuple[str, str]], every: float, t0: float) -> None:
        super().__init__(name="soak-asker", daemon=True)
        self.addr, self.streams, self.every, self.t0 = addr, streams, every, t0
        self.stop_ev = threading.Event()
        self.records: list[dict] = []

    def run(self) -> None:
        with Client(self.addr) as c:
            i = 0
            while not self.stop_ev.is_set():
                name, sid = self.streams[i % len(self.streams)]
                q = QUESTIONS[(i // len(self.streams)) % len(QUESTIONS)]
                t = time.monotonic()
                rec = {"t": round(t - self.t0, 2), "stream": name, "question": q}
                try:
                    resp = c.ask(sid, q, timeout=120)
                    rec.update(ok=True, ms=round((time.monotonic() - t) * 1000, 1), evidence=len(resp.evidence),
                               window=qa_pb2.WindowSource.Name(resp.window_source))
                except grpc.RpcError as exc:
                    rec.update(ok=False, ms=round((time.monotonic() - t) * 1000, 1), code=exc.code().name,
                               error=(exc.details() or "")[:300])
                    log(f"Ask on {name} failed: {exc.code().name}: {exc.details()}")
                self.records.append(rec)
                i += 1
                self.stop_ev.wait(max(0.0, self.every - (time.monotonic() - t)))


class CameraKiller(threading.Thread):
    """Every `every` s, once the camera stream is running: SIGKILL the camera, wait `down_s`, restart it, and
    time how long the stream takes to be running again."""

    def __init__(self, cam: rtsp.RtspServer, addr: str, sid: str, every: float, down_s: float, t0: float) -> None:
        super().__init__(name="soak-camera-killer", daemon=True)
        self.cam, self.addr, self.sid, self.every, self.down_s, self.t0 = cam, addr, sid, every, down_s, t0
        self.stop_ev = threading.Event()
        self.kills: list[dict] = []
        self.errors: list[str] = []

    def _wait_state(self, c: Client, want: str, timeout_s: float) -> float | None:
        t = time.monotonic()
        while time.monotonic() - t < timeout_s:
            if state_name(c.describe(self.sid).state) == want:
                return time.monotonic() - t
            time.sleep(0.2)
        return None

    def run(self) -> None:
        with Client(self.addr) as c:
            while not self.stop_ev.wait(self.every):
                try:
                    if self._wait_state(c, "running", 120) is None:
                        self.errors.append(f"camera stream not running 120 s before kill {len(self.kills) + 1}")
                        continue
                    k = {"t": round(time.monotonic() - self.t0, 2)}
                    self.cam.kill()
                    k["down_seen_s"] = self._wait_state(c, "reconnecting", 30)
                    time.sleep(max(0.0, self.down_s - (k["down_seen_s"] or 0)))
                    self.cam.start()
                    k["restarted_t"] = round(time.monotonic() - self.t0, 2)
                    k["recovered_s"] = self._wait_state(c, "running", 90)
                    self.kills.append(k)
                    log(f"camera kill {len(self.kills)}: reconnecting seen after {k['down_seen_s']} s, running "
                        f"{k['recovered_s']} s after the restart")
                except Exception as exc:  # noqa: BLE001 - recorded and reported, never kills the soak
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    log(f"camera killer: {exc}")
                    if not self.cam.running:
                        try:
                            self.cam.start()
                        except Exception as exc2:  # noqa: BLE001
                            self.errors.append(f"restart: {exc2}")


def fresh_baseline(client: Client, footage: str, long_sid: str, max_bytes: int, bytes_per_hour: float,
                   hours: float, n: int) -> dict | None:
    """Ask latency on the soaked stream against a fresh stream of the same footage holding the same bytes (its
    retention limit just filled), same server, same moment, questions interleaved: separates what the stream's
    age costs from the machine's load."""
    if n <= 0 or bytes_per_hour <= 0:
        return None
    need_h = min(hours, np.ceil(max_bytes / bytes_per_hour * 1.25 * 10) / 10)
    t0 = time.monotonic()
    sid = client.start(footage, fps=1, clip_frames=8).stream_id
    while True:
        info = client.describe(sid)
        if state_name(info.state) in ("finished", "failed") or info.duration_s >= need_h * 3600:
            break
        time.sleep(1)
    if state_name(info.state) == "running":
        info = client.stop(sid)
    log(f"fresh baseline stream {sid}: {info.duration_s / 3600:.2f} h in {time.monotonic() - t0:.0f} s, "
        f"{info.chunk_bytes / MB:.1f} MB kept; asking {n} questions on each stream, interleaved")
    lat: dict[str, list[float]] = {"soaked": [], "fresh": []}
    errors = 0
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        pair = [("soaked", long_sid), ("fresh", sid)]
        for name, s_id in (pair if i % 2 == 0 else pair[::-1]):
            t = time.monotonic()
            try:
                client.ask(s_id, q, timeout=120)
                lat[name].append((time.monotonic() - t) * 1000)
            except grpc.RpcError as exc:
                errors += 1
                log(f"baseline Ask on {name} failed: {exc.code().name}: {exc.details()}")
    p50 = {k: pct(v, 50) for k, v in lat.items()}
    return {"fresh_stream": sid, "fresh_footage_h": info.duration_s / 3600, "fresh_chunk_bytes": info.chunk_bytes,
            "soaked_p50": p50["soaked"], "fresh_p50": p50["fresh"], "soaked_p95": pct(lat["soaked"], 95),
            "fresh_p95": pct(lat["fresh"], 95), "ratio": p50["soaked"] / p50["fresh"], "n": n, "errors": errors,
            "latencies": lat}


# -- analysis --------------------------------------------------------------------------------------------------

def slope_per_hour(xs_h: list[float], ys: list[float]) -> float:
    if len(xs_h) < 2 or max(xs_h) - min(xs_h) <= 0:
        return float("nan")
    return float(np.polyfit(np.asarray(xs_h), np.asarray(ys, dtype=np.float64), 1)[0])


def quarters(samples: list[dict]) -> list[list[dict]]:
    q = len(samples) // 4
    return [samples[:q], samples[q:2 * q], samples[2 * q:3 * q], samples[3 * q:]]


def analyse(samples: list[dict], asks: list[dict], args) -> tuple[list[dict], list[dict]]:
    """Per-quarter windows, and flatness checks (name, q2, q4, ratio, slope/h, bound, ok)."""
    qs = quarters(samples)
    windows = []
    prev_t = -1e9
    for i, part in enumerate(qs):
        t_end = part[-1]["t"]
        lat = [a["ms"] for a in asks if a["ok"] and prev_t < a["t"] <= t_end]
        errs = sum(1 for a in asks if not a["ok"] and prev_t < a["t"] <= t_end)
        windows.append({
            "window": ["warm-up (Q1)", "Q2 (baseline)", "Q3", "end (Q4)"][i],
            "footage_h": part[-1]["footage_s"] / 3600, "wall_s": t_end,
            "rss_mb": statistics.median(s["rss_mb"] for s in part),
            "fds": statistics.median(s["fds"] for s in part), "fds_max": max(s["fds"] for s in part),
            "threads": statistics.median(s["threads"] for s in part),
            "redis_mb": statistics.median(s["redis_mb"] for s in part),
            "file_chunks": part[-1]["file_chunks"], "cam_chunks": part[-1]["cam_chunks"],
            "file_kept": part[-1]["file_kept"], "cam_kept": part[-1]["cam_kept"],
            "ask_p50": pct(lat, 50), "ask_p95": pct(lat, 95), "asks": len(lat) + errs, "ask_errors": errs,
            "reconnects": part[-1]["cam_reconnects"], "gaps": part[-1]["cam_gaps"]})
        prev_t = t_end
    steady = samples[len(qs[0]):]
    xs = [s["footage_s"] / 3600 for s in steady]
    checks = []

    def add(name, key, kind, bound, unit):
        q2 = statistics.median(s[key] for s in qs[1])
        q4 = statistics.median(s[key] for s in qs[3])
        slope = slope_per_hour(xs, [s[key] for s in steady])
        if kind == "ratio":
            ok = q4 <= q2 * bound
            bound_s = f"Q4/Q2 <= {bound:.2f}"
        else:
            ok = q4 - q2 <= bound
            bound_s = f"Q4 - Q2 <= {bound:g}"
        checks.append({"metric": name, "unit": unit, "q2": q2, "q4": q4, "ratio": q4 / q2 if q2 else float("nan"),
                       "delta": q4 - q2, "slope_per_h": slope, "bound": bound_s, "ok": bool(ok)})

    add("server RSS", "rss_mb", "ratio", 1 + args.max_rss_growth, "MB")
    add("server open fds", "fds", "delta", args.max_fd_growth, "")
    add("server threads", "threads", "delta", args.max_thread_growth, "")
    add("Redis used_memory", "redis_mb", "ratio", 1 + args.max_redis_growth, "MB")
    lat_q = []
    for part in (qs[1], qs[3]):
        lo, hi = part[0]["t"], part[-1]["t"]
        lat_q.append([a["ms"] for a in asks if a["ok"] and lo <= a["t"] <= hi])
    if lat_q[0] and lat_q[1]:
        q2, q4 = pct(lat_q[0], 50), pct(lat_q[1], 50)
        steady_asks = [a for a in asks if a["ok"] and a["t"] >= steady[0]["t"]]
        foot = np.interp([a["t"] for a in steady_asks], [s["t"] for s in samples], [s["footage_s"] for s in samples])
        checks.append({"metric": "Ask p50 latency", "unit": "ms", "q2": q2, "q4": q4, "ratio": q4 / q2,
                       "delta": q4 - q2, "slope_per_h": slope_per_hour(list(foot / 3600),
                                                                      [a["ms"] for a in steady_asks]),
                       "bound": f"Q4/Q2 <= {args.max_latency_ratio:.2f}", "ok": q4 <= q2 * args.max_latency_ratio})
    return windows, checks


def scan_log(path: Path) -> dict:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    levels = {lvl: [ln for ln in lines if f" {lvl} " in ln] for lvl in ("WARNING", "ERROR", "CRITICAL")}
    tracebacks = sum(1 for ln in lines if ln.startswith("Traceback"))

    def distinct(ls):
        seen = {}
        for ln in ls:
            key = ln.split(" ", 3)[-1][:160]  # without the timestamp
            seen[key] = seen.get(key, 0) + 1
        return sorted(seen.items(), key=lambda kv: -kv[1])[:8]

    return {"lines": len(lines), "tracebacks": tracebacks,
            **{lvl.lower(): len(ls) for lvl, ls in levels.items()},
            "top_warnings": distinct(levels["WARNING"]), "top_errors": distinct(levels["ERROR"] + levels["CRITICAL"])}


# -- the run ---------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 h of footage, camera killed every 20 s (~3 min)")
    ap.add_argument("--hours", type=float, help="footage length (default 6; --quick: 1)")
    ap.add_argument("--kill-every", type=float, help="seconds between camera kills (default 60; --quick: 20)")
    ap.add_argument("--down-s", type=float, default=4.0, help="seconds the camera stays down")
    ap.add_argument("--ask-every", type=float, default=3.0, help="seconds between questions")
    ap.add_argument("--sample-every", type=float, help="seconds between samples (default 5; --quick: 2)")
    ap.add_argument("--max-mb", type=float, help="VIGIL_MEMORY__MAX_BYTES in MiB: the file stream's retention "
                    "limit (default 24: ~1 h of footage; --quick: 2)")
    ap.add_argument("--camera-max-mb", type=float, help="the camera stream's retention limit in MiB (default 0.5: "
                    "~100 s of camera; --quick: 0.25)")
    ap.add_argument("--frame-index", action="store_true", help="run the frame index (OCR + labels) per chunk")
    ap.add_argument("--set", action="append", default=[], metavar="VIGIL_X=V", help="extra server setting")
    ap.add_argument("--verbose-server", action="store_true", help="run `vigil -v serve` (INFO log)")
    ap.add_argument("--max-wall-s", type=float, default=4 * 3600, help="give up (and fail) after this long")
    ap.add_argument("--stuck-s", type=float, default=180, help="fail when the file stream makes no progress "
                    "this long")
    ap.add_argument("--max-rss-growth", type=float, default=0.20)
    ap.add_argument("--max-redis-growth", type=float, default=0.20)
    ap.add_argument("--max-fd-growth", type=float, default=10)
    ap.add_argument("--max-thread-growth", type=float, default=10)
    ap.add_argument("--max-latency-ratio", type=float, default=2.0)
    ap.add_argument("--baseline-asks", type=int, help="questions per stream in the fresh-stream baseline "
                    "(default 30; --quick: 12; 0: skip it)")
    ap.add_argument("--max-age-latency-ratio", type=float, default=1.5,
                    help="Ask p50 on the soaked stream / on the fresh one, same run")
    ap.add_argument("--max-recovery-s", type=float, default=60.0, help="camera stream running again within")
    ap.add_argument("--json", type=Path, help="write the raw samples, asks and kills here")
    args = ap.parse_args()
    hours = args.hours if args.hours is not None else (1.0 if args.quick else 6.0)
    kill_every = args.kill_every if args.kill_every is not None else (20.0 if args.quick else 60.0)
    sample_every = args.sample_every if args.sample_every is not None else (2.0 if args.quick else 5.0)
    max_bytes = int((args.max_mb if args.max_mb is not None else (2.0 if args.quick else 24.0)) * MB)
    cam_max_bytes = int((args.camera_max_mb if args.camera_max_mb is not None else (0.25 if args.quick else 0.5)) * MB)
    if args.baseline_asks is None:
        args.baseline_asks = 12 if args.quick else 30
    extra = {}
    for kv in args.set:
        k, sep, v = kv.partition("=")
        if not sep or not k.startswith("VIGIL_"):
            ap.error(f"--set wants VIGIL_NAME=VALUE, got {kv!r}")
        extra[k] = v
    if (why := rtsp.gstreamer_rtsp_available()) is not None:
        log(f"cannot run the camera: {why}")
        return 2
    if not os.access(VIGIL, os.X_OK):
        log(f"{VIGIL} not found: pip install -e . in this interpreter's environment")
        return 2

    footage = make_footage(int(round(hours * 3600)))
    camera_file = rtsp.long_bikes()
    run_dir = Path(tempfile.mkdtemp(prefix="vigil-soak-"))
    port = rtsp.free_port()
    addr = f"127.0.0.1:{port}"
    failures: list[str] = []
    samples: list[dict] = []
    server = cam = asker = killer = None
    redis_pids: list[int] = []
    result: dict = {}
    stopping = {"sig": None}

    def on_signal(signum, _frame):
        stopping["sig"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    t_start = time.monotonic()
    load_start = os.getloadavg()[0]
    try:
        server, log_path = start_server(port, run_dir, footage.parent, max_bytes, args.frame_index, extra,
                                        args.verbose_server)
        log(f"vigil serve pid {server.pid} on {addr}; log {log_path}")
        wait_serving(server, addr, log_path)
        found = find_redis(server.pid)
        if found is None:
            raise RuntimeError(f"no redis-server child of the server (pid {server.pid}): is VIGIL_REDIS_URL set?")
        redis_pid, sock = found
        redis_pids.append(redis_pid)
        r = redis.Redis(unix_socket_path=sock, socket_timeout=10)
        log(f"embedded redis-server pid {redis_pid} at {sock}")
        cam = rtsp.RtspServer(camera_file).start()
        log(f"camera pid {cam.pid} at {cam.url}")
        client = Client(addr)
        cam_info = client.start(cam.url, fps=1, clip_frames=8,
                                memory=ingest_pb2.MemoryOptions(max_bytes=cam_max_bytes))
        t0 = time.monotonic()
        file_info = client.start(str(footage), fps=1, clip_frames=8)
        fsid, csid = file_info.stream_id, cam_info.stream_id
        log(f"file stream {fsid} ({hours:g} h), camera stream {csid}")
        asker = Asker(addr, [("file", fsid), ("camera", csid)], args.ask_every, t0)
        killer = CameraKiller(cam, addr, csid, kill_every, args.down_s, t0)
        started_load = False
        last_progress, last_footage = time.monotonic(), -1.0
        while True:
            now = time.monotonic()
            if server.poll() is not None:
                failures.append(f"vigil serve exited with {server.returncode} during the soak")
                break
            fi, ci = client.describe(fsid), client.describe(csid)
            found = find_redis(server.pid)
            if found is not None and found[0] != redis_pids[-1]:
                redis_pids.append(found[0])
                failures.append(f"the embedded redis-server was restarted (pid {redis_pids[-2]} -> {found[0]})")
                r = redis.Redis(unix_socket_path=found[1], socket_timeout=10)
            st = proc_status(server.pid)
            mem = r.info("memory")
            kept = r.zcard(f"vigil:s:{{{fsid}}}:chunks"), r.zcard(f"vigil:s:{{{csid}}}:chunks")
            s = {"t": round(now - t0, 2), "footage_s": fi.duration_s, "file_state": state_name(fi.state),
                 "file_frames": fi.frames, "file_chunks": fi.chunks, "file_chunk_mb": fi.chunk_bytes / MB,
                 "file_memory_mb": fi.memory_bytes / MB, "consolidated": fi.consolidated_chunks,
                 "deleted": fi.deleted_chunks, "cam_state": state_name(ci.state), "cam_chunks": ci.chunks,
                 "cam_chunk_mb": ci.chunk_bytes / MB, "cam_reconnects": ci.reconnects, "cam_gaps": len(ci.gaps),
                 "cam_dropped": ci.dropped_frames, "cam_lag_s": ci.lag_s, **st,
                 "file_kept": kept[0], "cam_kept": kept[1], "redis_keys": r.dbsize(),
                 "redis_mb": mem["used_memory"] / MB, "redis_rss_mb": mem["used_memory_rss"] / MB,
                 "redis_dir_mb": dir_mb(str(Path(sock).parent)),
                 "load1": os.getloadavg()[0], "asks": len(asker.records), "ask_errors": sum(1 for a in asker.records if not a["ok"])}
            samples.append(s)
            if len(samples) % max(1, int(60 / sample_every)) == 0:
                log(f"{s['footage_s'] / 3600:5.2f} h footage, {s['t']:6.0f} s: RSS {s['rss_mb']:.0f} MB, "
                    f"fds {s['fds']}, threads {s['threads']}, Redis {s['redis_mb']:.1f} MB, file chunks "
                    f"{s['file_chunks']} ({s['file_kept']} kept, {s['file_chunk_mb']:.1f} MB), camera {s['cam_state']} "
                    f"(reconnects {s['cam_reconnects']}), asks {s['asks']} ({s['ask_errors']} failed)")
            for name, info in (("file", fi), ("camera", ci)):
                if state_name(info.state) == "failed":
                    failures.append(f"the {name} stream FAILED: {info.error}")
            if any("FAILED" in f for f in failures):
                break
            if not started_load and fi.chunks >= 1 and ci.chunks >= 1:
                asker.start()
                killer.start()
                started_load = True
                log("both streams have chunks: questions and camera kills start")
            if fi.duration_s > last_footage:
                last_footage, last_progress = fi.duration_s, now
            elif state_name(fi.state) == "running" and now - last_progress > args.stuck_s:
                failures.append(f"the file stream made no progress for {args.stuck_s:.0f} s "
                                f"(stuck at {fi.duration_s:.0f} s of footage, {fi.chunks} chunks)")
                break
            if state_name(fi.state) == "finished":
                log("the file stream finished")
                break
            if fi.duration_s >= hours * 3600:
                client.stop(fsid)
                break
            if now - t0 > args.max_wall_s:
                failures.append(f"gave up after {args.max_wall_s:.0f} s wall at {fi.duration_s / 3600:.2f} h")
                break
            time.sleep(max(0.0, sample_every - (time.monotonic() - now)))
        wall_s = time.monotonic() - t0
        # wind down: no more kills or questions; the camera must come back from the last kill
        for th in (killer, asker):
            if th.is_alive():
                th.stop_ev.set()
        for th in (killer, asker):
            if th.is_alive():
                th.join(timeout=150)
        t_wait = time.monotonic()
        while server.poll() is None and time.monotonic() - t_wait < 90:
            ci = client.describe(csid)
            if state_name(ci.state) == "running" and ci.reconnects >= len(killer.kills):
                break
            time.sleep(0.5)
        fi, ci = client.describe(fsid), client.describe(csid)
        kills = killer.kills
        if ci.reconnects != len(kills):
            failures.append(f"camera: {len(kills)} kills but {ci.reconnects} reconnects")
        slow = [k for k in kills if k["recovered_s"] is None or k["recovered_s"] > args.max_recovery_s]
        if slow:
            failures.append(f"camera: {len(slow)} restarts not running again within {args.max_recovery_s:.0f} s")
        failures += [f"camera killer: {e}" for e in killer.errors]
        if state_name(fi.state) not in ("finished", "stopped"):
            failures.append(f"the file stream ended {state_name(fi.state)} ({fi.error})")
        errors = [a for a in asker.records if not a["ok"]]
        if errors:
            codes = {}
            for a in errors:
                codes[a["code"]] = codes.get(a["code"], 0) + 1
            failures.append(f"{len(errors)} of {len(asker.records)} questions failed: {codes}; first: "
                            f"{errors[0]['code']}: {errors[0]['error']}")
        baseline = fresh_baseline(client, str(footage), fsid, max_bytes, fi.bytes_per_hour, hours,
                                  args.baseline_asks)
        if baseline and baseline["ratio"] > args.max_age_latency_ratio:
            failures.append(f"Ask p50 on the soaked stream is {baseline['ratio']:.2f}x that on a fresh stream "
                            f"holding the same bytes (bound {args.max_age_latency_ratio:.2f})")
        if baseline and baseline["errors"]:
            failures.append(f"{baseline['errors']} questions failed in the fresh-stream baseline")
        client.stop(csid)
        client.channel.close()
        # SIGTERM: the server must stop cleanly and take its Redis with it
        t_term = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
            failures.append("vigil serve did not exit within 60 s of SIGTERM (killed)")
        term_s = time.monotonic() - t_term
        if rc not in (0, None):
            failures.append(f"vigil serve exited with {rc} after SIGTERM")
        # the server stops its private Redis and removes its temp dir (README: "stopped on exit"); the kernel's
        # parent-death signal is only the fallback for a server that dies
        redis_alive_at_exit = [pid for pid in redis_pids if alive(pid)]
        t_gone = time.monotonic()
        while any(alive(pid) for pid in redis_pids) and time.monotonic() - t_gone < 10:
            time.sleep(0.1)
        for pid in redis_pids:
            if alive(pid):
                failures.append(f"the embedded redis-server (pid {pid}) still runs 10 s after the server exited")
        redis_dir = Path(sock).parent
        redis_dir_left = redis_dir.exists()
        if redis_dir_left:
            failures.append(f"shutdown: the private Redis dir {redis_dir} (its append-only file, i.e. the streams' "
                            f"data) was left behind after SIGTERM")
            if redis_dir.name.startswith("vigil-redis-"):
                shutil.rmtree(redis_dir, ignore_errors=True)  # ours: this run's server made it
        if len(samples) < 8:
            failures.append(f"only {len(samples)} samples: too few to judge flatness")
            windows, checks = [], []
        else:
            windows, checks = analyse(samples, asker.records, args)
            failures += [f"{c['metric']}: Q2 {c['q2']:.1f} -> Q4 {c['q4']:.1f} breaks {c['bound']}"
                         for c in checks if not c["ok"]]
        logs = scan_log(log_path)
        result = {
            "config": {"hours": hours, "kill_every_s": kill_every, "down_s": args.down_s,
                       "ask_every_s": args.ask_every, "sample_every_s": sample_every, "max_bytes": max_bytes,
                       "camera_max_bytes": cam_max_bytes, "frame_index": args.frame_index,
                       "footage": str(footage), "camera_file": str(camera_file), "extra": extra,
                       "host": platform.node(), "cpus": os.cpu_count(), "load_avg_start": load_start},
            "wall_s": wall_s, "footage_s": fi.duration_s, "file": {"state": state_name(fi.state),
                                                                  "frames": fi.frames, "chunks": fi.chunks,
                                                                  "chunk_bytes": fi.chunk_bytes,
                                                                  "memory_bytes": fi.memory_bytes,
                                                                  "bytes_per_hour": fi.bytes_per_hour,
                                                                  "consolidated": fi.consolidated_chunks,
                                                                  "deleted": fi.deleted_chunks},
            "camera": {"state_before_stop": state_name(ci.state), "chunks": ci.chunks, "reconnects": ci.reconnects,
                       "gaps": len(ci.gaps), "dropped_frames": ci.dropped_frames, "chunk_bytes": ci.chunk_bytes},
            "baseline": baseline, "kills": kills, "sigterm_exit": rc, "sigterm_s": term_s, "redis_alive_at_exit": redis_alive_at_exit,
            "redis_dir_left": redis_dir_left, "server_log": logs,
            "windows": windows, "checks": checks, "failures": failures,
            "samples": samples, "asks": asker.records}
    except KeyboardInterrupt:
        log(f"interrupted ({'SIGTERM' if stopping['sig'] else 'Ctrl-C'}): cleaning up")
        failures.append("interrupted")
    finally:
        for th in (killer, asker):
            if th is not None and th.is_alive():
                th.stop_ev.set()
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for pid in redis_pids:  # only if the server did not take it down (it always should)
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        if cam is not None:
            cam.close()
        total_s = time.monotonic() - t_start
    if not result:
        return 1
    result["total_s"] = total_s
    result["load1_p50"] = pct([x["load1"] for x in result["samples"]], 50)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
        log(f"wrote {args.json}")
    shutil.rmtree(run_dir, ignore_errors=True) if not failures else log(f"kept {run_dir} (server.log)")
    return 1 if failures else 0


def report(res: dict) -> None:
    cfg = res["config"]
    f = lambda x, d=1: "-" if x is None or x != x else f"{x:.{d}f}"  # noqa: E731
    print(f"## Soak: {cfg['hours']:g} h of 1 fps footage, camera killed every {cfg['kill_every_s']:g} s, "
          f"an Ask every {cfg['ask_every_s']:g} s\n")
    print(f"{res['footage_s'] / 3600:.2f} h of footage in {res['wall_s']:.0f} s wall "
          f"(**{res['footage_s'] / max(res['wall_s'], 1e-9):.1f}x real time**, {res['total_s']:.0f} s in all); "
          f"file stream {res['file']['state']}, {res['file']['frames']} frames, {res['file']['chunks']} chunks "
          f"stored ({res['file']['chunk_bytes'] / MB:.1f} MB kept under retention, which merged "
          f"{res['file']['consolidated']} and deleted {res['file']['deleted']}); camera {len(res['kills'])} kills, "
          f"{res['camera']['reconnects']} reconnects, {res['camera']['chunks']} chunks stored; load average "
          f"{f(res['load1_p50'])} (p50); frame index "
          f"{'on' if cfg['frame_index'] else 'off'}; retention {cfg['max_bytes'] / MB:g} MiB (file), "
          f"{cfg['camera_max_bytes'] / MB:g} MiB (camera)\n")
    rows = [[w["window"], f(w["footage_h"], 2), f(w["wall_s"], 0), f(w["rss_mb"], 0),
             f"{w['fds']:g} / {w['fds_max']}", f"{w['threads']:g}", f(w["redis_mb"], 1),
             f"{w['file_chunks']} ({w['file_kept']}) / {w['cam_chunks']} ({w['cam_kept']})", f"{f(w['ask_p50'], 0)} / {f(w['ask_p95'], 0)}",
             f"{w['asks']} / {w['ask_errors']}", str(w["reconnects"]), str(w["gaps"])]
            for w in res["windows"]]
    print(md_table(["window (by samples)", "footage h (end)", "wall s (end)", "RSS MB (median)",
                    "fds (median / max)", "threads", "Redis used MB", "chunks stored (kept) file / camera",
                    "Ask p50 / p95 ms", "asks / failed", "camera reconnects", "gaps"], rows))
    print()
    rows = [[c["metric"], f"{f(c['q2'])} {c['unit']}".strip(), f"{f(c['q4'])} {c['unit']}".strip(),
             f(c["ratio"], 3), f"{c['slope_per_h']:+.2f}" if c["slope_per_h"] == c["slope_per_h"] else "-",
             c["bound"], "ok" if c["ok"] else "**BROKEN**"] for c in res["checks"]]
    print(md_table(["metric", "Q2 median", "Q4 median", "Q4 / Q2", "slope per footage hour (Q2-Q4)", "bound",
                    "verdict"], rows))
    b = res.get("baseline")
    if b:
        print(f"\nSame run, after the soak, {b['n']} questions on each, interleaved (camera still ingesting):\n")
        print(md_table(["stream", "footage h", "chunk MB kept", "Ask p50 / p95 ms", "vs fresh (p50)"],
                       [[f"soaked ({cfg['hours']:g} h)", f(res["footage_s"] / 3600, 2),
                         f(res["file"]["chunk_bytes"] / MB), f"{f(b['soaked_p50'], 0)} / {f(b['soaked_p95'], 0)}",
                         f"**{b['ratio']:.2f}**"],
                        ["fresh (baseline)", f(b["fresh_footage_h"], 2), f(b["fresh_chunk_bytes"] / MB),
                         f"{f(b['fresh_p50'], 0)} / {f(b['fresh_p95'], 0)}", "1.00"]]))
    rec = [k["recovered_s"] for k in res["kills"] if k["recovered_s"] is not None]
    lg = res["server_log"]
    print(f"\nCamera: running again {f(pct(rec, 50))} s (p50) / {f(max(rec) if rec else None)} s (max) after each "
          f"restart. SIGTERM: exit {res['sigterm_exit']} in {res['sigterm_s']:.1f} s. Server log: {lg['lines']} "
          f"lines, {lg['warning']} warnings, {lg['error'] + lg['critical']} errors, {lg['tracebacks']} tracebacks.")
    for msg, n in lg["top_errors"]:
        print(f"  error x{n}: {msg}")
    if res["failures"]:
        print("\n**FAIL**:\n" + "\n".join(f"- {x}" for x in res["failures"]))
    else:
        print("\n**PASS**: flat after warm-up, no stream failed, every question answered.")


if __name__ == "__main__":
    sys.exit(main())
