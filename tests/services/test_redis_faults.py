"""Redis faults and scale-out, with real processes on loopback: the embedded Redis and an external
redis-server killed (-9) and stalled (SIGSTOP 6 s, and 8 s past a 3 s lease) mid-ingest; two servers sharing one Redis, one
stalled past its lease while the other adopts its stream; a replica at its stream limit claims nothing.

While Redis is down or stalled, RPCs answer UNAVAILABLE (without the store's address), health reports
NOT_SERVING and SERVING again after; workers wait and continue, and the stream ends with exactly the chunks
of an uninterrupted run of the same file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memory.store import StreamRecord
from services.client import Client, state_name
from tests.conftest import wait_done
from tests.conftest import wait_for as _until
from tests.services.test_cli import _free_port
from tests.services.test_ingest_streams import _serve, _wait_serving, assert_same_chunks, chunks_of

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
_REFERENCE: dict[str, list[dict]] = {}  # the uninterrupted run's chunks, shared by the tests of this module


@pytest.fixture(scope="module")
def long_video(media_dir) -> Path:
    from testkit import media

    video = media_dir / "pattern-90s.mp4"
    media.shared_synthetic_video(video, seconds=90, fps=10, scenes=6)
    return video


def _health(addr: str) -> int | None:
    with grpc.insecure_channel(addr) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3).status
        except grpc.RpcError:
            return None


def _chunks(url: str, ns: str, sid: str) -> int:
    return int(redis.Redis.from_url(url, socket_timeout=2).zcard(f"{ns}:s:{{{sid}}}:chunks"))


def _stall(pid: int, seconds: float, addr: str, sid: str, secret: str) -> None:
    """SIGSTOP the Redis for `seconds`: health goes NOT_SERVING and an RPC that needs the store answers
    UNAVAILABLE (not INTERNAL, not naming the store's address); SIGCONT: health SERVING again."""
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        _until(lambda: _health(addr) == NOT_SERVING, 10, "health NOT_SERVING while Redis is stalled")
        with Client(addr) as c, pytest.raises(grpc.RpcError) as err:
            c.describe(sid)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "Redis" in err.value.details() and secret not in err.value.details()
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))  # the checks above took part of the stall
    finally:
        os.kill(pid, signal.SIGCONT)
    _until(lambda: _health(addr) == SERVING, 20, "health SERVING once Redis answers")


def _through_faults(addr: str, url: str, ns: str, sid: str, pid, kill_and_restart, secret: str,
                    long_stall_s: float = 0.0) -> None:
    """kill -9 at 3 chunks (Redis restarted), stall 6 s at 8 chunks, and (`long_stall_s`) a longer stall at 13
    chunks."""
    _until(lambda: _chunks(url, ns, sid) >= 3, 120, "3 chunks stored")
    kill_and_restart()
    _until(lambda: _health(addr) == SERVING, 30, "health SERVING after Redis came back")
    _until(lambda: _chunks(url, ns, sid) >= 8, 120, "8 chunks stored after the restart")
    _stall(pid(), 6, addr, sid, secret)
    _until(lambda: _chunks(url, ns, sid) >= 13, 120, "13 chunks stored after the 6 s stall")
    if long_stall_s:
        _stall(pid(), long_stall_s, addr, sid, secret)  # past the lease: the worker takes its lapsed lease back


def _finish_and_compare(addr: str, url: str, ns: str, sid: str, video: Path, adapter) -> None:
    layout, fp = adapter.spec.layout, adapter.spec.fingerprint
    with Client(addr) as c:
        info = wait_done(c, sid, timeout_s=300)
        assert state_name(info.state) == "finished", info.error  # an outage never fails a stream
        assert info.chunks >= 45 and info.frames == 180
        if "file" not in _REFERENCE:
            ref = wait_done(c, c.start(str(video), fps=2, clip_frames=4).stream_id, timeout_s=300)
            _REFERENCE["file"] = chunks_of(url, ns, ref.stream_id)
    assert_same_chunks(chunks_of(url, ns, sid), _REFERENCE["file"], layout, fp)
    states = [json.loads(b[b"state"]) if b.get(b"state", b"").startswith(b'"') else b.get(b"state", b"").decode()
              for _, b in redis.Redis.from_url(url).xrange(f"{ns}:s:{{{sid}}}:events") if b[b"kind"] == b"state"]
    assert "failed" not in states


