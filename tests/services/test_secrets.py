"""Credentials in a camera URL never leave the server: not in the API (StreamInfo, WatchStream events, error
statuses, answers), not in the log, not in the stored record or events; yet the stream runs, reconnects and
is resumed after a restart with them (the store keeps the real URL under a key of its own). Against a real
GStreamer RTSP server (it ignores the credentials and the query), a real gRPC server and a real Redis."""
from __future__ import annotations

import io
import logging
import os
import stat

import grpc
import pytest
import redis

from services import logs
from services.client import Client, state_name
from services.embedded_redis import EmbeddedRedis
from services.wire import ingest_pb2
from testkit import rtsp
from tests.conftest import Watcher, wait_for

SECRETS = ("s3cret-pw", "SECRET-TOKEN")
LIVE = {"open_timeout_s": 3.0, "read_timeout_s": 2.0, "backoff_initial_s": 0.2, "backoff_cap_s": 1.0}
EV = ingest_pb2.StreamEvent


def cam_url(port: int) -> str:
    return f"rtsp://admin:s3cret-pw@127.0.0.1:{port}/cam?token=SECRET-TOKEN&channel=2"


def shown_url(port: int) -> str:
    return f"rtsp://***@127.0.0.1:{port}/cam?token=***&channel=2"


def assert_clean(text, what: str) -> None:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    for s in SECRETS:
        assert s not in text, f"{s!r} leaked in {what}: ...{text[max(0, text.find(s) - 200):text.find(s) + 50]}..."


@pytest.fixture(scope="module", autouse=True)
def rtsp_server_available():
    """A missing RTSP server is a broken setup (scripts/setup.sh installs it), never a skip."""
    if (why := rtsp.gstreamer_rtsp_available()) is not None:
        pytest.fail(why)


@pytest.fixture(scope="module")
def camera_file():
    return rtsp.long_bikes()


@pytest.fixture
def server_log(tmp_path):
    """A file handler on the root logger at DEBUG, there before the servers start (they must mask its lines)."""
    path = tmp_path / "server.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield path, handler
    root.removeHandler(handler)
    handler.close()


def stored_values(r: redis.Redis, namespace: str, skip: str) -> list[tuple[str, bytes]]:
    """Every value under the namespace (hash fields, list items, stream entries, members), except key `skip`."""
    out = []
    for key in r.scan_iter(match=f"{namespace}:*", count=1000):
        k = key.decode()
        if k == skip:
            continue
        kind = r.type(key).decode()
        if kind == "string":
            out.append((k, r.get(key)))
        elif kind == "hash":
            out += [(f"{k}[{f.decode()}]", v) for f, v in r.hgetall(key).items()]
        elif kind == "list":
            out += [(k, v) for v in r.lrange(key, 0, -1)]
        elif kind == "stream":
            out += [(f"{k}#{eid.decode()}", b" ".join(name + b"=" + value for name, value in body.items()))
                    for eid, body in r.xrange(key)]
        elif kind == "zset":
            out += [(k, m) for m in r.zrange(key, 0, -1)]
        elif kind == "set":
            out += [(k, m) for m in r.smembers(key)]
    return out


