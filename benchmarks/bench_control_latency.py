"""Benchmark: control calls (DescribeStream, health) stay fast while questions flood the model.

    python benchmarks/bench_control_latency.py            # 200 calls per phase, 50 Asks kept in flight (~1 min)
    python benchmarks/bench_control_latency.py --quick    # 60 calls per phase
    python benchmarks/bench_control_latency.py --json out.json

A real VigilServer in a thread on 127.0.0.1 (tiny random-weight model on CPU, the default frame index, private
redis-server or VIGIL_REDIS_URL) with one ingested 10 s synthetic stream. Measured back to back in one run:

1. baseline: DescribeStream and Health/Check latency (one call at a time, `--calls` each) on an idle server;
2. loaded: the same calls while `--asks` real Asks on that stream (the tiny model answering, 48 new tokens)
   are in flight at every moment: each Ask that finishes is replaced by a new one. The server's question queue
   is sized so none is refused (`max_queued_questions` = asks), i.e. they all wait on services/work.py's queue.

Reports p50 / p99 per call and phase, and loaded / idle. Goal: DescribeStream p99 < 100 ms loaded. Before
questions had their own queue (issue 11) they waited in the event loop's default pool, and a DescribeStream
behind 50 of them took 17.2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from benchmarks.common import log, md_table, pct  # noqa: E402
from encoders.loading import ModelOptions, load_adapter  # noqa: E402
from services.client import Client, state_name  # noqa: E402
from services.config import Settings  # noqa: E402
from services.server import VigilServer  # noqa: E402
from services.wire import ingest_pb2, qa_pb2  # noqa: E402
from streamer.testpattern import synthetic_video  # noqa: E402

QUESTIONS = ["What is happening?", "Which colour is the scene?", "Does anything move?", "When does it change?"]


def timed(call, n: int) -> list[float]:
    """`n` calls one after another; seconds each."""
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)
    return lat


class AskLoad:
    """Keeps `n` Asks in flight on the client's channel: each one that ends is replaced until `stop()`."""

    def __init__(self, client: Client, sid: str, n: int) -> None:
        self.client, self.sid, self.n = client, sid, n
        self.lock = threading.RLock()  # a future already done runs its callback in the thread adding it
        self.in_flight = 0
        self.answered = self.failed = self.sent = 0
        self.codes: dict[str, int] = {}
        self.latencies: list[float] = []
        self.min_in_flight = n
        self._stopping = False
        self._idle = threading.Event()

    def _send(self) -> None:
        q = QUESTIONS[self.sent % len(QUESTIONS)]
        self.sent += 1
        self.in_flight += 1
        t0 = time.perf_counter()
        fut = self.client.qa.Ask.future(qa_pb2.AskRequest(stream_id=self.sid, question=q), timeout=600)
        fut.add_done_callback(lambda f: self._done(f, t0))

    def _done(self, fut, t0: float) -> None:
        with self.lock:
            self.in_flight -= 1
            if fut.exception() is None:
                self.answered += 1
                self.latencies.append(time.perf_counter() - t0)
            else:
                self.failed += 1
                name = fut.exception().code().name
                self.codes[name] = self.codes.get(name, 0) + 1
            if not self._stopping and self.failed < 100:  # refusals would otherwise resend without end
                self.min_in_flight = min(self.min_in_flight, self.in_flight)
                self._send()
            elif self.in_flight == 0:
                self._idle.set()

    def start(self) -> None:
        with self.lock:
            for _ in range(self.n):
                self._send()

    def stop(self, timeout_s: float = 600) -> None:
        with self.lock:
            self._stopping = True
            if self.in_flight == 0:
                self._idle.set()
        if not self._idle.wait(timeout_s):
            raise RuntimeError(f"{self.in_flight} Asks still in flight after {timeout_s}s")


