"""vigil on a real Redis Cluster (3 masters + 3 replicas on loopback, conftest.redis_cluster): the spine end to end
on one Redis and on the cluster; the master of a stream's slot killed (SIGKILL) mid-ingest and its replica
promoted, the stream ending with exactly the chunks of an uninterrupted run; orphaned streams spread over two
ingest servers by their room; a fleet (two ingest processes and a QA process) with one ingest process killed and
its streams adopted."""
from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from memory.store.client import connect
from services.client import Client, state_name
from tests.conftest import wait_done
from tests.conftest import wait_for as _until
from tests.services.test_ingest_streams import _chunks as ts_blocks
from tests.services.test_ingest_streams import assert_same_chunks, chunks_of
from tests.services.test_redis_faults import _health
from tests.memory.test_store import clips  # noqa: F401  (the fixture: three encoded clips)
from tests.services.test_spine_e2e import CLIP, FPS, reference_clips, reference_generate

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_spine_answers_equal_model_generate_on_one_redis_and_on_a_cluster(make_server, store_url, tiny_adapter,
                                                                            pattern_video):
    """Ingest over gRPC, then the answer's token ids from the memory the server stored equal the model's own greedy
    generate over every frame: the same on one Redis and on the cluster (the store's scripts stay on one slot)."""
    from memory.assemble import answer_memory

    srv, addr = make_server(redis_url=store_url)
    with Client(addr) as c:
        info = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id)
        assert state_name(info.state) == "finished", info.error
        resp = c.ask(info.stream_id, "Which colours appear, in order?", top_k=info.chunks, max_new_tokens=8)
        assert resp.answer and [e.chunk_id for e in resp.evidence] == list(range(info.chunks))
        assert [s.stream_id for s in c.list()] == [info.stream_id]
    store = srv.rt.store
    ids = store.chunk_ids(info.stream_id)
    assert ids == list(range(len(reference_clips(pattern_video, srv.settings.frame_max_side))))
    rows = store.chunk_records(info.stream_id)
    chunks = list(zip(store.chunk_payloads(info.stream_id, ids), [(r.span_start, r.span_end) for r in rows]))
    rec = store.get_stream(info.stream_id)
    memory = answer_memory(store.get_prefix(info.stream_id), store.get_working(info.stream_id).tokens, chunks,
                           rec.next_pos, rec.max_pos)
    question = "Which colours appear, in order?"
    assert list(tiny_adapter.answer_ids(memory, question, 16)) == \
        reference_generate(tiny_adapter, pattern_video, question, 16, srv.settings.frame_max_side)


class _HeldPush:
    """A push whose bytes stop half way until `release()`: the race window (the stream mid-ingest) is held open
    by the test, not by a long video."""

    def __init__(self, client: Client, path, name: str) -> None:
        self.blocks = list(ts_blocks(path, 16 * 1024))
        self.half = len(self.blocks) // 2
        self._go = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, args=(client, name), daemon=True)
        self._t.start()

    def _gen(self):
        for i, b in enumerate(self.blocks):
            if i == self.half:
                self._go.wait(120)
            yield b

    def _run(self, client: Client, name: str) -> None:
        try:
            self.result = client.push(self._gen(), name=name, fmt="mpegts", fps=2, clip_frames=4)
        except BaseException as exc:  # reported by result()
            self.error = exc

    def release(self) -> None:
        self._go.set()

    def wait(self, timeout_s: float = 180):
        self._t.join(timeout_s)
        assert not self._t.is_alive(), "the push did not end"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.mark.timeout(300)
