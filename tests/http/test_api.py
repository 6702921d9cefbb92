"""The JSON API under /api/v1 against a real server (tiny model, real Redis, real footage), over real HTTP."""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest
from PIL import Image
import io

from services.client import Client, state_name
from services.http.app import COOKIE
from tests.conftest import wait_done
from tests.services.test_cli import env_for, run

TOKEN = "api-test-token-0123456789abcdef"
FPS, CLIP = 2.0, 4


def call(port: int, path: str, token: str | None = TOKEN, body: dict | None = None, headers: dict | None = None,
         raw: bytes | None = None):
    """(status, headers, body bytes)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(port: int, path: str, **kw):
    status, headers, body = call(port, path, **kw)
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
    return status, json.loads(body)


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields["event"], json.loads(fields["data"])))
    return out


@pytest.fixture
def served(make_server, pattern_video):
    # failed tokens are slowed per address (test_auth_http.py): a short step keeps the refusals here quick
    srv, addr = make_server(http_port=-1, auth_token=TOKEN, auth_fail_delay_s=0.02)
    with Client(addr, token=TOKEN) as c:
        info = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id)
    assert state_name(info.state) == "finished" and info.chunks >= 3
    return srv, info


def test_streams_chunks_keyframes_and_gaps(served):
    srv, info = served
    port, sid = srv.http_port, info.stream_id
    status, body = get_json(port, "/api/v1/streams")
    assert status == 200
    [s] = [s for s in body["streams"] if s["stream_id"] == sid]
    assert s["state"] == "finished" and s["kind"] == "file" and s["chunks"] == info.chunks
    assert s["duration_s"] == pytest.approx(info.duration_s) and s["error"] == ""

    status, one = get_json(port, f"/api/v1/streams/{sid}")
    assert status == 200 and one["stream_id"] == sid and one["chunks"] == info.chunks

    # paging: two at a time, in time order, every chunk once
    seen, after = [], -1
    while True:
        status, page = get_json(port, f"/api/v1/streams/{sid}/chunks?after={after}&limit=2")
        assert status == 200 and len(page["chunks"]) <= 2 and page["total"] == info.chunks
        seen += page["chunks"]
        if page["next_after"] is None:
            break
        after = page["next_after"]
        assert after == page["chunks"][-1]["chunk_id"]
    assert len(seen) == info.chunks and len({c["chunk_id"] for c in seen}) == info.chunks
    starts = [c["start_s"] for c in seen]
    assert starts == sorted(starts) and seen[0]["start_s"] == pytest.approx(0.0, abs=0.6)
    assert all(c["end_s"] > c["start_s"] for c in seen)
    assert sum(c["scene_cuts"] for c in seen) == info.scene_cuts  # the 3-scene pattern has cuts
    assert info.scene_cuts > 0

    # keyframe bytes: a real JPEG for every chunk
    for c in seen:
        status, headers, jpg = call(port, c["keyframe_url"])
        assert status == 200 and headers["content-type"] == "image/jpeg" and jpg[:3] == b"\xff\xd8\xff"
        with Image.open(io.BytesIO(jpg)) as im:
            assert im.format == "JPEG" and im.width > 0 and im.height > 0

    status, gaps = get_json(port, f"/api/v1/streams/{sid}/gaps")
    assert status == 200 and gaps == {"stream_id": sid, "gaps": []}  # a file has no outages
    status, alerts = get_json(port, f"/api/v1/streams/{sid}/alerts")
    assert status == 200 and alerts["alerts"] == []


def test_the_api_and_the_cli_render_a_stream_and_an_answer_alike(served, cache_dir):
    """One rendering (services.client.as_json): the API's stream is `vigil streams --json`'s (the camera's or the
    push's name included), plus `live`; its evidence event has `vigil ask --json`'s fields, plus each keyframe's
    URL."""
    srv, info = served
    env, addr = env_for(cache_dir, VIGIL_AUTH_TOKEN=TOKEN), f"127.0.0.1:{srv.port}"
    listed = run(["streams", "--json", "--server", addr], env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    [cli] = [s for s in json.loads(listed.stdout) if s["stream_id"] == info.stream_id]
    status, body = get_json(srv.http_port, "/api/v1/streams")
    [api] = [s for s in body["streams"] if s["stream_id"] == info.stream_id]
    assert {k: api[k] for k in cli} == cli and set(api) - set(cli) == {"live"} and "name" in cli
    status, one = get_json(srv.http_port, f"/api/v1/streams/{info.stream_id}")
    assert {k: one[k] for k in cli} == cli  # a file has no gaps: DescribeStream's last gaps are none either

    asked = run(["ask", info.stream_id, "what colour?", "--json", "--top-k", "2", "--max-new-tokens", "4",
                 "--since", "0:06", "--server", addr], env, timeout=120)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    status, _, raw = call(srv.http_port, f"/api/v1/streams/{info.stream_id}/ask", body={
        "question": "what colour?", "top_k": 2, "max_new_tokens": 4, "window": {"start_s": 6}})
    events = dict(sse_events(raw))
    evidence, done = events["evidence"], events["done"]
    assert evidence["searched_window"] == answer["searched_window"] == {"start_s": 6, "end_s": None,
                                                                        "source": "request", "phrase": ""}
    shared = set(evidence) - {"stream_id"}
    assert shared <= set(answer) and set(done) <= set(answer)
    for e_api, e_cli in zip(evidence["evidence"], answer["evidence"], strict=True):
        assert set(e_api) - set(e_cli) == {"keyframe_url"} and set(e_cli) - set(e_api) == {"keyframe_jpeg_b64"}
        assert {k: type(v) for k, v in e_api.items() if k in e_cli} == {k: type(e_cli[k]) for k in e_api if k in e_cli}


def test_errors_are_json_with_the_grpc_meaning(served):
    srv, info = served
    port, sid = srv.http_port, info.stream_id
    status, body = get_json(port, "/api/v1/streams/nosuchstream")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = get_json(port, f"/api/v1/streams/{sid}/chunks/999999/keyframe.jpg")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = get_json(port, f"/api/v1/streams/{sid}/chunks?limit=0")
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT"
    status, body = get_json(port, f"/api/v1/streams/{sid}/ask", body={"question": "   "})
    assert status == 400 and "empty" in body["error"]["message"]
    status, body = get_json(port, "/api/v1/streams/nosuchstream/ask", body={"question": "what?"})
    assert status == 404
    status, body = get_json(port, f"/api/v1/streams/{sid}/ask", body={"question": "x", "window": {"start_s": 5,
                                                                                                   "end_s": 2}})
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT"
    status, body = get_json(port, f"/api/v1/streams/{sid}/ask", raw=b"{not json")
    assert status == 400
    # numbers out of the ranges gRPC's (unsigned) fields have, and JSON nested past the parser's stack: 400 naming
    # the field, never an internal error
    for path, field, value in (("ask", "top_k", -1), ("ask", "max_new_tokens", -3), ("summarize", "detail", -5),
                               ("summarize", "max_new_tokens", 2**40)):
        status, body = get_json(port, f"/api/v1/streams/{sid}/{path}", body={"question": "x", field: value})
        assert status == 400 and field in body["error"]["message"], (path, field, body)
    status, body = get_json(port, f"/api/v1/streams/{sid}/ask", raw=b"[" * 30_000 + b"]" * 30_000)
    assert status == 400 and "nested" in body["error"]["message"]
    # past the API's body cap (64 KiB by default): 413 before the JSON parser sees it
    status, body = get_json(port, f"/api/v1/streams/{sid}/ask", raw=b"[" * 100_000 + b"]" * 100_000)
    assert status == 413 and body["error"]["code"] == "RESOURCE_EXHAUSTED"


def test_ask_streams_evidence_then_text_then_done(served):
    srv, info = served
    port, sid = srv.http_port, info.stream_id
    status, headers, raw = call(port, f"/api/v1/streams/{sid}/ask",
                                body={"question": "What is happening in the video?", "top_k": 2,
                                      "max_new_tokens": 16})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    kinds = [k for k, _ in events]
    assert kinds[0] == "evidence" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"} and len(kinds) >= 3
    ev = events[0][1]
    assert 1 <= len(ev["evidence"]) <= 2 and ev["searched_window"]["source"] == "all"
    for e in ev["evidence"]:
        s, h, jpg = call(port, e["keyframe_url"])
        assert s == 200 and jpg[:3] == b"\xff\xd8\xff"
    text = "".join(d["text"] for k, d in events if k == "delta")
    assert events[-1][1]["answer"] == text.strip()

    # a window from the request is the one searched; every piece of evidence lies in it
    status, _, raw = call(port, f"/api/v1/streams/{sid}/ask", body={
        "question": "What is shown?", "window": {"start_s": 6, "end_s": 12}, "max_new_tokens": 4})
    ev = sse_events(raw)[0][1]
    assert ev["searched_window"] == {"start_s": 6, "end_s": 12, "source": "request", "phrase": ""}
    assert ev["evidence"] and all(e["end_s"] > 6 and e["start_s"] < 12 for e in ev["evidence"])


def test_summarize_streams_segments_then_the_overview(served):
    srv, info = served
    status, headers, raw = call(srv.http_port, f"/api/v1/streams/{info.stream_id}/summarize",
                                body={"detail": 2, "max_new_tokens": 4})
    assert status == 200
    kinds = [k for k, _ in sse_events(raw)]
    assert kinds.count("segment") == 2 and kinds[-1] == "done" and kinds[0] == "progress"


def test_auth_header_cookie_and_refusals(served):
    srv, info = served
    port = srv.http_port
    for token in (None, "wrong-token-0123456789abcdef"):
        status, body = get_json(port, "/api/v1/streams", token=token)
        assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
        status, headers, raw = call(port, f"/api/v1/streams/{info.stream_id}/ask", token=token,
                                    body={"question": "what?"})
        # no token and no sign-in cookie: nothing a cross-site page could ride on, so authentication answers
        assert status == 401
        if token is None:  # with the cookie and without an Origin, the edge refuses it before anything runs
            status, _, _ = call(port, f"/api/v1/streams/{info.stream_id}/ask", token=None,
                                body={"question": "what?"}, headers={"Cookie": "vigil_session=forged"})
            assert status == 403
        status, headers, _ = call(port, "/api/v1/streams/x/chunks/0/keyframe.jpg", token=token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    # a browser asking for the page without a token sees the login form (401)
    status, headers, page = call(port, "/", token=None, headers={"Accept": "text/html"})
    assert status == 401 and b'<form method="post" action="/login"' in page
    # the login form: a wrong token is refused, the right one sets an HttpOnly cookie that works
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/login", body="token=nope", headers={"Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    assert r.status == 401 and r.getheader("set-cookie") is None
    conn.request("POST", "/login", body=f"token={TOKEN}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    cookie = r.getheader("set-cookie")
    assert r.status == 303 and r.getheader("location") == "/"
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie and "Max-Age=" in cookie  # a random session id that expires, not the token
    value = cookie.split(";")[0]
    status, body = get_json(port, "/api/v1/streams", token=None, headers={"Cookie": value})
    assert status == 200 and body["streams"]
    status, _, page = call(port, "/", token=None, headers={"Cookie": value, "Accept": "text/html"})
    assert status == 200 and b"timeline.js" in page
    status, _, _ = call(port, "/api/v1/streams", token=None, headers={"Cookie": f"{COOKIE}={'x' * 43}"})
    assert status == 401
    # the page's own script and style need no token (they hold no data)
    status, _, js = call(port, "/static/timeline.js", token=None)
    assert status == 200 and b"/api/v1" in js
