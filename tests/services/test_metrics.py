"""/metrics on the HTTP port: real servers, real HTTP GETs, parsed with prometheus_client's own parser."""
from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.client import Client, state_name
from tests.conftest import wait_done

TOKEN = "metrics-test-token-0123456789"


def get(port: int, path: str = "/metrics", token: str | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def scrape(port: int, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    status, body, headers = get(port, token=token)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def value(samples, name: str, **labels) -> float | None:
    """The one sample of `name` whose labels include `labels` (per-stream ones also carry `name`), or None."""
    found = [v for (n, labs), v in samples.items() if n == name and set(labels.items()) <= set(labs)]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return found[0] if found else None


def test_metrics_move_with_a_real_ingest_and_a_question(make_server, pattern_video):
    srv, addr = make_server(http_port=-1)
    port = srv.http_port
    assert port and port > 0 and srv.http.port == port
    before = scrape(port)
    assert value(before, "vigil_encode_seconds_count") == 0
    assert value(before, "vigil_question_seconds_count", outcome="ok") == 0
    assert value(before, "vigil_store_up") == 1
    assert value(before, "vigil_server_info", role="all", model="tiny", device="cpu") == 1
    assert value(before, "process_resident_memory_bytes") > 0

    with Client(addr) as c:
        sid = c.start(str(pattern_video), fps=2).stream_id
        info = wait_done(c, sid)
        assert state_name(info.state) == "finished" and info.chunks == 3
        mid = scrape(port)
        # one encode and one memory step per stored chunk, measured around the calls
        assert value(mid, "vigil_encode_batch_clips_sum") == info.chunks  # one clip per chunk, in batches
        assert value(mid, "vigil_memory_step_seconds_count") == info.chunks
        assert value(mid, "vigil_encode_seconds_sum") > 0 and value(mid, "vigil_encode_seconds_count") >= 1
        assert value(mid, "vigil_stream_chunks", stream=sid) == info.chunks
        assert value(mid, "vigil_stream_frames_total", stream=sid) == info.frames == 24
        assert value(mid, "vigil_stream_memory_bytes", stream=sid) == info.memory_bytes > 0
        assert value(mid, "vigil_stream_dropped_frames_total", stream=sid) == 0
        assert value(mid, "vigil_stream_state", stream=sid, state="finished") == 1
        assert value(mid, "vigil_stream_state", stream=sid, state="running") == 0
        assert value(mid, "vigil_streams", state="finished") == 1
        assert value(mid, "vigil_question_seconds_count", outcome="ok") == 0

        c.ask(sid, "what colour is the screen?", top_k=2)
        with pytest.raises(grpc.RpcError) as err:
            c.ask("nosuchstream", "anything?")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    after = scrape(port)
    assert value(after, "vigil_question_seconds_count", outcome="ok") == 1
    assert value(after, "vigil_question_seconds_count", outcome="error") == 1
    assert value(after, "vigil_question_seconds_sum", outcome="ok") > 0
    assert value(after, "vigil_encode_batch_clips_sum") == info.chunks  # questions encode no clips


def test_each_server_has_its_own_registry_and_port(make_server, pattern_video):
    a, addr_a = make_server(http_port=-1)
    b, _ = make_server(http_port=-1)
    assert a.http_port != b.http_port
    with Client(addr_a) as c:
        info = wait_done(c, c.start(str(pattern_video), fps=2).stream_id)
    assert value(scrape(a.http_port), "vigil_encode_batch_clips_sum") == info.chunks
    assert value(scrape(b.http_port), "vigil_encode_batch_clips_sum") == 0  # b encoded nothing
    # the per-stream figures are the shared store's: both report the stream
    assert value(scrape(b.http_port), "vigil_stream_chunks", stream=info.stream_id) == info.chunks


def test_the_token_guards_the_http_side(make_server):
    srv, _ = make_server(http_port=-1, auth_token=TOKEN)
    status, body, headers = get(srv.http_port)
    assert status == 401 and "Bearer" in headers["www-authenticate"] and "VIGIL_AUTH_TOKEN" in body
    assert get(srv.http_port, token="wrong-token-0123456789")[0] == 401
    assert get(srv.http_port, "/", token=None)[0] == 401
    assert value(scrape(srv.http_port, token=TOKEN), "vigil_store_up") == 1


def test_metrics_open_exempts_only_metrics(make_server):
    srv, _ = make_server(http_port=-1, auth_token=TOKEN, metrics_open=True)
    assert value(scrape(srv.http_port), "vigil_store_up") == 1  # no token needed for /metrics
    assert get(srv.http_port, "/")[0] == 401  # everything else still needs it
    assert get(srv.http_port, "/", token=TOKEN)[0] == 200


def test_http_port_zero_turns_it_off(make_server):
    from services.config import Settings

    assert Settings.model_fields["http_port"].default == 8080
    srv, addr = make_server(http_port=0)
    assert srv.http is None and srv.http_port is None
    with Client(addr) as c:  # gRPC serves as ever
        assert c.list() == []


def test_a_busy_http_port_fails_the_start(make_server):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"HTTP port {port} on 127.0.0.1 is in use.*--http-port"):
            make_server(http_port=port)


def test_a_busy_grpc_port_is_not_shared(make_server, tiny_adapter, describer, redis_url, namespace, cache_dir):
    """grpc's SO_REUSEPORT is off: a second server on the same port fails instead of sharing its calls."""
    from services.config import Settings
    from services.server import VigilServer

    _, addr = make_server()
    s = Settings(host="127.0.0.1", port=int(addr.rsplit(":", 1)[1]), http_port=0, redis_url=redis_url,
                 namespace=namespace, cache_dir=cache_dir / "vigil")
    with pytest.raises(RuntimeError, match=r"cannot bind the gRPC port 127\.0\.0\.1:\d+ \(in use"):
        VigilServer(s, adapter=tiny_adapter, describer=describer).start_in_thread()


def test_store_outages_are_counted(make_server):
    from services.embedded_redis import EmbeddedRedis

    redis_server = EmbeddedRedis().start()
    try:
        srv, addr = make_server(http_port=-1, redis_url=redis_server.url, redis_timeout_s=0.5)
        assert value(scrape(srv.http_port), "vigil_store_up") == 1
        redis_server.stop()
        with Client(addr) as c, pytest.raises(grpc.RpcError) as err:
            c.describe("anystream")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        down = scrape(srv.http_port)
        assert value(down, "vigil_store_up") == 0
        assert value(down, "vigil_redis_errors_total", where="api") == 1
        assert value(down, "vigil_redis_errors_total", where="metrics") == 1
    finally:
        redis_server.stop()


def test_ingest_waits_for_a_stalled_store_are_counted(make_server, media_dir):
    """A stream worker that meets a stalled Redis waits and resends; each wait is counted (where="ingest")."""
    import os
    import signal
    import time

    from services.embedded_redis import EmbeddedRedis
    from testkit import media

    video = media_dir / "pattern-90s.mp4"  # the same file test_redis_faults uses
    media.shared_synthetic_video(video, seconds=90, fps=10, scenes=6)
    redis_server = EmbeddedRedis().start()
    try:
        srv, addr = make_server(http_port=-1, redis_url=redis_server.url, redis_timeout_s=0.5)
        with Client(addr) as c:
            sid = c.start(str(video), fps=2, clip_frames=4).stream_id
            os.kill(redis_server.proc.pid, signal.SIGSTOP)  # 180 frames to go: the worker's next write stalls
            try:
                deadline = time.monotonic() + 60
                while not value(stalled := scrape(srv.http_port), "vigil_redis_errors_total", where="ingest"):
                    assert time.monotonic() < deadline, "no ingest wait was counted while Redis was stopped"
                assert value(stalled, "vigil_store_up") == 0
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            info = wait_done(c, sid)
        assert state_name(info.state) == "finished" and info.frames == 180  # the outage delayed it, no more
        after = scrape(srv.http_port)
        assert value(after, "vigil_redis_errors_total", where="ingest") >= 1
        assert value(after, "vigil_stream_frames_total", stream=sid) == 180
    finally:
        redis_server.stop()


def test_with_tls_the_http_side_is_https_with_the_same_certificate(make_server, tmp_path):
    import ssl

    from tests.services.test_tls import Authority

    ca = Authority(tmp_path, "metrics-ca")
    server, client = ca.server(), ca.client()
    srv, _ = make_server(http_port=-1, tls={"cert_file": server.cert, "key_file": server.key,
                                            "client_ca_file": ca.pem})
    assert srv.http.scheme == "https"
    url = f"https://127.0.0.1:{srv.http_port}/metrics"
    trusting = ssl.create_default_context(cafile=str(ca.pem))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):  # mutual TLS: no client certificate
        urllib.request.urlopen(url, context=trusting, timeout=30).read()
    trusting.load_cert_chain(str(client.cert), str(client.key))
    with urllib.request.urlopen(url, context=trusting, timeout=30) as resp:
        body = resp.read().decode()
    assert resp.status == 200 and "vigil_store_up 1.0" in body
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):  # no plaintext
        urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=30).read()


