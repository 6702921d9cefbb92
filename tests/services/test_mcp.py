"""The MCP server (services/mcp_server.py) driven by the official SDK's own client: over stdio (`python -m
services.cli mcp --server ...` in a subprocess, as an agent's configuration runs it) and over streamable HTTP at
/mcp on a real server's HTTP port, behind its token. One server for the module: two named cameras from a config file,
each a real clip with text burnt in at known times, ingested with the real frame index (so search finds the text)."""
from __future__ import annotations

import asyncio
import base64
import io
import socket
import sys
import uuid
from pathlib import Path

import httpx2
import pytest
from mcp import Client as McpClient
from mcp import MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from services.client import Client, state_name
from testkit import media
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mcp-test-token-" + uuid.uuid4().hex[:8]
TOOLS = {"list_streams", "ask", "summarize", "keyframe", "search", "ask_cameras", "report", "watch_alerts"}
FPS, CLIP = 1.0, 4  # 4 s chunks
# camera -> (seconds of footage, (start_s, end_s, text burnt in))
CLIPS = {"gate": (16, (4.0, 10.0, "GATE 7 CLOSED")), "dock": (24, (12.0, 18.0, "TRUCK 22 ARRIVED"))}
TRUCK = "At what time did truck 22 arrive?"


@pytest.fixture(scope="module")
def vigil(module_server, tmp_path_factory):
    """A server with HTTP (any free port), a token and the frame index; two named cameras from a config file, each
    a real clip (bikes.mp4) with text at known times, watched to their end: (server, gRPC address, {camera:
    (its name, its StreamInfo)})."""
    tag = uuid.uuid4().hex[:6]
    names = {cam: f"{cam}-{tag}" for cam in CLIPS}
    files = {cam: media.captioned_footage("bikes.mp4", [cap], seconds=secs, fps=5, size=(480, 204))
             for cam, (secs, cap) in CLIPS.items()}
    cfg = tmp_path_factory.mktemp("cfg") / "vigil.toml"
    cfg.write_text("".join(f'[[cameras]]\nname = "{names[c]}"\nsource = "{files[c]}"\nfps = {FPS}\n'
                           f"clip_frames = {CLIP}\n\n" for c in CLIPS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIGIL_CONFIG", str(cfg))
        srv, addr = module_server(frame_index=True, http_port=-1, auth_token=TOKEN)
    with Client(addr, token=TOKEN) as c:
        def done():
            infos = {cam: c.describe(names[cam]) for cam in CLIPS}
            return infos if all(state_name(i.state) == "finished" for i in infos.values()) else None
        infos = wait_for(done, 240, "both cameras watched to their end")
    return srv, addr, {cam: (names[cam], infos[cam]) for cam in CLIPS}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 240))


def stdio_params(addr: str) -> StdioServerParameters:
    env = {"VIGIL_AUTH_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    return StdioServerParameters(command=sys.executable, args=["-m", "services.cli", "mcp", "--server", addr],
                                 env=env, cwd=str(REPO))