@pytest.mark.timeout(300)
def test_camera_credentials_never_leave_the_server(make_server, camera_file, redis_url, namespace, caplog,
                                                   server_log):
    caplog.set_level(logging.DEBUG)  # the root: library records (grpc, PyAV) too
    caplog.set_level(logging.DEBUG, logger="vigil")
    log_path, file_handler = server_log
    seen = []  # (what, message): everything the API handed out

    first, addr = make_server(live=LIVE, lease_ttl_s=1.0)
    for h in (file_handler, caplog.handler):  # VigilServer.start_async put the filter on the root's handlers
        assert any(isinstance(f, logs.RedactFilter) for f in h.filters)
    r = redis.Redis.from_url(redis_url)
    with rtsp.RtspServer(camera_file) as cam:
        url, shown = cam_url(cam.port), shown_url(cam.port)
        with Client(addr) as c:
            info = c.start(url, fps=2, clip_frames=4)
            seen.append(("StartStream", info))
            assert info.source == shown  # host, port, path and channel=2 visible; the credentials masked
            sid = info.stream_id
            watch = Watcher(c, sid)
            wait_for(lambda: c.describe(sid).chunks >= 2, 90, "chunks from the camera")
            seen.append(("DescribeStream", c.describe(sid)))
            listed = [s for s in c.list() if s.stream_id == sid]
            assert [s.source for s in listed] == [shown]
            seen.append(("ListStreams", listed))
            private = f"{namespace}:s:{{{sid}}}:source"
            assert r.get(private) == url.encode()  # the real URL, in its own key, for the worker

            # the camera dies: reconnect attempts, a state error, then a gap once it is back
            cam.kill()
            wait_for(lambda: state_name(c.describe(sid).state) == "reconnecting", 20, "reconnecting")
            wait_for(lambda: EV.KIND_RECONNECT_ATTEMPT in watch.kinds(), 20, "a reconnect attempt event")
            down = c.describe(sid)
            assert down.error  # why it is down (the disconnect's reason)
            seen.append(("DescribeStream while down", down))
            cam.restart()
            wait_for(lambda: EV.KIND_GAP in watch.kinds(), 60, "the gap event after the reconnect")
            before = c.describe(sid).chunks
            wait_for(lambda: c.describe(sid).chunks >= before + 1, 60, "chunks after the reconnect")

            # failing starts: the status messages name the host, never the credentials
            refused_port = rtsp.free_port()
            failures = {
                cam_url(refused_port): (grpc.StatusCode.UNAVAILABLE, f"127.0.0.1:{refused_port}"),
                # echoes the URL itself: redacted, its harmless parameter kept
                url.replace(f":{cam.port}/", ":99999/"): (grpc.StatusCode.UNAVAILABLE,
                                                          "rtsp://***@127.0.0.1:99999/cam?token=***&channel=2"),
                # no scheme: taken for a file path, echoed by the path check; _fail masks it
                f"admin:s3cret-pw@127.0.0.1:{cam.port}/cam?token=SECRET-TOKEN&channel=2":
                    (grpc.StatusCode.NOT_FOUND, f"***@127.0.0.1:{cam.port}/cam?token=***&channel=2"),
                url.replace("rtsp://", "http://"): (grpc.StatusCode.INVALID_ARGUMENT, "http"),
            }
            for bad, (code, visible) in failures.items():
                with pytest.raises(grpc.RpcError) as err:
                    c.start(bad)
                assert err.value.code() == code, (bad, err.value.details())
                assert visible in err.value.details(), err.value.details()
                seen.append((f"StartStream({bad!r}) status", err.value.details()))

            # records from libraries that propagate to the root, with the URL in the message and a traceback
            logging.getLogger("libav.rtsp").warning("[rtsp @ 0x1] could not open %s", url)
            try:
                raise OSError(f"Connection refused: '{url}'")
            except OSError:
                logging.getLogger("grpc._cython.cygrpc").exception("handler failed for %s", url)
        watch.close()
        seen += [("WatchStream event", e) for e in watch.events]

        first.stop_thread()  # a graceful shutdown leaves the stream resumable
        _, addr2 = make_server(live=LIVE, lease_ttl_s=1.0)  # same namespace: adopts it from the private key
        with Client(addr2) as c:
            resumed = c.describe(sid)
            watch2 = Watcher(c, sid)
            wait_for(lambda: c.describe(sid).chunks >= resumed.chunks + 2, 90, "chunks after the server restart")
            answer = c.ask(sid, "what happened while the feed was down?", top_k=2)
            final = c.stop(sid)
            watch2.close(wait_s=10)  # ends by itself at the terminal state
        seen += [("DescribeStream after restart", resumed), ("Ask", answer), ("StopStream", final)]
        seen += [("WatchStream event (2nd server)", e) for e in watch2.events]

    # the stream really worked throughout
    assert state_name(final.state) == "stopped" and final.source == shown
    assert final.reconnects >= 1 and len(final.gaps) == 2  # the camera outage, and the server restart
    assert watch2.events and watch2.events[-1].info.state == ingest_pb2.STREAM_STATE_STOPPED
    assert any(e.message for e in watch.events if e.kind == EV.KIND_RECONNECT_ATTEMPT)
    # ... and nothing that left the server holds the credentials
    for what, msg in seen:
        assert_clean(msg, what)
    # the stored stream: the record, its events, gaps, chunks: everything but the private key
    values = stored_values(r, namespace, skip=private)
    assert any(k.endswith("[source]") and shown.encode() in v for k, v in values)
    assert any(b"attempt" in v for k, v in values if "events#" in k)  # the reconnect messages were looked at
    for k, v in values:
        assert_clean(v, f"redis {k}")
    # the log: the masked forms are there (the filter ran on both handlers), the secrets are not
    text = log_path.read_text()
    for t, what in ((text, "the log file"), (caplog.text, "caplog")):
        assert f"could not open {shown}" in t and f"Connection refused: '{shown}'" in t, what
        assert_clean(t, what)
    for rec in caplog.records:
        assert_clean(rec.getMessage(), f"log record {rec.name}")
        assert_clean(rec.exc_text or "", f"traceback of {rec.name}")