@pytest.mark.timeout(420)
def test_embedded_redis_killed_and_stalled_mid_ingest(tiny_adapter, media_dir, cache_dir, namespace, long_video):
    from encoders.describe import DescriberOptions
    from services.config import Settings
    from services.server import VigilServer

    # a 3 s lease: the long stall (8 s) outlasts it, as a 30 s stall outlasts the default 10 s one
    s = Settings(host="127.0.0.1", port=0, redis_url=None, namespace=namespace, media_roots=(str(media_dir),),
                 cache_dir=cache_dir / "vigil", http_port=0, lease_ttl_s=3.0, frames=DescriberOptions(enabled=False))
    srv = VigilServer(s, adapter=tiny_adapter, describer=None)
    addr = f"127.0.0.1:{srv.start_in_thread()}"
    try:
        url = srv.redis.url
        with Client(addr) as c:
            sid = c.start(str(long_video), fps=2, clip_frames=4).stream_id

        def kill():  # its owner restarts it, from its append-only file
            pid = srv.redis.proc.pid
            os.kill(pid, signal.SIGKILL)
            _until(lambda: srv.redis.restarts == 1 and srv.redis.proc.pid != pid, 30, "the embedded Redis restarted")

        _through_faults(addr, url, namespace, sid, lambda: srv.redis.proc.pid, kill, str(srv.redis.dir),
                        long_stall_s=8.0)
        _finish_and_compare(addr, url, namespace, sid, long_video, tiny_adapter)
    finally:
        srv.stop_thread()


class _RedisServer:
    """A real redis-server on a free loopback port, data in `folder` (append-only file or not), that a test kills
    (-9) and starts again on the same port and folder; every process it started is stopped by `close()`."""

    def __init__(self, folder: Path, appendonly: bool) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "yes" if appendonly else "no", "--dir", str(folder),
                     "--logfile", str(folder / "redis.log")]
        self.procs: list[subprocess.Popen] = []
        self.start()

    @property
    def pid(self) -> int:
        return self.procs[-1].pid

    def start(self) -> None:
        self.procs.append(subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _until(lambda: _ping(self.url), 20, "the redis-server answers")

    def kill(self) -> None:
        self.procs[-1].kill()
        self.procs[-1].wait(10)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)  # a test may have stopped it
                p.kill()
                p.wait(10)