def http_transport(srv, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return streamable_http_client(f"http://127.0.0.1:{srv.http_port}/mcp",
                                  http_client=httpx2.AsyncClient(headers=headers, timeout=120))


async def exercise(server, cams, report: bool = False) -> dict:
    """What an agent does: list the tools and streams, search across cameras, ask one camera about a window and
    several cameras about the gate, get a keyframe; two refused calls; a report (`report`). What came back, for
    the test to check."""
    gate, dock = cams["gate"][0], cams["dock"][0]
    got = {}
    async with McpClient(server, read_timeout_seconds=120) as mcp:
        got["tools"] = await mcp.list_tools()
        got["streams"] = await mcp.call_tool("list_streams", {})
        got["search"] = await mcp.call_tool("search", {"question": TRUCK, "top_k": 3})
        got["ask"] = await mcp.call_tool("ask", {"camera": dock, "question": TRUCK, "start_s": 12, "end_s": 18,
                                                 "top_k": 2})
        got["ask_cameras"] = await mcp.call_tool("ask_cameras", {
            "question": "When did the sign say that gate seven was closed?", "cameras": [dock, gate]})
        got["frame"] = await mcp.call_tool("keyframe", {"camera": gate, "time_s": 5.0})
        got["no_frame"] = await mcp.call_tool("keyframe", {"camera": gate, "time_s": 500.0})
        got["missing"] = await mcp.call_tool("ask", {"camera": f"nosuch-{uuid.uuid4().hex[:6]}", "question": "?"})
        got["empty"] = await mcp.call_tool("ask", {"camera": dock, "question": "what?", "start_s": 500, "end_s": 600})
        got["two_windows"] = await mcp.call_tool("search", {"question": TRUCK, "start_s": 0, "when": "last night"})
        if report:
            got["report"] = await mcp.call_tool("report", {"cameras": [gate, dock], "detail": 2})
            got["summary"] = await mcp.call_tool("summarize", {"camera": gate, "start_s": 0, "end_s": 8,
                                                               "detail": 2})
    return got


def ok(result):
    assert not result.is_error, result.content
    return result.structured_content


def check(got: dict, cams) -> None:
    (gate, gate_info), (dock, dock_info) = cams["gate"], cams["dock"]
    tools = {t.name: t for t in got["tools"].tools}
    assert TOOLS <= set(tools)
    for name in TOOLS:  # typed inputs, structured outputs
        assert tools[name].input_schema["type"] == "object" and tools[name].output_schema is not None, name
    assert tools["ask"].input_schema["required"] == ["camera", "question"]

    by_id = {s["stream_id"]: s for s in ok(got["streams"])["streams"]}
    for _, info in cams.values():
        s = by_id[info.stream_id]
        assert s["state"] == "finished" and s["chunks"] == info.chunks and s["kind"] == "file"
        assert abs(s["duration_s"] - info.duration_s) < 1e-6

    moments = ok(got["search"])["moments"]  # the dock's text, found across both cameras
    top = moments[0]
    assert top["camera"] == dock and top["stream_id"] == dock_info.stream_id and top["rank"] == 1, moments
    assert top["start_s"] < 18.0 and top["end_s"] > 12.0 and "TRUCK22" in top["on_screen_text"].replace(" ", "")
    assert "ocr" in {x["signal"] for x in top["signals"]} and top["wall_start_unix"] is None  # a file

    a = ok(got["ask"])
    assert a["camera"] == dock and a["searched_window"] == {"start_s": 12.0, "end_s": 18.0}
    assert a["window_source"] == "request" and a["random_weights"] is True
    assert a["evidence"] and len(a["evidence"]) <= 2
    for e in a["evidence"]:  # chunks of the asked window only
        assert e["start_s"] < 18.0 and e["end_s"] > 12.0 and e["end_s"] - e["start_s"] <= CLIP / FPS + 1e-6, e
        assert e["signals"] and e["rank"] >= 1

    across = ok(got["ask_cameras"])  # every evidence moment names its camera; the gate's text is found
    assert across["evidence"] and {m["camera"] for m in across["evidence"]} <= {gate, dock}
    assert {c["camera"] for c in across["cameras"]} <= {gate, dock} and across["answer"]
    assert any(m["camera"] == gate and m["start_s"] < 10.0 and m["end_s"] > 4.0 for m in across["evidence"])

    k = ok(got["frame"])
    assert k["camera"] == gate and k["start_s"] <= 5.0 < k["end_s"] <= gate_info.duration_s + 1e-6
    (image,) = [c for c in got["frame"].content if c.type == "image"]
    assert image.mime_type == "image/jpeg"
    jpeg = base64.b64decode(image.data)
    assert jpeg[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(jpeg)).format == "JPEG"

    assert got["no_frame"].is_error and "INVALID_ARGUMENT" in got["no_frame"].content[0].text  # past its footage
    assert got["missing"].is_error and "NOT_FOUND" in got["missing"].content[0].text
    assert got["empty"].is_error and "INVALID_ARGUMENT" in got["empty"].content[0].text
    assert got["two_windows"].is_error and "at most one window" in got["two_windows"].content[0].text


@pytest.mark.timeout(300)
def test_stdio_the_cli_command_serves_the_tools(vigil):
    _, addr, cams = vigil
    check(run(exercise(stdio_params(addr), cams)), cams)


@pytest.mark.timeout(300)
def test_stdio_a_wrong_token_is_a_tool_error(vigil):
    _, addr, _ = vigil
    params = stdio_params(addr)
    params.env["VIGIL_AUTH_TOKEN"] = "not-the-token"

    async def go():
        async with McpClient(params, read_timeout_seconds=60) as mcp:
            return await mcp.call_tool("list_streams", {})
    got = run(go())
    assert got.is_error and "UNAUTHENTICATED" in got.content[0].text


@pytest.mark.timeout(300)
def test_http_mcp_endpoint_serves_the_tools_behind_the_token(vigil):
    srv, _, cams = vigil
    got = run(exercise(http_transport(srv), cams, report=True))
    check(got, cams)
    r = ok(got["report"])  # every camera, in the order asked, its segments in time order
    assert [c["camera"] for c in r["cameras"]] == [cams["gate"][0], cams["dock"][0]] and r["overview"]
    for c in r["cameras"]:
        assert c["chunks"] > 0 and c["segments"]
        starts = [g["start_s"] for g in c["segments"]]
        assert starts == sorted(starts) and all(g["end_s"] > g["start_s"] for g in c["segments"])
    summary = ok(got["summary"])  # one camera's window: segments in order inside it
    assert summary["camera"] == cams["gate"][0] and summary["overview"] and summary["segments"]
    assert summary["window"]["start_s"] == 0.0 and summary["window"]["end_s"] <= 8.0 + 1e-6
    segs = summary["segments"]
    assert [g["index"] for g in segs] == list(range(1, len(segs) + 1)) and segs[-1]["end_s"] <= 8.0 + 1e-6
    assert all(a["end_s"] <= b["start_s"] + 1e-6 for a, b in zip(segs, segs[1:]))


def test_http_mcp_endpoint_refuses_a_missing_or_wrong_token(vigil):
    srv, _, _ = vigil
    url = f"http://127.0.0.1:{srv.http_port}/mcp"
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx2.post(url, json=hello, headers={**accept, **headers}, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    r = httpx2.post(url, json=hello, headers={**accept, "Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text

    async def go():
        async with McpClient(http_transport(srv, token=None)) as mcp:
            await mcp.list_tools()
    with pytest.raises(BaseExceptionGroup) as err:  # the SDK's client cannot even initialize (the 401 above)
        run(go())
    assert err.group_contains(MCPError, match="error response")


def test_stdio_with_no_server_there_the_tools_say_so():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"

    async def go():
        async with McpClient(stdio_params(addr), read_timeout_seconds=60) as mcp:
            return await mcp.list_tools(), await mcp.call_tool("list_streams", {})
    tools, got = run(go())
    assert TOOLS <= {t.name for t in tools.tools}  # the server starts without a vigil server to talk to
    assert got.is_error and f"no vigil server answered at {addr}" in got.content[0].text


@pytest.mark.timeout(300)
def test_watch_alerts_returns_what_a_cameras_rule_fires_while_it_waits(make_server):
    """A camera whose text rule matches 52 s into its clip, watched over HTTP from the server's start: the one
    firing comes back with its rule, camera and chunk, and the watch returns when the stream ends."""
    name = f"quay-{uuid.uuid4().hex[:6]}"
    footage = media.captioned_footage("bikes.mp4", [(52.0, 58.0, "TRUCK 22 ARRIVED")], seconds=60, fps=5,
                                      size=(480, 204))
    cameras = [{"name": name, "source": str(footage), "fps": FPS, "clip_frames": CLIP,
                "alerts": [{"name": "truck", "on_screen_text": "TRUCK 22 ARRIVED"}]}]
    srv, addr = make_server(frame_index=True, http_port=-1, auth_token=TOKEN, cameras=cameras)

    async def go():
        async with McpClient(http_transport(srv), read_timeout_seconds=200) as mcp:
            return await mcp.call_tool("watch_alerts", {"cameras": [name], "seconds": 120})
    got = ok(run(go()))
    with Client(addr, token=TOKEN) as c:
        info = c.describe(name)
    assert got["watched"] == [info.stream_id] and got["ended"] is True and state_name(info.state) == "finished"
    (alert,) = got["alerts"]
    assert alert["rule"] == "truck" and alert["kind"] == "on_screen_text" and alert["camera"] == name
    assert alert["stream_id"] == info.stream_id and alert["start_s"] < 58.0 and alert["end_s"] > 52.0
    assert alert["chunk_id"] is not None and "TRUCK22" in alert["matched_text"].replace(" ", "").upper()
