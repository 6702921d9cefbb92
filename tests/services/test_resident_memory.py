"""Questions read no memory they already hold: the ingesting process (role all) answers on its live working memory
without reading it from Redis; a QA-only replica keeps the copy it read and, once the stream moved on, reads only
the deltas stored since and answers exactly as the ingesting process does. Real gRPC servers, a real Redis, real
pushed footage (the push is held open by the test, so the stream stops where the test wants it)."""
from __future__ import annotations

import threading

import torch

from services.client import Client, state_name
from tests.conftest import wait_done, wait_for

QUESTION = "What moves across the scene?"


def _held_push(path, gate: threading.Event, size: int = 16 * 1024):
    """The file's bytes in pieces; after the first half, wait for `gate`."""
    data = path.read_bytes()
    half = len(data) // 2
    for i in range(0, len(data), size):
        if i >= half and not gate.is_set():
            gate.wait(120)
        yield data[i:i + size]


def _evidence(ans):
    return [(e.chunk_id, round(e.start_s, 3), round(e.end_s, 3)) for e in ans.evidence]


def test_the_ingesting_process_reads_no_working_memory_and_a_replica_reads_only_deltas(make_server, bikes_ts):
    ingest, addr = make_server(working_deltas=True, working_snapshot_chunks=1000, role="all")
    replica, qa_addr = make_server(role="qa")
    gate, out = threading.Event(), {}

    def push():
        with Client(addr) as c:
            out["info"] = c.push(_held_push(bikes_ts, gate), name="held", fmt="mpegts", fps=2, clip_frames=4)

    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    try:
        with Client(addr) as c:
            sid = wait_for(lambda: next((s.stream_id for s in c.list() if s.source == "push:held"), None),
                           60, "the pushed stream")
            wait_for(lambda: c.describe(sid).chunks >= 2, 120, "two chunks of the first half")
        with Client(qa_addr) as q:
            q.ask(sid, QUESTION)  # the replica reads the memory once: snapshot and the deltas so far
        first = replica.rt.resident.working(sid)
        assert first is not None and first.version >= 1
    finally:
        gate.set()
        sender.join(120)
    assert state_name(out["info"].state) == "finished", out["info"].error

    with Client(addr) as c:
        info = wait_done(c, sid)
        before = ingest.rt.store.working_bytes_read
        here = c.ask(sid, QUESTION)
        assert ingest.rt.store.working_bytes_read == before  # role all: the live copy, no memory read from Redis
    assert info.chunks > first.version + 1  # the stream moved on after the replica's read

    read_before = replica.rt.store.working_bytes_read
    with Client(qa_addr) as q:
        there = q.ask(sid, QUESTION)
    delta_read = replica.rt.store.working_bytes_read - read_before
    now = replica.rt.resident.working(sid)
    assert now.version == info.chunks - 1
    whole = ingest.rt.store.load_working(sid)  # what a replica with no copy would have to read
    assert 0 < delta_read < whole.read_bytes  # only the deltas after its copy

    live = ingest.rt.resident.working(sid).state
    for name in ("keys", "values", "positions", "serial", "score"):
        assert torch.equal(getattr(now.state.tokens, name), getattr(live.tokens, name)), name
    assert there.answer == here.answer and _evidence(there) == _evidence(here)