@pytest.mark.timeout(420)
def test_external_redis_killed_and_stalled_mid_ingest(make_server, tiny_adapter, tmp_path, long_video):
    rs = _RedisServer(tmp_path, appendonly=True)
    url, port = rs.url, rs.port
    try:
        srv, addr = make_server(redis_url=url)
        ns = srv.settings.namespace
        with Client(addr) as c:
            sid = c.start(str(long_video), fps=2, clip_frames=4).stream_id

        def kill():  # an operator's (or systemd's) restart, a few seconds later
            rs.kill()
            _until(lambda: _health(addr) == NOT_SERVING, 10, "health NOT_SERVING while Redis is down")
            with Client(addr) as c, pytest.raises(grpc.RpcError) as err:
                c.list()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and str(port) not in err.value.details()
            rs.start()

        # the stall past the lease is the embedded test's: the worker's side of it does not depend on who runs the
        # redis-server
        _through_faults(addr, url, ns, sid, lambda: rs.pid, kill, str(port))
        _finish_and_compare(addr, url, ns, sid, long_video, tiny_adapter)
    finally:
        rs.close()


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.mark.timeout(400)
def test_a_server_stalled_past_its_lease_never_writes_after_another_adopted(
        cache_dir, media_dir, redis_url, namespace, tiny_adapter, long_video):
    """Two real `vigil serve` processes share one Redis (lease 1.5 s). The owner is SIGSTOPped; the other adopts
    the stream and continues; the owner, woken, finds its lease gone at its next write and lets go. Every chunk
    was written exactly once (one progress event per chunk id, none by the old owner after the adoption) and the
    stream equals an uninterrupted run."""
    pa, pb = _free_port(), _free_port()
    a = _serve(cache_dir, media_dir, redis_url, namespace, pa)
    b = _serve(cache_dir, media_dir, redis_url, namespace, pb)
    r = redis.Redis.from_url(redis_url)
    try:
        _wait_serving(a, f"127.0.0.1:{pa}")
        _wait_serving(b, f"127.0.0.1:{pb}")
        with Client(f"127.0.0.1:{pa}") as c:
            sid = c.start(str(long_video), fps=2, clip_frames=4).stream_id
        lease = f"{namespace}:s:{{{sid}}}:lease"
        _until(lambda: _chunks(redis_url, namespace, sid) >= 3, 120, "3 chunks stored by the first owner")
        token_a = r.get(lease).decode()
        os.kill(a.pid, signal.SIGSTOP)
        try:
            token_b = _until(lambda: (t := r.get(lease)) and t.decode() != token_a and t.decode(), 30,
                             "the other server adopted the stream", period_s=0.02)
        finally:  # woken at once: its next write likely races the adopter's first (the fence decides)
            os.kill(a.pid, signal.SIGCONT)
        with Client(f"127.0.0.1:{pb}") as c:
            info = wait_done(c, sid, timeout_s=300)
            if "file" not in _REFERENCE:  # the uninterrupted run, once per module
                ref = wait_done(c, c.start(str(long_video), fps=2, clip_frames=4).stream_id, timeout_s=300)
                _REFERENCE["file"] = chunks_of(redis_url, namespace, ref.stream_id)
        assert a.poll() is None, "the stalled server is still up after waking"
        assert state_name(info.state) == "finished", info.error
        writes = [(int(body[b"chunk"]), body[b"by"].decode())
                  for _, body in r.xrange(f"{namespace}:s:{{{sid}}}:events") if body[b"kind"] == b"progress"]
        ids = [cid for cid, _ in writes]
        assert ids == list(range(info.chunks)), "each chunk written once, in order"
        first_b = next(i for i, (_, by) in enumerate(writes) if by == token_b)
        assert all(by == token_a for _, by in writes[:first_b]) and all(by == token_b for _, by in writes[first_b:])
        layout, fp = tiny_adapter.spec.layout, tiny_adapter.spec.fingerprint
        assert_same_chunks(chunks_of(redis_url, namespace, sid), _REFERENCE["file"], layout, fp)
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_a_full_replica_claims_no_orphan_and_a_later_one_adopts_it(make_server, pattern_video):
    """Orphans (active, no lease) beyond a server's room stay as they are, unclaimed and not failed, for a
    server with room."""
    full, _ = make_server(max_streams=1, lease_ttl_s=600)  # a long lease: no heartbeat adopts behind the test's back
    store = full.rt.store
    for sid in ("orphan-a", "orphan-b"):
        store.create_stream(StreamRecord(stream_id=sid, source=str(pattern_video), state="running", fps=2,
                                         clip_frames=4, model=full.rt.adapter.spec.name))
    assert set(store.active_ids()) >= {"orphan-a", "orphan-b"}
    taken = full.ingest.adopt_orphans()
    assert len(taken) == 1  # room for one
    left = ({"orphan-a", "orphan-b"} - set(taken)).pop()
    assert store.get_stream(left).state == "running" and store.holders([left]) == [False]
    other, addr = make_server(lease_ttl_s=600)  # adopts what it finds at start
    with Client(addr) as c:
        for sid in ("orphan-a", "orphan-b"):
            info = wait_done(c, sid, timeout_s=120)
            assert state_name(info.state) == "finished", info.error
            assert info.chunks > 0
    assert not {"orphan-a", "orphan-b"} & set(store.active_ids())  # ended streams leave the active set


