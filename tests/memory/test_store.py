"""The store against a real Redis: fenced writes (a writer whose lease another took writes nothing), resent
chunk writes stored once, the active set, paging, deletion leaving no key behind."""
from __future__ import annotations

import json

import pytest
from memory.errors import StreamNotFound
from memory.options import MemoryOptions
from memory.retention import Retention
from memory.store.client import connect
from memory.store import Checkpoint, ChunkRecord, Gap, LeaseLost, MemoryStore, StreamRecord, StreamState
from memory.working import WorkingState, context, step
from streamer.live import Gap as LiveGap
from tests.memory.test_long_stream import stream_frames


@pytest.fixture
def store(store_url, namespace, tiny_adapter):
    """On one Redis and on a real local Redis Cluster (every test here runs on both: conftest.store_url)."""
    r = connect(store_url)
    yield MemoryStore(r, namespace, tiny_adapter.spec.layout, tiny_adapter.spec.fingerprint)
    r.close()


@pytest.fixture(scope="module")
def clips(tiny_adapter):
    """Three real encoded clips of the tiny model, each with what put_chunk needs."""
    ad, opts = tiny_adapter, MemoryOptions()
    prefix = ad.encode_prefix()
    state, out = WorkingState.empty(prefix), []
    for i, frames in enumerate(stream_frames(3, seed=5)):
        enc = ad.ingest_clip(frames, 1.0, i * 8, (i + 1) * 8, context(prefix, state), key_rows=opts.retrieval_keys)
        done = step(prefix, state, enc, 0.0, opts)
        state = done.state
        rec = ChunkRecord(chunk_id=i, start_s=i * 8, end_s=(i + 1) * 8, frames=8, tokens=done.chunk.length,
                          keyframe_s=i * 8, span_start=done.span[0], span_end=done.span[1])
        out.append((rec, done, enc))
    return prefix, out


def _put(store, sid, clip, fence):
    rec, done, enc = clip
    ck = Checkpoint(next_clip=rec.chunk_id + 1, after_s=rec.end_s, frames_total=(rec.chunk_id + 1) * 8)
    return store.put_chunk(sid, rec, done.chunk, enc.segment.retrieval, b"jpeg", (rec.chunk_id + 1) * 8,
                           fence=fence, working=done.state, checkpoint=ck)


def _new(store, sid="s1") -> str:
    store.create_stream(StreamRecord(stream_id=sid, source="synthetic"))
    return store.claim(sid, "w1", 60_000)


def _steal(store, sid) -> str:
    """The lease lapses (as when its holder is paused past its TTL) and another worker claims it."""
    store.r.delete(store._k(sid, "lease"))
    tok = store.claim(sid, "w2", 60_000)
    assert tok is not None
    return tok


def test_a_writer_whose_lease_was_taken_writes_nothing(store, clips):
    prefix, cs = clips
    old = _new(store)
    store.put_prefix("s1", prefix)
    _put(store, "s1", cs[0], old)
    new = _steal(store, "s1")
    assert new != old and new.startswith("w2:") and old.startswith("w1:")
    before = store.r.hgetall(store._k("s1", "meta"))
    with pytest.raises(LeaseLost):
        _put(store, "s1", cs[1], old)  # the chunk after the checkpoint: without the fence it would be stored
    with pytest.raises(LeaseLost):
        store.set_state("s1", StreamState.FINISHED, fence=old)
    with pytest.raises(LeaseLost):
        store.enforce_retention("s1", Retention(max_bytes=1, mode="delete"), fence=old)
    assert store.r.hgetall(store._k("s1", "meta")) == before
    assert store.chunk_ids("s1") == [0]
    assert not store.renew("s1", old, 60_000)  # nor can it take the lease back
    _put(store, "s1", cs[1], new)  # the new owner can
    assert store.chunk_ids("s1") == [0, 1]


def test_a_resent_chunk_write_is_stored_once(store, clips):
    _, cs = clips
    tok = _new(store)
    first = _put(store, "s1", cs[0], tok)
    rec = store.get_stream("s1")
    assert _put(store, "s1", cs[0], tok) == first  # e.g. the reply was lost to a Redis fault and it is sent again
    again = store.get_stream("s1")
    assert (again.bytes, again.chunk_bytes, again.chunk_bytes_written) == (rec.bytes, rec.chunk_bytes,
                                                                          rec.chunk_bytes_written)
    progress = [b for _, b in store.r.xrange(store._k("s1", "events")) if b[b"kind"] == b"progress"]
    assert len(progress) == 1 and progress[0][b"by"].decode() == tok
    assert store.checkpoint("s1")[0] == Checkpoint(next_clip=1, after_s=8.0, frames_total=8)


