"""Pushes that end truthfully, DeleteStream (RPC and `vigil delete`), paged ListStreams: a real server on
127.0.0.1, real pushed MPEG-TS bytes, a real Redis."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis

from memory.store import StreamRecord
from services.client import Client, state_name
from services.wire import ingest_pb2
from tests.conftest import wait_done
from tests.services.test_cli import VIGIL, env_for

SLICE = 32 * 1024


def _slices(path: Path, n: int | None = None):
    data = path.read_bytes()
    parts = [data[i:i + SLICE] for i in range(0, len(data), SLICE)]
    return parts[:n] if n else parts


def _push_messages(parts, name: str, end: bool, stall_s: float = 0.0, stop: threading.Event | None = None):
    yield ingest_pb2.PushStreamRequest(config=ingest_pb2.PushConfig(name=name, fps=2, clip_frames=4))
    for p in parts:
        yield ingest_pb2.PushStreamRequest(data=p)
    if stall_s:
        (stop or threading.Event()).wait(stall_s)  # the sender goes quiet (stop: the test is done with it)
    if end:
        yield ingest_pb2.PushStreamRequest(end=ingest_pb2.PushEnd())


def _pushed(c: Client, name: str):
    infos = [i for i in c.list() if i.source == f"push:{name}"]
    assert len(infos) == 1
    return infos[0]


def _ended(c: Client, name: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        infos = [i for i in c.list() if i.source == f"push:{name}"]
        if infos and state_name(infos[0].state) in ("finished", "stopped", "failed"):
            return infos[0]
        time.sleep(0.1)
    raise AssertionError(f"push {name} did not end")


def test_a_complete_push_finishes_and_one_without_its_end_is_truncated(make_server, bikes_ts):
    _, addr = make_server()
    with Client(addr) as c:
        full = c.ingest.PushStream(_push_messages(_slices(bikes_ts), "full", end=True))
        assert state_name(full.state) == "finished" and full.frames == 20
        cut = c.ingest.PushStream(_push_messages(_slices(bikes_ts, 8), "cut", end=False))
    assert state_name(cut.state) == "failed"
    assert "truncated by the client" in cut.error and "without its end message" in cut.error
    assert cut.frames < full.frames


@pytest.mark.parametrize("how", ["cancel", "deadline", "channel_closed"])
def test_a_push_the_client_abandons_ends_failed_never_finished(make_server, bikes_ts, how):
    _, addr = make_server()
    stop = threading.Event()
    name = f"gone-{how}"
    try:
        channel_client = Client(addr)
        stub = channel_client.ingest
        timeout = 3.0 if how == "deadline" else None
        fut = stub.PushStream.future(_push_messages(_slices(bikes_ts, 10), name, end=True, stall_s=60, stop=stop),
                                     timeout=timeout)
        with Client(addr) as c:
            deadline = time.monotonic() + 30
            while not [i for i in c.list() if i.source == f"push:{name}"] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # some bytes are in
            if how == "cancel":
                fut.cancel()
            elif how == "channel_closed":
                channel_client.channel.close()
            info = _ended(c, name)
        assert state_name(info.state) == "failed", info.error
        assert "truncated by the client" in info.error and "kept" in info.error
    finally:
        stop.set()
        channel_client.channel.close()


def test_a_killed_sender_process_ends_its_push_failed(make_server, bikes_ts, tmp_path):
    _, addr = make_server()
    script = tmp_path / "sender.py"
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from services.client import Client
def chunks():
    data = open({str(bikes_ts)!r}, 'rb').read()
    for i in range(0, 10 * {SLICE}, {SLICE}):
        yield data[i:i + {SLICE}]
    print('sent', flush=True)
    time.sleep(600)
with Client({addr!r}) as c:
    c.push(chunks(), name='killed', fps=2, clip_frames=4)
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "sent"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with Client(addr) as c:
            info = _ended(c, "killed")
        assert state_name(info.state) == "failed" and "truncated by the client" in info.error
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_silent_push_ends_and_frees_its_slot(make_server, bikes_ts):
    _, addr = make_server(push_idle_timeout_s=1.5, max_streams=1)
    stop = threading.Event()
    with Client(addr) as c:
        fut = c.ingest.PushStream.future(_push_messages(_slices(bikes_ts, 6), "quiet", end=True, stall_s=60, stop=stop))
        try:
            info = _ended(c, "quiet", timeout_s=30)
            assert state_name(info.state) == "failed" and "nothing arrived for 1.5 s" in info.error
            # its slot is free again: the only stream slot takes a new push
            again = c.push(iter(_slices(bikes_ts)), name="next", fps=2, clip_frames=4)
            assert state_name(again.state) == "finished"
        finally:
            stop.set()
            fut.cancel()


def test_delete_stream_removes_everything_and_the_cli_explains(make_server, pattern_video, redis_url, namespace,
                                                             cache_dir):
    srv, addr = make_server()
    r = redis.Redis.from_url(redis_url)
    with Client(addr) as c:
        done = wait_done(c, c.start(str(pattern_video), fps=2, clip_frames=4).stream_id)
        assert c.ask(done.stream_id, "what is shown?", max_new_tokens=2).answer is not None
        running = c.start(str(pattern_video), fps=2, clip_frames=4).stream_id
        resp = c.delete(done.stream_id)
        assert resp.stream_id == done.stream_id and resp.keys_removed >= done.chunks + 5
        assert list(r.scan_iter(f"{namespace}:s:{{{done.stream_id}}}:*")) == []
        for call in (lambda: c.describe(done.stream_id), lambda: c.ask(done.stream_id, "anything?"),
                     lambda: c.delete(done.stream_id)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # a running stream is stopped first, then removed; nothing of it comes back
        out = subprocess.run([VIGIL, "delete", running, "--server", addr], env=env_for(cache_dir),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert running in out.stdout and "deleted" in out.stdout
        time.sleep(1.0)
        assert list(r.scan_iter(f"{namespace}:s:{{{running}}}:*")) == []
        assert [i.stream_id for i in c.list()] == []
        missing = subprocess.run([VIGIL, "delete", "nosuchstream", "--server", addr], env=env_for(cache_dir),
                                 capture_output=True, text=True, timeout=120)
        assert missing.returncode == 2 and "nosuchstream" in missing.stderr


def test_list_streams_pages(make_server):
    srv, addr = make_server()
    for i in range(7):
        srv.rt.store.create_stream(StreamRecord(stream_id=f"page-{i}", source="x", state="finished",
                                                created=1000.0 + i))
    with Client(addr) as c:
        first = c.list_page(page_size=3)
        assert [i.stream_id for i in first.streams] == ["page-0", "page-1", "page-2"] and first.total == 7
        second = c.list_page(page_size=3, page_token=first.next_page_token)
        third = c.list_page(page_size=3, page_token=second.next_page_token)
        assert [i.stream_id for i in third.streams] == ["page-6"] and third.next_page_token == ""
        assert [i.stream_id for i in c.list(page_size=2)] == [f"page-{i}" for i in range(7)]
        for bad in (dict(page_size=5000), dict(page_token="no-such-stream")):
            with pytest.raises(grpc.RpcError) as err:
                c.list_page(**bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