def test_the_master_of_a_streams_slot_killed_mid_ingest_its_replica_takes_over(
        make_server, redis_cluster, tiny_adapter, bikes_ts, namespace):
    """SIGKILL of the master that holds the stream's slot while the stream is half ingested (a push held open):
    the cluster promotes its replica (node timeout 1 s); the worker waits through CLUSTERDOWN / refused
    connections, sends the same chunk again and goes on. With VIGIL_REDIS_WAIT_REPLICAS=1 every chunk the worker
    was told is stored was on the replica first, so the stream ends with exactly the chunks of an uninterrupted
    run; questions are answered after, and health is SERVING. (Without the WAIT a chunk acknowledged just before
    the kill could be missing on the promoted replica: see docs/operations.md, "What replication can lose".)"""
    url = redis_cluster.url
    srv, addr = make_server(redis_url=url, redis_wait_replicas=1, redis_wait_timeout_ms=2000)
    with Client(addr) as c:
        ref = wait_done(c, c.start(str(bikes_ts), fps=2, clip_frames=4).stream_id)
        assert state_name(ref.state) == "finished", ref.error
        reference = chunks_of(url, namespace, ref.stream_id)
        assert len(reference) >= 5

        push = _HeldPush(c, bikes_ts, "failover")
        sid = _until(lambda: next((s.stream_id for s in c.list() if s.source == "push:failover"), None), 60,
                     "the pushed stream to be listed")
        _until(lambda: c.describe(sid).chunks >= 2, 120, "2 chunks of the first half stored")
        master = redis_cluster.master_of(f"{namespace}:s:{{{sid}}}:meta")
        lagged_before = srv.rt.store.replica_lag_writes
        redis_cluster.kill(master)
        killed_at = time.monotonic()
        try:
            try:  # while the slot has no master: answered (the client waited out the election) or UNAVAILABLE
                during = c.ask(sid, "What is happening?", top_k=1, max_new_tokens=2, timeout=60)
                assert len(during.evidence) == 1
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                assert str(master.port) not in err.details()
            push.release()  # the second half arrives while the slot has no master (or just got a new one)
            _until(lambda: master.port not in redis_cluster.master_ports() and
                   redis_cluster.master_of(f"{namespace}:s:{{{sid}}}:meta").port != master.port, 60,
                   "the replica promoted")
            promoted_after = time.monotonic() - killed_at
            redis_cluster.restart(master)  # back as the new master's replica (until then its writes wait in vain)
            info = push.wait()
            assert state_name(info.state) == "finished", info.error
            assert info.chunks == len(reference)
            assert_same_chunks(chunks_of(url, namespace, sid), reference, tiny_adapter.spec.layout,
                               tiny_adapter.spec.fingerprint)
            # every chunk stored before the kill was on the replica before the worker went on (the promoted master
            # had no replica of its own until the old one rejoined: those writes are counted, not hidden)
            assert lagged_before == 0
            resp = c.ask(sid, "What is happening on the road?", top_k=3, max_new_tokens=4)
            assert len(resp.evidence) == 3
            _until(lambda: _health(addr) == SERVING, 30, "health SERVING after the failover")
            assert promoted_after < 30
        finally:
            redis_cluster.restart(master)  # it comes back as the new master's replica: the cluster is whole again


