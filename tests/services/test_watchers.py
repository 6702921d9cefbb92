"""WatchStream off the shared pool (issue 21): 100 watchers of a quiet stream cost one poller thread and leave
DescribeStream fast; watchers are capped per stream and per client (RESOURCE_EXHAUSTED); health follows a stalled
Redis (SIGSTOP) within 2 s with watchers open; StopStream on a push that has sent nothing ends it STOPPED."""
from __future__ import annotations

import os
import signal
import statistics
import threading
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.client import Client, state_name
from services.wire import ingest_pb2, ingest_pb2_grpc
from testkit.watchers import Watchers, channel
from tests.conftest import wait_for

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class IdlePush:
    """A PushStream that sends its config and then nothing (a quiet, running stream) until `close()`."""

    def __init__(self, client: Client) -> None:
        self.name = f"idle-{uuid.uuid4().hex[:6]}"
        self._release = threading.Event()

        def messages():
            yield ingest_pb2.PushStreamRequest(config=ingest_pb2.PushConfig(name=self.name, format="mpegts"))
            self._release.wait(120)

        self.call = client.ingest.PushStream.future(messages(), timeout=120)

        def find():
            page = client.ingest.ListStreams(ingest_pb2.ListStreamsRequest(page_size=1000))
            return next((s for s in page.streams if s.source == f"push:{self.name}"), None)

        self.info = wait_for(find, 30, "the pushed stream")
        self.stream_id = self.info.stream_id

    def close(self) -> None:
        self._release.set()