def test_a_client_that_goes_away_mid_question_counts_as_cancelled(make_server, pattern_video):
    """Ask and AskStream cancelled by their clients while the question waits for the model: outcome="cancelled",
    not "error" (issue 21)."""
    import time

    from services.wire import qa_pb2
    from tests.conftest import wait_for

    srv, addr = make_server(http_port=-1)
    port = srv.http_port
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=2).stream_id).stream_id
        req = qa_pb2.AskRequest(stream_id=sid, question="what colour is the screen?", top_k=2)
        assert srv.rt.model_lock.acquire(timeout=60)  # the real lock every question's model work waits on
        try:
            for n, rpc in enumerate((c.qa.Ask.future, c.qa.AskStream), 1):
                call = rpc(req, timeout=60)
                wait_for(lambda: srv.work.in_flight == 1, 30, "the question taken by a question worker")
                time.sleep(0.2)
                call.cancel()
                wait_for(lambda: value(scrape(port), "vigil_question_seconds_count", outcome="cancelled") == n,
                         30, f"{n} cancelled question(s) counted")
                if n == 1:  # the started question waits for the model; let it end before the next
                    srv.rt.model_lock.release()
                    wait_for(lambda: srv.work.in_flight == 0, 30, "the first question done")
                    assert srv.rt.model_lock.acquire(timeout=60)
        finally:
            if srv.rt.model_lock.locked():
                srv.rt.model_lock.release()
    after = scrape(port)
    assert value(after, "vigil_question_seconds_count", outcome="cancelled") == 2
    assert value(after, "vigil_question_seconds_count", outcome="error") == 0
    assert value(after, "vigil_question_seconds_count", outcome="ok") == 0