def test_a_full_redis_makes_streams_wait_and_writes_refused_then_both_go_on(make_server, tmp_path, long_video,
                                                                           pattern_video):
    """Redis at its maxmemory with noeviction (compose's setting): chunk writes are refused with OOM. The worker
    waits and resends (the stream never fails, nothing is evicted), a write RPC answers RESOURCE_EXHAUSTED with
    what to do; once there is room again the stream goes on to the end."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--maxmemory-policy", "noeviction", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url)
    try:
        _until(lambda: _ping(url), 20, "the redis-server answers")
        srv, addr = make_server(redis_url=url)
        ns = srv.settings.namespace
        with Client(addr) as c:
            sid = c.start(str(long_video), fps=2, clip_frames=4).stream_id
            _until(lambda: _chunks(url, ns, sid) >= 1, 60, "a chunk stored")
            r.config_set("maxmemory", int(r.info("memory")["used_memory"]) // 2)  # over the cap from now on
            _until(lambda: srv.rt.metrics.redis_errors.labels("ingest")._value.get() >= 2, 60,
                   "the worker meeting the full store and waiting")
            held = _chunks(url, ns, sid)
            with pytest.raises(grpc.RpcError) as err:
                c.start(str(pattern_video), fps=2, clip_frames=4)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            assert "maxmemory" in err.value.details() and str(port) not in err.value.details()
            assert state_name(c.describe(sid).state) == "running" and _chunks(url, ns, sid) == held
            r.config_set("maxmemory", 0)  # room again
            info = wait_done(c, sid, timeout_s=120)
            assert state_name(info.state) == "finished", info.error
            assert info.chunks > held
    finally:
        proc.kill()
        proc.wait(10)


def _kill_embedded_at_random_points(tiny_adapter, media_dir, cache_dir, namespace, video: Path, rng, kills: int
                                    ) -> None:
    """One ingest of `video` by a server with its private Redis, SIGKILLed `kills` times at random moments (after a
    random number of stored chunks, then a random fraction of a second); the stream ends with exactly the chunks
    of an uninterrupted run, none missing."""
    from encoders.describe import DescriberOptions
    from services.config import Settings
    from services.server import VigilServer

    s = Settings(host="127.0.0.1", port=0, redis_url=None, namespace=namespace, media_roots=(str(media_dir),),
                 cache_dir=cache_dir / "vigil", http_port=0, frames=DescriberOptions(enabled=False))
    srv = VigilServer(s, adapter=tiny_adapter, describer=None)
    addr = f"127.0.0.1:{srv.start_in_thread()}"
    try:
        url = srv.redis.url
        with Client(addr) as c:
            sid = c.start(str(video), fps=2, clip_frames=4).stream_id
        at = sorted(rng.sample(range(2, 40), kills))  # chunk counts after which Redis dies
        for n, after in enumerate(at, 1):
            _until(lambda: _chunks(url, namespace, sid) >= after, 120, f"{after} chunks stored")
            time.sleep(rng.uniform(0, 0.4))  # anywhere within a chunk's write cycle
            pid = srv.redis.proc.pid
            os.kill(pid, signal.SIGKILL)
            _until(lambda: srv.redis.restarts == n and srv.redis.proc.pid != pid, 30, "the embedded Redis restarted")
        _finish_and_compare(addr, url, namespace, sid, video, tiny_adapter)
        with Client(addr) as c:
            assert c.describe(sid).missing_chunks == 0
    finally:
        srv.stop_thread()


@pytest.mark.timeout(300)
def test_embedded_redis_killed_at_random_points_loses_no_chunk(tiny_adapter, media_dir, cache_dir, namespace,
                                                               long_video):
    import random

    _kill_embedded_at_random_points(tiny_adapter, media_dir, cache_dir, namespace, long_video, random.Random(), 3)


@pytest.mark.slow
@pytest.mark.timeout(3000)
@pytest.mark.parametrize("run", range(7))
def test_embedded_redis_killed_at_random_points_many_times(tiny_adapter, media_dir, cache_dir, namespace,
                                                           long_video, run):
    """21 kills over 7 ingests (`pytest -m slow`)."""
    import random

    _kill_embedded_at_random_points(tiny_adapter, media_dir, cache_dir, namespace, long_video, random.Random(run), 3)


@pytest.mark.timeout(300)
def test_chunks_a_redis_lost_after_acknowledging_them_are_sent_again(make_server, tiny_adapter, tmp_path,
                                                                     long_video):
    """A Redis that keeps only RDB snapshots (no append-only file), killed after acknowledging chunks it had not
    saved, comes back without them: a real loss of acknowledged writes (a promoted replica that had not got
    them loses the same). The worker's next chunk is refused as a gap; it sends the lost chunks again from the
    ones it keeps, and the stream ends with exactly the chunks of an uninterrupted run."""
    rs = _RedisServer(tmp_path, appendonly=False)
    url = rs.url
    try:
        srv, addr = make_server(redis_url=url)
        ns = srv.settings.namespace
        with Client(addr) as c:
            sid = c.start(str(long_video), fps=2, clip_frames=4).stream_id
        _until(lambda: _chunks(url, ns, sid) >= 4, 120, "4 chunks stored")
        r = redis.Redis.from_url(url)
        r.client_pause(5000, all=False)  # writes wait while the snapshot the restart loads is taken and counted
        try:
            saved = r.zcard(f"{ns}:s:{{{sid}}}:chunks")
            r.save()
        finally:
            r.client_unpause()
        assert saved >= 4
        _until(lambda: _chunks(url, ns, sid) >= saved + 3, 120, "3 more chunks acknowledged after the snapshot")
        rs.kill()
        lost = _chunks_in_snapshot(tmp_path, ns, sid)
        assert lost == saved  # what the restart loads: the chunks acknowledged after the snapshot are not in it
        rs.start()
        # without sending them again the next chunk is refused as a gap and the stream fails: this compares a
        # finished stream with the uninterrupted run, chunk for chunk
        _finish_and_compare(addr, url, ns, sid, long_video, tiny_adapter)
        with Client(addr) as c:
            assert c.describe(sid).missing_chunks == 0
    finally:
        rs.close()


def _chunks_in_snapshot(folder: Path, ns: str, sid: str) -> int:
    """The stream's chunk count in `folder`'s dump.rdb, read by a redis-server of its own on another port."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(folder / "dump.rdb", Path(tmp) / "dump.rdb")
        rs = _RedisServer(Path(tmp), appendonly=False)
        try:
            return _chunks(rs.url, ns, sid)
        finally:
            rs.close()


def test_a_private_redis_under_a_long_temporary_folder_still_starts(tmp_path, monkeypatch):
    """A unix socket's path is limited to 108 bytes: with TMPDIR deep enough that its own folder's socket would not
    fit, the private Redis puts its socket in a short folder of its own, answers, and removes both at stop."""
    import tempfile

    from services.embedded_redis import EmbeddedRedis

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    r = EmbeddedRedis().start()
    try:
        assert str(r.dir).startswith(str(deep)) and len(str(r.dir / "redis.sock")) > 108
        assert redis.Redis(unix_socket_path=str(r.socket)).ping()
    finally:
        r.stop()
    assert not r.socket.parent.exists() and not r.dir.exists()