def _describe_times(stub, sid: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        stub.DescribeStream(ingest_pb2.DescribeStreamRequest(stream_id=sid), timeout=30)
        out.append(time.perf_counter() - t0)
    return out


def _watch_threads(sid: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == f"watch-{sid}" and t.is_alive())


@pytest.mark.timeout(240)
def test_100_watchers_of_a_quiet_stream_leave_describe_fast_and_stop_ends_an_idle_push_stopped(make_server):
    srv, addr = make_server()
    with Client(addr) as c:
        push = IdlePush(c)
        sid = push.stream_id
        watchers = None
        try:
            desc = channel(addr)
            stub = ingest_pb2_grpc.IngestServiceStub(desc)
            base = statistics.median(_describe_times(stub, sid, 10))
            watchers = Watchers(addr, sid, 100)
            wait_for(lambda: watchers.snapshots() == 100, 60, "100 watchers' snapshots")
            wait_for(lambda: srv._ingest_api.watchers.watchers(sid) == 100, 30, "100 watchers joined")
            time.sleep(2.5)  # every watcher waiting through two or more of the poller's quiet reads
            times = _describe_times(stub, sid, 20)
            p50 = statistics.median(times)
            print(f"DescribeStream p50: {base * 1000:.1f} ms alone, {p50 * 1000:.1f} ms with 100 watchers")
            assert p50 < 0.2, f"DescribeStream p50 {p50 * 1000:.0f} ms with 100 watchers (alone {base * 1000:.0f} ms)"
            assert _watch_threads(sid) == 1  # one poller for the stream, not a thread per watcher

            # StopStream on a push that has sent nothing: stopped, not failed
            info = c.stop(sid)
            assert state_name(info.state) == "stopped", (state_name(info.state), info.error)
            assert not info.error
            # every watcher got the stream's end (one event read, fanned out to all) and its call ended
            for t in watchers.threads:
                t.join(30)
            ends = [evs[-1] for evs in watchers.events]
            assert all(e.kind == ingest_pb2.StreamEvent.KIND_STATE and state_name(e.info.state) == "stopped"
                       for e in ends), {state_name(e.info.state) for e in ends}
            assert watchers.errors == [None] * 100
            wait_for(lambda: srv._ingest_api.watchers.watchers() == 0, 10, "the watchers' places given back")
            wait_for(lambda: _watch_threads(sid) == 0, 10, "the poller thread gone with its last watcher")
            desc.close()
        finally:
            push.close()
            if watchers is not None:
                watchers.close()


@pytest.mark.timeout(120)
def test_watchers_are_capped_per_stream_and_per_client(make_server):
    srv, addr = make_server(max_watchers_per_stream=2, max_watchers_per_client=3)
    with Client(addr) as c:
        a, b = IdlePush(c), IdlePush(c)
        held = []
        try:
            held.append(Watchers(addr, a.stream_id, 2, channels=2))
            wait_for(lambda: held[0].snapshots() == 2, 30, "two watchers of stream a")
            third = Watchers(addr, a.stream_id, 1, channels=1)  # a third on the same stream
            third.threads[0].join(30)
            held.append(third)
            assert third.errors == [grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert third.events == [[]]  # refused before its snapshot
            err = third.calls[0]
            assert "VIGIL_MAX_WATCHERS_PER_STREAM" in err.details()

            held.append(Watchers(addr, b.stream_id, 1, channels=1))  # the client's third: allowed
            wait_for(lambda: held[-1].snapshots() == 1, 30, "a watcher of stream b")
            fourth = Watchers(addr, b.stream_id, 1, channels=1)  # the client's fourth
            fourth.threads[0].join(30)
            held.append(fourth)
            assert fourth.errors == [grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert "VIGIL_MAX_WATCHERS_PER_CLIENT" in fourth.calls[0].details()

            held[0].close()  # places are given back when watchers leave
            wait_for(lambda: srv._ingest_api.watchers.watchers() == 1, 10, "two places given back")
            again = Watchers(addr, a.stream_id, 1, channels=1)
            held.append(again)
            wait_for(lambda: again.snapshots() == 1, 30, "a watcher of stream a again")
            assert again.errors == [None]
        finally:
            for w in held:
                w.close()
            for p in (a, b):
                c.stop(p.stream_id)
                p.close()


def _health(addr: str) -> int | None:
    with channel(addr) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3).status
        except grpc.RpcError:
            return None


@pytest.mark.timeout(180)
def test_health_turns_not_serving_within_2s_of_a_redis_stall_with_watchers_open(make_server, caplog):
    from services.embedded_redis import EmbeddedRedis

    redis_srv = EmbeddedRedis().start()  # a private redis-server of this test: it alone is stopped
    pid = redis_srv.proc.pid
    watchers = push = None
    try:
        srv, addr = make_server(redis_url=redis_srv.url, redis_timeout_s=2.0)
        with Client(addr) as c:
            push = IdlePush(c)
            watchers = Watchers(addr, push.stream_id, 60)
            wait_for(lambda: watchers.snapshots() == 60, 60, "60 watchers' snapshots")
            assert _health(addr) == SERVING
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                wait_for(lambda: _health(addr) == NOT_SERVING, 10, "health NOT_SERVING while Redis is stalled",
                         period_s=0.05)
                seen = time.monotonic() - t0
                print(f"health NOT_SERVING {seen:.2f} s after SIGSTOP")
                assert seen < 2.0, f"health took {seen:.2f} s to see the stall"
                # past the store's socket timeout the watchers' poller gives up: every watcher is told UNAVAILABLE
                # (one read failed, fanned out), and the log says so once, not once per watcher
                for t in watchers.threads:
                    t.join(30)
                assert watchers.errors == [grpc.StatusCode.UNAVAILABLE] * 60
                lines = [r for r in caplog.records if r.name == "vigil.api" and "WatchStream" in r.getMessage()[:12]]
                assert len(lines) == 1, [r.getMessage() for r in lines]
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_for(lambda: _health(addr) == SERVING, 10, "health SERVING again after SIGCONT")
            c.stop(push.stream_id)
        push.close()
        watchers.close()
        srv.stop_thread()  # before its Redis goes
    finally:
        os.kill(pid, signal.SIGCONT)  # never leave it stopped, whatever failed
        if push is not None:
            push.close()
        if watchers is not None:
            watchers.close()
        redis_srv.stop()