def test_a_lapsed_lease_nobody_took_is_taken_back_with_the_same_token(store):
    tok = _new(store)
    store.r.delete(store._k("s1", "lease"))  # expired during a 30 s Redis stall
    assert store.renew("s1", tok, 60_000)
    assert store.r.get(store._k("s1", "lease")).decode() == tok


def test_active_set_follows_the_state_and_adoption_needs_no_record_scan(store):
    _new(store, "s1")
    _new(store, "s2")
    assert store.active_ids() == ["s1", "s2"]
    store.set_state("s1", StreamState.FINISHED)
    assert store.active_ids() == ["s2"]
    store.set_state("s1", "reconnecting")
    assert store.active_ids() == ["s1", "s2"]
    assert store.holders(["s1", "s2", "nosuch"]) == [True, True, False]
    # streams stored before the active set existed are indexed once
    store.r.delete(store._active)
    assert store.index_active() == 2 and store.active_ids() == ["s1", "s2"]
    assert store.index_active() == 0  # built: no second scan


def test_state_changes_are_published_and_typed(store):
    _new(store)
    store.set_state("s1", StreamState.RUNNING, error="")
    rec = store.get_stream("s1")
    assert rec.state is StreamState.RUNNING and rec.state == "running" and rec.state.active
    ev = [b for _, b in store.r.xrange(store._k("s1", "events")) if b[b"kind"] == b"state"]
    assert (ev[-1][b"previous"], ev[-1][b"state"]) == (b"starting", b"running")
    store.add_gap("s1", Gap(start_s=1.0, end_s=3.5, reason="camera down", wall_start=100.0, wall_end=102.5))
    (g,) = store.gaps("s1")
    assert g == Gap(1.0, 3.5, "camera down", 100.0, 102.5) and g.overlaps(3.0, 9.0) and not g.overlaps(3.5, 9.0)
    assert LiveGap is Gap  # one type: what the live source emits is what the store keeps
    with pytest.raises(StreamNotFound):
        store.set_state("nosuch", StreamState.STOPPED)  # never creates a ghost record
    assert not store.r.exists(store._k("nosuch", "meta"))


def test_pages_cover_every_stream_once_in_creation_order(store):
    ids = [f"p{i:02d}" for i in range(11)]
    for i, sid in enumerate(ids):
        store.create_stream(StreamRecord(stream_id=sid, source="x", created=1000.0 + i))
    seen, token, pages = [], "", 0
    while True:
        recs, token = store.page_streams(4, token)
        seen += [r.stream_id for r in recs]
        pages += 1
        if not token:
            break
    assert seen == ids and pages == 3 and store.count_streams() == 11
    with pytest.raises(StreamNotFound):
        store.page_streams(4, "deleted-meanwhile")


def test_delete_removes_every_key_and_fences_the_old_owner(store, clips, namespace):
    prefix, cs = clips
    tok = _new(store)
    store.put_prefix("s1", prefix)
    for c in cs:
        _put(store, "s1", c, tok)
    store.add_gap("s1", Gap(0.0, 1.0, "x"))
    store.create_stream(StreamRecord(stream_id="keep", source="x"))
    assert len(list(store.r.scan_iter(f"{namespace}:s:{{s1}}:*"))) >= 10
    removed = store.delete_stream("s1")
    assert removed >= 10
    assert list(store.r.scan_iter(f"{namespace}:s:{{s1}}:*")) == []
    assert [r.stream_id for r in store.list_streams()] == ["keep"] and "s1" not in store.active_ids()
    with pytest.raises(LeaseLost):
        _put(store, "s1", cs[0], tok)  # its worker, still running somewhere, cannot bring it back
    assert not store.renew("s1", tok, 60_000)
    assert list(store.r.scan_iter(f"{namespace}:s:{{s1}}:*")) == []
    with pytest.raises(StreamNotFound):
        store.delete_stream("s1")
    assert json.loads(store.r.hget(store._k("keep", "meta"), "state")) == "starting"


