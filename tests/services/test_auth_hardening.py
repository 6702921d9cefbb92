"""Authentication hardening against a real server (gRPC and HTTP on 127.0.0.1, real Redis): failed attempts
slowed per client address with a growing delay and logged once per burst, short tokens refused at start,
sign-in sessions kept server-side and revoked on sign-out."""
from __future__ import annotations

import http.client
import logging
import threading
import time

import grpc
import pytest
import redis
from pydantic import ValidationError

from services.auth import AuthThrottle
from services.client import Client
from services.config import Settings
from services.http.app import COOKIE
from tests.services.test_tls import _env, _vigil

TOKEN = "auth-test-token-0123456789abcdef"
STEP, CAP = 0.05, 5.0  # the first delay, doubling; the longest


def expected(n: int) -> float:
    """The least time n failed attempts in a row take: each waits for the delay the ones before it earned."""
    t = AuthThrottle(STEP, CAP)
    return sum(t.delay(i) for i in range(1, n))


def post(port: int, path: str, body: str = "", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                   **(headers or {})})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, r.getheader("set-cookie"), r.getheader("location")


def get(port: int, path: str, headers: dict, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


@pytest.fixture
def server(make_server):
    srv, addr = make_server(http_port=-1, auth_token=TOKEN, auth_fail_delay_s=STEP, auth_fail_max_delay_s=CAP)
    return srv, addr


def test_brute_force_is_slowed_and_logged_once_per_burst(server, caplog):
    srv, addr = server
    port = srv.http_port
    caplog.set_level(logging.WARNING, logger="vigil.auth")
    n = 5  # 0.05 + 0.1 + 0.2 + 0.4 = 0.75 s at least

    # the login form
    t0 = time.monotonic()
    for i in range(n):
        assert post(port, "/login", f"token=wrong-{i:02d}-0123456789abcdef")[0] == 401
    assert time.monotonic() - t0 >= expected(n) * 0.95
    status, cookie, _ = post(port, "/login", f"token={TOKEN}")  # the right token still works (after its turn)
    assert status == 303 and cookie

    # the bearer token on the API
    t0 = time.monotonic()
    for i in range(n):
        assert get(port, "/api/v1/streams", {"Authorization": f"Bearer wrong-{i:02d}-0123456789abcdef"}) == 401
    assert time.monotonic() - t0 >= expected(n) * 0.95
    assert get(port, "/api/v1/streams", {"Authorization": f"Bearer {TOKEN}"}) == 200

    # the gRPC token
    t0 = time.monotonic()
    for i in range(n):
        with Client(addr, token=f"wrong-{i:02d}-0123456789abcdef") as bad:
            with pytest.raises(grpc.RpcError) as err:
                bad.list()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - t0 >= expected(n) * 0.95
    with Client(addr, token=TOKEN) as ok:
        assert ok.list() == []

    # parallel attempts buy nothing: they are checked one at a time, each after the delay the last earned
    statuses: list[int] = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda: statuses.append(get(
        port, "/api/v1/streams", {"Authorization": "Bearer parallel-guess-0123456789"}))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [401] * 5 and time.monotonic() - t0 >= expected(5) * 0.95
    assert get(port, "/api/v1/streams", {"Authorization": f"Bearer {TOKEN}"}) == 200

    # logged once when a burst starts and once when it ends: 4 bursts, 8 lines (not one per attempt)
    lines = [r.getMessage() for r in caplog.records if r.name == "vigil.auth"]
    assert len(lines) == 8, lines
    assert sum("burst from 127.0.0.1 ended: 5 failed" in m for m in lines) == 4, lines
    assert TOKEN not in "\n".join(lines)


def test_slowing_is_per_client_address(server):
    """Another address's first wrong attempt does not wait for the first address's delay."""
    srv, _ = server
    port = srv.http_port
    for i in range(4):  # 127.0.0.1 now waits 0.4 s before its next check
        assert get(port, "/api/v1/streams", {"Authorization": f"Bearer wrong-{i}-0123456789abcdef"}) == 401
    throttle = srv.throttle
    assert throttle.failures("127.0.0.1") == 4 and throttle.failures("127.0.0.2") == 0
    assert get(port, "/api/v1/streams", {"Authorization": "Bearer other-0123456789abcdef"}, source="127.0.0.2") == 401
    assert throttle.failures("127.0.0.2") == 1 and throttle.failures("127.0.0.1") == 4


def test_short_tokens_are_refused_at_start(cache_dir):
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(auth_token="fifteen-chars-x")
    assert Settings(auth_token="sixteen-chars-xx").auth_token is not None
    proc = _vigil(["serve", "--port", "0"], _env(cache_dir, VIGIL_REDIS_URL="redis://127.0.0.1:1/0",
                                                 VIGIL_AUTH_TOKEN="s3cret"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "VIGIL_AUTH_TOKEN" in lines[0] \
        and "at least 16" in lines[0] and "s3cret" not in proc.stderr, proc.stderr


def test_sign_out_revokes_the_session_server_side(server, redis_url, namespace):
    srv, _ = server
    port = srv.http_port
    status, cookie, location = post(port, "/login", f"token={TOKEN}")
    assert status == 303 and location == "/"
    value = cookie.split(";")[0]
    name, _, sid = value.partition("=")
    assert name == COOKIE and len(sid) >= 43 and TOKEN not in cookie
    assert f"Max-Age={int(srv.settings.session_ttl_s)}" in cookie
    # kept in Redis under the server's namespace, hashed, with an expiry
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{namespace}:http-session:*"))
    assert len(keys) == 1 and sid.encode() not in keys[0]
    assert 0 < r.pttl(keys[0]) <= srv.settings.session_ttl_s * 1000
    # a second sign-in is another session
    other = post(port, "/login", f"token={TOKEN}")[1].split(";")[0]
    assert other != value
    assert get(port, "/api/v1/streams", {"Cookie": value}) == 200
    # sign out (the page's form posts from the server's own origin)
    status, cleared, location = post(port, "/logout", headers={"Cookie": value,
                                                               "Origin": f"http://127.0.0.1:{port}"})
    assert status == 303 and location == "/login" and f'{COOKIE}=""' in cleared
    # the old cookie, replayed, no longer works: the session is gone server-side; the other one still works
    assert get(port, "/api/v1/streams", {"Cookie": value}) == 401
    assert r.exists(keys[0]) == 0 and len(list(r.scan_iter(match=f"{namespace}:http-session:*"))) == 1
    assert get(port, "/api/v1/streams", {"Cookie": other}) == 200
    # a sign-out from another origin is refused (it could not sign a user out either)
    assert post(port, "/logout", headers={"Cookie": other, "Origin": "http://127.0.0.1:1"})[0] == 403
    assert get(port, "/api/v1/streams", {"Cookie": other}) == 200