def phase(client: Client, sid: str, calls: int) -> dict:
    health = health_pb2_grpc.HealthStub(client.channel)
    describe = ingest_pb2.DescribeStreamRequest(stream_id=sid)
    out = {}
    for name, call in (("DescribeStream", lambda: client.ingest.DescribeStream(describe, timeout=60)),
                       ("Health/Check", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=60))):
        lat = timed(call, calls)
        out[name] = {"p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "max_s": max(lat), "latencies_s": lat}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 calls per phase instead of 200")
    ap.add_argument("--calls", type=int, help="control calls per phase and kind (default 200; quick 60)")
    ap.add_argument("--asks", type=int, default=50, help="Asks kept in flight during the loaded phase (default 50)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    calls = args.calls or (60 if args.quick else 200)

    log("loading the tiny model")
    adapter = load_adapter(ModelOptions(name="tiny", device="cpu"))
    media = Path(tempfile.mkdtemp(prefix="vigil-bench-control-"))
    redis_url = os.environ.get("VIGIL_REDIS_URL") or None
    server = None
    report: dict = {"env": {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "redis": "VIGIL_REDIS_URL" if redis_url else "private redis-server",
                            "calls": calls, "asks": args.asks}}
    t_all = time.perf_counter()
    try:
        video = synthetic_video(media / "short.mp4", 10, fps=10, scenes=3)
        settings = Settings(port=0, host="127.0.0.1", media_roots=(media,), redis_url=redis_url,
                            namespace=f"vigil-bench-{os.getpid()}", model=ModelOptions(name="tiny", device="cpu"),
                            max_queued_questions=args.asks)  # every Ask of the load is accepted and queued
        report["env"].update(question_workers=settings.question_workers, max_new_tokens=settings.max_new_tokens)
        server = VigilServer(settings, adapter=adapter)
        port = server.start_in_thread()
        log(f"server on 127.0.0.1:{port}")
        with Client(f"127.0.0.1:{port}") as client:
            info = client.start(str(video), fps=2, clip_frames=8)
            while state_name(info.state) not in ("finished", "failed", "stopped"):
                time.sleep(0.05)
                info = client.describe(info.stream_id)
            if state_name(info.state) != "finished":
                raise RuntimeError(f"ingest ended {state_name(info.state)}: {info.error}")
            sid = info.stream_id
            report["env"]["chunks"] = info.chunks
            t0 = time.perf_counter()
            client.ask(sid, QUESTIONS[0])  # warm-up, untimed
            report["env"]["one_ask_s"] = time.perf_counter() - t0
            phase(client, sid, 10)  # warm-up

            log(f"1/2 idle: {calls} DescribeStream + {calls} Health/Check")
            report["idle"] = phase(client, sid, calls)

            log(f"2/2 loaded: the same with {args.asks} Asks in flight")
            load = AskLoad(client, sid, args.asks)
            load.start()
            deadline = time.monotonic() + 120
            while server.work.in_flight < args.asks and time.monotonic() < deadline:  # all accepted and waiting
                time.sleep(0.01)
            report["loaded"] = phase(client, sid, calls)
            report["loaded"]["queue_at_end"] = server.work.in_flight
            with load.lock:
                report["loaded"]["asks"] = {"answered_during": load.answered, "failed": load.failed,
                                            "codes": dict(load.codes), "min_in_flight": load.min_in_flight}
            load.stop()
            report["loaded"]["asks"]["ask_p50_s"] = pct(load.latencies, 50)
    finally:
        if server is not None:
            server.stop_thread()
        shutil.rmtree(media, ignore_errors=True)
    report["total_s"] = time.perf_counter() - t_all
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    return 0


def render(r: dict) -> str:
    e, idle, loaded = r["env"], r["idle"], r["loaded"]
    a = loaded["asks"]
    rows = []
    for name in ("DescribeStream", "Health/Check"):
        i, lo = idle[name], loaded[name]
        rows.append([name, f"{i['p50_s'] * 1000:.1f} / {i['p99_s'] * 1000:.1f}",
                     f"{lo['p50_s'] * 1000:.1f} / {lo['p99_s'] * 1000:.1f}", f"{lo['max_s'] * 1000:.1f}",
                     f"{lo['p50_s'] / i['p50_s']:.2f} / {lo['p99_s'] / i['p99_s']:.2f}"])
    goal = "met" if loaded["DescribeStream"]["p99_s"] < 0.1 else "NOT met"
    return "\n".join([
        f"control-call latency: tiny model on CPU ({e['cpu_count']} cores, torch {e['torch']}, "
        f"{e['torch_threads']} threads), one stream of {e['chunks']} chunks, {e['calls']} calls per phase, "
        f"{e['question_workers']} question workers, one Ask alone {e['one_ask_s'] * 1000:.0f} ms, "
        f"redis: {e['redis']}, total {r['total_s']:.0f} s",
        "",
        md_table(["call", "idle p50 / p99 ms (baseline)", f"{e['asks']} Asks in flight: p50 / p99 ms", "max ms",
                  "loaded / idle (p50 / p99)"], rows),
        "",
        f"Asks during the loaded phase: {a['answered_during']} answered, {a['failed']} failed"
        f"{' ' + json.dumps(a['codes']) if a['codes'] else ''}, "
        f"at least {a['min_in_flight']} in flight throughout, {loaded['queue_at_end']} in the server's queue at the "
        f"end, Ask p50 (queue wait included) {a['ask_p50_s']:.1f} s. Goal DescribeStream p99 < 100 ms loaded: {goal}.",
    ])


if __name__ == "__main__":
    sys.exit(main())