@pytest.mark.timeout(400)  # three processes that each load the model (about 25 s)
def test_a_fleet_two_ingest_processes_and_a_qa_process_one_killed_its_streams_adopted(
        redis_cluster, cache_dir, media_dir, namespace, tiny_adapter, pattern_video):
    """Three real `vigil serve` processes on the cluster: two `--role ingest`, one `--role qa`. Two streams
    started on the first ingest process, which is frozen (SIGSTOP) once they are under way and then killed
    (SIGKILL): its leases lapse (1.5 s), the other adopts both streams and finishes them from their checkpoints
    with exactly the chunks of an uninterrupted run; the QA process answers questions on both."""
    import os
    import signal

    from tests.services.test_cli import _free_port
    from tests.services.test_ingest_streams import _serve, _wait_serving

    redis_cluster.wait_ok()
    url = redis_cluster.url
    ports = [_free_port() for _ in range(3)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    roles = ["ingest", "ingest", "qa"]
    procs = [_serve(cache_dir, media_dir, url, namespace, p, VIGIL_ROLE=role) for p, role in zip(ports, roles)]
    try:
        for proc, addr in zip(procs, addrs):
            _wait_serving(proc, addr)
        doomed, survivor, qa = addrs
        with Client(doomed) as c:
            sids = [c.start(str(pattern_video), fps=2, clip_frames=4).stream_id for _ in range(2)]
            _until(lambda: all(c.describe(s).chunks >= 1 for s in sids), 120, "both streams under way", 0.02)
            os.kill(procs[0].pid, signal.SIGSTOP)  # frozen mid-ingest: the race window stays open
        r = connect(url)
        states = [json.loads(r.hget(f"{namespace}:s:{{{s}}}:meta", "state")) for s in sids]
        assert states == ["running", "running"], "the kill should land mid-ingest"
        owners = {r.get(f"{namespace}:s:{{{s}}}:lease").decode().rsplit(":", 1)[0] for s in sids}
        procs[0].kill()
        procs[0].wait(10)
        with Client(survivor) as c:
            done = [wait_done(c, s, timeout_s=240) for s in sids]
            assert all(state_name(d.state) == "finished" for d in done), [d.error for d in done]
            ref = wait_done(c, c.start(str(pattern_video), fps=2, clip_frames=4).stream_id, timeout_s=240)
        for s in sids:  # adopted: a lease of another owner, and exactly the chunks of an uninterrupted run
            assert_same_chunks(chunks_of(url, namespace, s), chunks_of(url, namespace, ref.stream_id),
                               tiny_adapter.spec.layout, tiny_adapter.spec.fingerprint)
            writers = {b[b"by"].decode().rsplit(":", 1)[0]
                       for _, b in r.xrange(f"{namespace}:s:{{{s}}}:events") if b[b"kind"] == b"progress"}
            assert len(writers) == 2 and owners <= writers, writers
        with Client(qa) as c:
            for s in sids:
                resp = c.ask(s, "Which colours appear?", top_k=2, max_new_tokens=4)
                assert len(resp.evidence) == 2
        r.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except Exception:
                    p.kill()
        r2 = connect(url)
        keys = list(r2.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            r2.delete(*keys)
        r2.close()


def test_orphans_on_the_cluster_are_spread_by_room_and_finished(make_server, redis_cluster, pattern_video,
                                                               namespace, tiny_adapter):
    """Two ingest servers on the cluster with room for one stream each, and two orphaned streams (active, no
    lease: their worker died): each server claims only what it has room for, so one stream lands on each; both
    finish with the same chunks (the same file)."""
    from memory.store import StreamRecord

    redis_cluster.wait_ok()
    url = redis_cluster.url
    first, _ = make_server(redis_url=url, max_streams=1, lease_ttl_s=600, role="ingest")  # no heartbeat adoption
    store = first.rt.store
    orphans = ("orphan-a", "orphan-b")
    for sid in orphans:
        store.create_stream(StreamRecord(stream_id=sid, source=str(pattern_video), state="running", fps=2,
                                         clip_frames=4, model=first.rt.adapter.spec.name))
    assert store.active_ids() == list(orphans) and store.holders(list(orphans)) == [False, False]
    (taken,) = first.ingest.adopt_orphans()  # room for one
    (left,) = set(orphans) - {taken}
    assert store.holders([left]) == [False] and store.get_stream(left).state == "running"
    _, addr = make_server(redis_url=url, max_streams=1, lease_ttl_s=600)  # adopts what it finds at start
    with Client(addr) as c:
        done = [wait_done(c, sid, timeout_s=120) for sid in orphans]
    assert all(state_name(d.state) == "finished" for d in done), [d.error for d in done]
    assert store.active_ids() == []
    owners = []
    for sid in orphans:
        (by,) = {b[b"by"].decode().rsplit(":", 1)[0] for _, b in store.r.xrange(store._k(sid, "events"))
                 if b[b"kind"] == b"progress"}
        owners.append(by)
    assert owners[0] != owners[1]  # one stream on each server
    assert_same_chunks(chunks_of(url, namespace, "orphan-a"), chunks_of(url, namespace, "orphan-b"),
                       tiny_adapter.spec.layout, tiny_adapter.spec.fingerprint)


def test_a_waited_chunk_write_after_a_failover_is_resent_to_the_new_master(redis_cluster, namespace, tiny_adapter,
                                                                            clips):
    """With VIGIL_REDIS_WAIT_REPLICAS the chunk script and its WAIT go to the slot's master's own connection (not
    through the cluster client, which would follow MOVED by itself). After a failover (here an operator's CLUSTER
    FAILOVER on the replica) the client's slot map is stale: the write meets the old master, now a replica, which
    answers MOVED. It is refused as an outage (the worker's wait-and-resend), the slot map read again, and the
    resent write lands on the new master, once."""
    from memory.store import MemoryStore
    from memory.store.client import STORE_DOWN
    from tests.memory.test_store import _new, _put

    redis_cluster.wait_ok()
    store = MemoryStore(connect(redis_cluster.url), namespace, tiny_adapter.spec.layout,
                        tiny_adapter.spec.fingerprint, wait_replicas=1, wait_timeout_ms=2000)
    prefix, cs = clips
    tok = _new(store)
    store.put_prefix("s1", prefix)
    _put(store, "s1", cs[0], tok)
    old = redis_cluster.master_of(store._k("s1", "meta"))
    replica = next(n for n in redis_cluster.nodes if n.alive and n.port != old.port
                   and int(n.client().info("replication").get("master_port", -1)) == old.port)
    replica.client().cluster("failover")  # a graceful hand-over: the replica becomes the slot's master
    _until(lambda: redis_cluster.master_of(store._k("s1", "meta")).port == replica.port, 30, "the failover")
    redis_cluster.wait_ok()
    with pytest.raises(STORE_DOWN):
        _put(store, "s1", cs[1], tok)  # to the old master, now a replica: MOVED
    _put(store, "s1", cs[1], tok)  # resent: the new master
    _put(store, "s1", cs[1], tok)  # and again (a lost reply): stored once
    assert store.chunk_ids("s1") == [0, 1] and store.replica_lag_writes == 0
    store.r.close()