def test_log_filter_masks_messages_arguments_and_tracebacks():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("vigiltest.redact")
    logger.propagate, logger.level = False, logging.DEBUG
    logger.addHandler(handler)
    try:
        assert logs.install(logger) >= 1
        assert logs.install(logger) == 0  # idempotent
        url = "rtsp://admin:s3cret-pw@cam:554/x?token=SECRET-TOKEN&channel=2"
        logger.info("opening %s (try %d)", url, 2)
        logger.info(f"already formatted: {url}")
        logger.info("mapping %(u)s", {"u": url})
        try:
            raise ValueError(f"bad input {url!r}")
        except ValueError:
            logger.exception("failed")
        logger.info("nothing to mask %s=%d", "channel", 2)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert_clean(text, "the formatted log")
    assert "opening rtsp://***@cam:554/x?token=***&channel=2 (try 2)" in text
    assert "already formatted: rtsp://***@cam:554/x?token=***&channel=2" in text
    assert "mapping rtsp://***@cam:554/x?token=***" in text
    assert "ValueError: bad input 'rtsp://***@cam:554/x?token=***&channel=2'" in text  # the traceback, masked
    assert "nothing to mask channel=2" in text


def test_embedded_redis_files_are_the_owners_alone():
    with EmbeddedRedis() as er:
        r = redis.Redis(unix_socket_path=str(er.socket))
        r.set("vigil:probe", "rtsp://admin:s3cret-pw@cam/x")
        aof = er.dir / "appendonlydir"
        wait_for(lambda: any(b"vigil:probe" in p.read_bytes() for p in aof.glob("*.aof")), 10, "the AOF write")
        assert stat.S_IMODE(os.stat(er.dir).st_mode) == 0o700
        seen = []
        for root, dirs, files in os.walk(er.dir):
            for name in dirs + files:
                path = os.path.join(root, name)
                st = os.lstat(path)
                mode, rel = stat.S_IMODE(st.st_mode), os.path.relpath(path, er.dir)
                seen.append(rel)
                if stat.S_ISDIR(st.st_mode):
                    assert mode == 0o700, (rel, oct(mode))
                elif stat.S_ISREG(st.st_mode):
                    assert mode == 0o600, (rel, oct(mode))
                else:  # the unix socket
                    assert stat.S_ISSOCK(st.st_mode) and mode & 0o077 == 0, (rel, oct(mode))
        assert "appendonlydir" in seen and any(s.startswith("appendonlydir/") for s in seen), seen
        assert "redis.sock" in seen
