"""Benchmark: WatchStream watchers and a stalled Redis against control calls and health (issue 21).

    python benchmarks/bench_watchers.py            # 0, 30 and 100 watchers; 3 Redis stalls per watcher count
    python benchmarks/bench_watchers.py --quick    # 0 and 100 watchers; 1 stall each
    python benchmarks/bench_watchers.py --json out.json

A real VigilServer in a thread on 127.0.0.1 (tiny random-weight model on CPU, frame index off) on a private
redis-server this script starts (so it can SIGSTOP it), with one quiet stream: a PushStream that sent its config
and then nothing. Measured back to back in one run:

1. DescribeStream latency (`--calls` one at a time, on a connection of its own) with 0 watchers (the baseline),
   then with 30 and 100 WatchStream calls open on the quiet stream (on 4 other connections);
2. seconds from SIGSTOP of the redis-server to health (grpc.health.v1 Check, polled every 50 ms) reporting
   NOT_SERVING, with 0 and with 60 watchers open; SIGCONT after each, and SERVING again before the next.

Reports p50 / p99 per watcher count and their ratio to the baseline, and each stall's detection time. Before
issue 21 each watcher held a thread of the event loop's small default pool for a second at a time: DescribeStream
took 2.3 s with 30 watchers and 4.3 s with 100; health took 6.5 s to see a stall, and with 60 watchers none.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from benchmarks.common import log, md_table, pct  # noqa: E402
from encoders.describe import DescriberOptions  # noqa: E402
from encoders.loading import ModelOptions, load_adapter  # noqa: E402
from services.config import Settings  # noqa: E402
from services.embedded_redis import EmbeddedRedis  # noqa: E402
from services.server import VigilServer  # noqa: E402
from services.wire import ingest_pb2, ingest_pb2_grpc  # noqa: E402
from testkit.watchers import Watchers, channel  # noqa: E402

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def describe_latency(stub, sid: str, calls: int) -> dict:
    req = ingest_pb2.DescribeStreamRequest(stream_id=sid)
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        stub.DescribeStream(req, timeout=60)
        lat.append(time.perf_counter() - t0)
    return {"p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "max_s": max(lat)}


def health_status(addr: str) -> int | None:
    with channel(addr) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return None


def stall_detection(addr: str, pid: int, limit_s: float = 20.0) -> float | None:
    """Seconds from SIGSTOP to health NOT_SERVING (None: not within `limit_s`); SIGCONT, then SERVING again."""
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    seen = None
    try:
        while time.monotonic() - t0 < limit_s:
            if health_status(addr) == NOT_SERVING:
                seen = time.monotonic() - t0
                break
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while health_status(addr) != health_pb2.HealthCheckResponse.SERVING:
        if time.monotonic() > deadline:
            raise RuntimeError("health never SERVING again after SIGCONT")
        time.sleep(0.1)
    time.sleep(1.0)  # let watchers that saw the outage settle
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="0 and 100 watchers; one stall each")
    ap.add_argument("--calls", type=int, default=50, help="DescribeStream calls per watcher count (default 50)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    counts = (0, 100) if args.quick else (0, 30, 100)
    stalls = 1 if args.quick else 3

    log("loading the tiny model")
    adapter = load_adapter(ModelOptions(name="tiny", device="cpu"))
    media = Path(tempfile.mkdtemp(prefix="vigil-bench-watchers-"))
    redis_srv = EmbeddedRedis().start()
    pid = redis_srv.proc.pid
    server = None
    report: dict = {"env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "calls": args.calls},
                    "describe": {}, "stall": {}}
    release = threading.Event()
    try:
        settings = Settings(port=0, host="127.0.0.1", http_port=0, media_roots=(media,), redis_url=redis_srv.url,
                            namespace=f"vigil-bench-{os.getpid()}", model=ModelOptions(name="tiny", device="cpu"),
                            frames=DescriberOptions(enabled=False), push_idle_timeout_s=3600)  # the quiet push stays
        server = VigilServer(settings, adapter=adapter)
        addr = f"127.0.0.1:{server.start_in_thread()}"
        log(f"server on {addr}")
        ctl = channel(addr)
        stub = ingest_pb2_grpc.IngestServiceStub(ctl)
        name = f"quiet-{uuid.uuid4().hex[:6]}"

        def messages():
            yield ingest_pb2.PushStreamRequest(config=ingest_pb2.PushConfig(name=name, format="mpegts"))
            release.wait(3600)

        push = stub.PushStream.future(messages())
        sid = None
        while sid is None:
            page = stub.ListStreams(ingest_pb2.ListStreamsRequest(page_size=1000))
            sid = next((s.stream_id for s in page.streams if s.source == f"push:{name}"), None)
            time.sleep(0.05)
        describe_latency(stub, sid, 10)  # warm-up
        for n in counts:
            w = Watchers(addr, sid, n, timeout_s=None) if n else None
            if w:
                w.wait_open(n)
                time.sleep(3.0)  # every watcher through a few quiet seconds
            log(f"DescribeStream x{args.calls} with {n} watchers")
            report["describe"][n] = describe_latency(stub, sid, args.calls)
            if w:
                w.close()
        for n in (0, 60):
            w = Watchers(addr, sid, n, timeout_s=None) if n else None
            if w:
                w.wait_open(n)
                time.sleep(2.0)
            report["stall"][n] = []
            for i in range(stalls):
                log(f"Redis SIGSTOP {i + 1}/{stalls} with {n} watchers")
                report["stall"][n].append(stall_detection(addr, pid))
            if w:
                w.close()
        stub.StopStream(ingest_pb2.StopStreamRequest(stream_id=sid), timeout=60)
        release.set()
        push.result(60)
        ctl.close()
    finally:
        release.set()
        os.kill(pid, signal.SIGCONT)
        if server is not None:
            server.stop_thread()
        redis_srv.stop()
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    return 0


def render(r: dict) -> str:
    base = r["describe"][0]["p50_s"]
    rows = [[str(n), f"{d['p50_s'] * 1000:.1f}", f"{d['p99_s'] * 1000:.1f}", f"{d['p50_s'] / base:.2f}x"]
            for n, d in r["describe"].items()]
    out = md_table(["watchers", "DescribeStream p50 ms", "p99 ms", "p50 / no watchers"], rows)
    srows = [[str(n), ", ".join("not seen in 20 s" if s is None else f"{s:.2f}" for s in seen)]
             for n, seen in r["stall"].items()]
    return out + "\n\n" + md_table(["watchers", "SIGSTOP -> health NOT_SERVING (s)"], srows)


if __name__ == "__main__":
    raise SystemExit(main())
