"""The MCP server (services/mcp_server.py) driven by the official SDK's own client: over stdio (`python -m
services.cli mcp --server ...` in a subprocess, as an agent's configuration runs it) and over streamable HTTP at
/mcp on a real server's HTTP port, behind its token. One server for the module, two named cameras on a real clip."""
from __future__ import annotations

import asyncio
import base64
import io
import os
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
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mcp-test-token-" + uuid.uuid4().hex[:8]
TOOLS = {"list_streams", "ask", "summarize", "keyframe"}


@pytest.fixture(scope="module")
def vigil(module_server, pattern_video):
    """A server with HTTP (-1: any free port) and a token, two named cameras on the 12 s test pattern (3 scenes),
    both watched to their end: (server, gRPC address, {camera name: its StreamInfo})."""
    tag = uuid.uuid4().hex[:6]
    yard, dock = f"yard-{tag}", f"dock-{tag}"
    cams = [{"name": yard, "source": str(pattern_video), "fps": 2}, {"name": dock, "source": str(pattern_video),
                                                                     "fps": 2, "clip_frames": 4}]
    srv, addr = module_server(http_port=-1, auth_token=TOKEN, cameras=cams)
    with Client(addr, token=TOKEN) as c:
        def done():
            infos = {n: c.describe(n) for n in (yard, dock)}
            return infos if all(state_name(i.state) == "finished" for i in infos.values()) else None
        infos = wait_for(done, 180, "both cameras watched to their end")
    return srv, addr, infos


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


async def exercise(server, infos) -> dict:
    """What an agent does: list the tools and streams, ask one camera about a window, get a keyframe; and one
    refused call. Returns what came back, for the test to check."""
    yard, dock = sorted(infos, key=lambda n: not n.startswith("yard"))
    async with McpClient(server, read_timeout_seconds=120) as mcp:
        tools = await mcp.list_tools()
        streams = await mcp.call_tool("list_streams", {})
        ask = await mcp.call_tool("ask", {"camera": dock, "question": "what colour is the screen?",
                                          "start_s": 4, "end_s": 8, "top_k": 2})
        frame = await mcp.call_tool("keyframe", {"camera": yard, "time_s": 9.0})
        missing = await mcp.call_tool("ask", {"camera": f"nosuch-{uuid.uuid4().hex[:6]}", "question": "anything?"})
        empty = await mcp.call_tool("ask", {"camera": dock, "question": "what?", "start_s": 500, "end_s": 600})
    return dict(tools=tools, streams=streams, ask=ask, frame=frame, missing=missing, empty=empty, yard=yard,
                dock=dock)


def check(got: dict, infos) -> None:
    tools = {t.name: t for t in got["tools"].tools}
    assert TOOLS <= set(tools)
    for name in TOOLS:  # typed inputs, structured outputs
        assert tools[name].input_schema["type"] == "object" and tools[name].output_schema is not None, name
    assert tools["ask"].input_schema["required"] == ["camera", "question"]

    streams = got["streams"].structured_content["streams"]
    by_id = {s["stream_id"]: s for s in streams}
    for name, info in infos.items():
        s = by_id[info.stream_id]
        assert s["state"] == "finished" and s["chunks"] == info.chunks and s["kind"] == "file"
        assert abs(s["duration_s"] - info.duration_s) < 1e-6

    ask = got["ask"]
    assert not ask.is_error, ask.content
    a = ask.structured_content
    assert a["camera"] == got["dock"] and a["searched_window"] == {"start_s": 4.0, "end_s": 8.0}
    assert a["window_source"] == "request" and a["random_weights"] is True
    assert a["evidence"] and len(a["evidence"]) <= 2
    for e in a["evidence"]:  # chunks of the asked window only: 4-frame clips at 2 fps are 2 s each
        assert e["start_s"] < 8.0 and e["end_s"] > 4.0 and e["end_s"] - e["start_s"] <= 2.0 + 1e-6, e
        assert e["signals"] and e["rank"] >= 1

    frame = got["frame"]
    assert not frame.is_error, frame.content
    k = frame.structured_content
    yard_info = infos[got["yard"]]
    assert k["camera"] == got["yard"] and k["start_s"] <= 9.0 < k["end_s"] <= yard_info.duration_s + 1e-6
    (image,) = [c for c in frame.content if c.type == "image"]
    assert image.mime_type == "image/jpeg"
    jpeg = base64.b64decode(image.data)
    assert jpeg[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(jpeg)).format == "JPEG"

    assert got["missing"].is_error and "NOT_FOUND" in got["missing"].content[0].text
    assert got["empty"].is_error and "INVALID_ARGUMENT" in got["empty"].content[0].text


@pytest.mark.timeout(300)
def test_stdio_the_cli_command_serves_the_tools(vigil):
    _, addr, infos = vigil
    check(run(exercise(stdio_params(addr), infos)), infos)


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
    srv, _, infos = vigil
    check(run(exercise(http_transport(srv), infos)), infos)


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