def test_registries_spanning_streams_are_supersets_reconciled_on_read(store, clips):
    """The stream list and the active set live in their own keys (another cluster slot than any stream's): they
    are written before a record and cleaned after it, so a writer that died between the two leaves an entry that
    readers skip (and adoption prunes), never an active stream that adoption cannot find."""
    prefix, cs = clips
    tok = _new(store, "live")
    # a writer died after adding "ghost" to the registries, before writing its record
    store.r.zadd(store._streams, {"ghost": 1.0})
    store.r.sadd(store._active, "ghost")
    # another died after its state script made "done" finished, before removing it from the active set
    _new(store, "done")
    store.set_state("done", StreamState.FINISHED)
    store.r.sadd(store._active, "done")
    assert store.active_ids() == ["live"]  # only what the records say is active...
    assert {m.decode() for m in store.r.smembers(store._active)} == {"live"}  # ...and the stale entries pruned
    assert [r.stream_id for r in store.list_streams()] == ["live", "done"]  # the ghost has no record: skipped
    # a record that says active is found even if the active set lost it (its next state change puts it back)
    store.r.srem(store._active, "live")
    store.set_state("live", StreamState.RUNNING, fence=tok)
    assert store.active_ids() == ["live"]
    # fencing is unchanged: a stale owner's state write is refused and changes no registry
    new = _steal(store, "live")
    with pytest.raises(LeaseLost):
        store.set_state("live", StreamState.FAILED, fence=tok)
    assert store.active_ids() == ["live"] and store.get_stream("live").state is StreamState.RUNNING
    store.put_prefix("live", prefix)
    _put(store, "live", cs[0], new)
    assert store.chunk_ids("live") == [0]


def test_retention_conversations_names_and_alert_events_on_both_stores(store, clips, store_url, namespace):
    """What else the store keeps, on one Redis and on the cluster: retention's fenced rewrites (a WATCH on the
    stream's lease, one slot), a conversation's turns (its own hash tag), camera names and their start-up lock (a
    namespace key), and the stream's event log where alerts are kept."""
    from encoders.base import Turn
    from memory.conversations import ConversationStore

    prefix, cs = clips
    tok = _new(store)
    store.put_prefix("s1", prefix)
    for c in cs:
        _put(store, "s1", c, tok)
    size = max(r.bytes for r in store.chunk_records("s1"))
    assert store.enforce_retention("s1", Retention(max_bytes=2 * size), fence=tok) >= 1
    recs = store.chunk_records("s1")
    assert recs[0].level == 1 and recs[0].chunk_id == 0 and len(recs) == 2 and store.epoch("s1") >= 1
    assert len(store.chunk_payloads("s1", [r.chunk_id for r in recs])) == 2

    convs = ConversationStore(store.r, namespace, ttl_s=60)
    conv = convs.create("s1")
    assert convs.append(conv.conversation_id, Turn("q1", "a1")) == 1
    assert convs.append(conv.conversation_id, Turn("q2", "a2")) == 2
    got = convs.get(conv.conversation_id)
    assert got.stream_id == "s1" and [t.question for t in got.turns] == ["q1", "q2"]
    convs.delete(conv.conversation_id)

    store.set_name("gate", "s1")
    assert store.stream_for_name("gate") == "s1" and store.name_of("s1") == "gate"
    assert store.lock_name("gate", "srv-a", 5_000) and not store.lock_name("gate", "srv-b", 5_000)
    store.unlock_name("gate", "srv-a")
    assert store.lock_name("gate", "srv-b", 5_000)
    assert store.forget_names("s1") == 1 and store.names() == {}

    after = store.last_event_id("s1")
    store.event("s1", "alert", alert='{"rule": "van"}', message="van at the gate")
    (_, body), = store.read_events("s1", after, None)
    assert body["kind"] == "alert" and body["message"] == "van at the gate"


def test_wait_for_a_replica_after_chunk_writes(store, clips, store_url):
    """VIGIL_REDIS_WAIT_REPLICAS: each chunk write is followed by WAIT on the same connection (on the cluster, the
    slot's master's). The cluster's masters each have a replica, which takes every chunk; the test's one Redis
    has none, so each write waits out the timeout, stays stored on the master, and is counted, not refused."""
    prefix, cs = clips
    waiting = MemoryStore(store.r, store.ns, store.layout, store.fingerprint, wait_replicas=1, wait_timeout_ms=300)
    tok = _new(waiting)
    waiting.put_prefix("s1", prefix)
    for c in cs:
        _put(waiting, "s1", c, tok)
    assert waiting.chunk_ids("s1") == [0, 1, 2]
    _put(waiting, "s1", cs[2], tok)  # resent: stored once, and nothing new to wait for
    assert waiting.chunk_ids("s1") == [0, 1, 2]
    has_replica = store_url.startswith("redis+cluster") or int(store.r.info("replication")["connected_slaves"]) > 0
    assert waiting.replica_lag_writes == (0 if has_replica else 3)
    with pytest.raises(LeaseLost):  # fenced as without the wait
        _put(waiting, "s1", cs[0], "w9:99")
