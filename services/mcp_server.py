"""vigil for agents: an MCP server (the official `mcp` SDK's MCPServer) whose tools call a vigil server's gRPC API
through `services.client.Client`, the same code path whichever transport the agent speaks:

* stdio: `vigil mcp --server HOST:PORT` (services/cli/mcp.py) runs `build_server(Client(...))` on stdin/stdout;
* streamable HTTP at `/mcp` on the HTTP port (services/http/app.py mounts `HttpEndpoint`), behind the same bearer
  token as the rest of the HTTP side; its client reaches the gRPC server of the same process through a private
  unix socket (`HttpEndpoint.attach` adds it), so TLS and mutual TLS on the public port do not get in the way.

Every tool has typed arguments and returns a pydantic model (the SDK publishes its JSON schema as the tool's
outputSchema and sends it as structuredContent); `keyframe` returns the JPEG as image content next to its
structured description. A refused call (unknown camera, empty window, no token) is a tool error naming the gRPC
status and the server's message.

Where the gRPC API has no call of its own, a tool uses what it has: `keyframe` reads the chunk at a moment through
Ask (a one-instant window, one answer token); `watch_alerts` follows WatchStream, so it sees the alerts that fire
while it waits, not earlier ones (past alerts are in the HTTP API and MQTT only).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Annotated, Literal

import grpc
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import BaseModel, Field

from services.client import Client, as_json, state_name
from services.wire import ingest_pb2

NAME = "vigil"
INSTRUCTIONS = (
    "vigil watches video streams (cameras, files) and keeps a bounded memory of each. `list_streams` names them "
    "(a stream id, or a camera's name from the server's config, is what the other tools take as `camera`). "
    "`ask` answers a question about one camera's past footage with evidence (media-time ranges in seconds from "
    "the stream's start); `summarize` describes a window; `keyframe` shows the frame stored at a moment. Across "
    "cameras: `search` finds moments ranked over all of them, `ask_cameras` answers over the best ones, `report` "
    "tells what happened in a time range. `watch_alerts` waits for the cameras' alert rules to fire.")
KEYFRAME_QUESTION = "What is shown here?"
MAX_WATCH_S = 120.0  # watch_alerts: the longest wait
MAX_WATCHED = 64  # watch_alerts: streams followed at once (a thread and a WatchStream call each)
LIVE_STATES = ("starting", "running", "reconnecting")
MAX_REQUEST_BYTES = 1024 * 1024  # one JSON-RPC message to /mcp: the tools' arguments are a few short strings

Camera = Annotated[str, Field(min_length=1, max_length=128,
                              description="a stream id or a camera's name (list_streams names them)")]
StartS = Annotated[float | None, Field(None, ge=0, description="window start, media seconds from the stream's "
                                                                "start (unset: from the beginning)")]
EndS = Annotated[float | None, Field(None, gt=0, description="window end, media seconds (unset: to the end)")]
Cameras = Annotated[tuple[Annotated[str, Field(min_length=1, max_length=128)], ...], Field(
    (), max_length=256, description="camera names or stream ids (none: every camera, or the group's)")]
Group = Annotated[str, Field("", max_length=128, description="a camera group of the server's config file")]
SinceUnix = Annotated[float | None, Field(None, ge=0, description=(
    "wall-clock window start, Unix seconds (live cameras only have wall-clock times)"))]
UntilUnix = Annotated[float | None, Field(None, ge=0, description="wall-clock window end, Unix seconds (unset: now)")]
When = Annotated[str, Field("", max_length=200, description=(
    'the window in words, read in the server\'s timezone: "since 22:00", "last night", "between 18:00 and 06:00"'))]


# ---- what the tools return ---------------------------------------------------------------------------------------

class StreamSummary(BaseModel):
    """One stream and its state now."""
    stream_id: str
    source: str = Field(description="a file path, an rtsp:// URL (credentials masked) or push:<name>")
    kind: str = Field(description="file, live or push")
    state: str = Field(description="starting, running, reconnecting, finished, stopped or failed")
    error: str = ""
    chunks: int = Field(description="memory chunks stored")
    duration_s: float = Field(description="media seconds covered by stored chunks")
    source_duration_s: float = Field(description="the source's own length, 0 if unknown (live)")
    lag_s: float = Field(description="age of the newest stored frame when it was stored (live)")
    gaps: int = Field(description="stretches with no footage")
    scene_cuts: int
    model: str
    random_weights: bool = Field(description="true: the model has random weights and its answers are noise")
    created_unix: float
    updated_unix: float


class StreamList(BaseModel):
    streams: list[StreamSummary]


class Window(BaseModel):
    start_s: float
    end_s: float | None = Field(description="null: to the end of the stream")


class SignalHit(BaseModel):
    signal: str = Field(description="kv, ocr, labels, image or mean")
    rank: int
    score: float


class EvidenceItem(BaseModel):
    """A stored chunk the answer was generated on."""
    chunk_id: int
    start_s: float
    end_s: float
    keyframe_s: float = Field(description="media time of its keyframe (the `keyframe` tool shows it)")
    score: float = Field(description="fused retrieval score")
    rank: int = Field(description="1-based rank in the fused ranking")
    signals: list[SignalHit]
    on_screen_text: str
    labels: str


class AskResult(BaseModel):
    camera: str = Field(description="the stream id or camera name asked")
    question: str
    answer: str
    evidence: list[EvidenceItem] = Field(description="in time order")
    searched_window: Window
    window_source: str = Field(description="all, request or question (time words in it)")
    window_phrase: str = ""
    conversation_id: str = Field("", description="pass it back to continue the conversation")
    model: str
    random_weights: bool


class Segment(BaseModel):
    index: int
    start_s: float
    end_s: float
    summary: str
    on_screen_text: list[str]
    chunks: int


class SummaryResult(BaseModel):
    camera: str
    overview: str
    window: Window
    segments: list[Segment]
    model: str
    random_weights: bool


class Keyframe(BaseModel):
    camera: str
    chunk_id: int
    start_s: float
    end_s: float
    keyframe_s: float
    on_screen_text: str
    mime_type: Literal["image/jpeg"] = "image/jpeg"


class Moment(BaseModel):
    """A found moment: one stored chunk of one camera."""
    camera: str = Field(description="the camera's name (\"\" for a stream with none)")
    stream_id: str
    chunk_id: int
    start_s: float = Field(description="media time, seconds from the stream's start")
    end_s: float
    wall_start_unix: float | None = Field(description="wall-clock time (live sources; null for files)")
    wall_end_unix: float | None
    score: float = Field(description="fused score across cameras (higher is better)")
    rank: int = Field(description="1-based rank across all cameras")
    signals: list[SignalHit]
    on_screen_text: str
    labels: str
    keyframe_s: float = Field(description="media time of its keyframe (the `keyframe` tool shows it)")


class SearchedStream(BaseModel):
    camera: str
    stream_id: str
    chunks: int = Field(description="its chunks inside the window")
    searched_window: Window
    skipped: str = Field(description="why it was not searched (\"\" when it was)")


class SearchResult(BaseModel):
    question: str
    moments: list[Moment] = Field(description="best first")
    streams: list[SearchedStream]
    window_phrase: str = Field(description="the time words that set the window, if any")


class CameraAnswer(BaseModel):
    camera: str
    stream_id: str
    answer: str = Field(description="what the model said on this camera's memory")


class AskCamerasResult(BaseModel):
    question: str
    answer: str = Field(description="the combined answer, each camera's part prefixed with its name")
    cameras: list[CameraAnswer]
    evidence: list[Moment] = Field(description="the moments the answer was generated on, best first")
    conversation_id: str = Field("", description="pass it back to continue the conversation")
    model: str
    random_weights: bool


class ReportSegment(BaseModel):
    start_s: float
    end_s: float
    wall_start_unix: float | None
    wall_end_unix: float | None
    summary: str
    activity: list[str] = Field(description="why it was kept: scene cuts, alerts, novelty, text")
    on_screen_text: list[str]


class CameraReport(BaseModel):
    camera: str
    stream_id: str
    summary: str
    chunks: int = Field(description="its stored chunks in the window (0: nothing to report)")
    window: Window | None
    segments: list[ReportSegment] = Field(description="in time order")


class ReportResult(BaseModel):
    overview: str
    cameras: list[CameraReport] = Field(description="in the selector's order")
    window_phrase: str
    model: str
    random_weights: bool



class AlertItem(BaseModel):
    """A camera's alert rule fired (the config file's [[cameras.alerts]]; also published on MQTT)."""
    camera: str
    stream_id: str
    rule: str
    kind: str = Field(description="on_screen_text, query, cuts or feed")
    start_s: float = Field(description="media time range of the chunk that fired it")
    end_s: float
    wall_start_unix: float | None = Field(description="wall-clock time (live sources; null for files)")
    matched_text: str = Field(description="the text read, what the query met, the cut count, or down/up")
    score: float
    chunk_id: int | None = Field(description="the chunk whose keyframe shows it (null for feed alerts)")
    keyframe_s: float
    time_unix: float = Field(description="when the server recorded it")


class AlertWatch(BaseModel):
    watched: list[str] = Field(description="the stream ids watched")
    waited_s: float
    ended: bool = Field(description="every watched stream ended (finished, stopped or failed) before the time was up")
    alerts: list[AlertItem] = Field(description="in the order they fired")


# ---- messages -> models ------------------------------------------------------------------------------------------

def stream_summary(info) -> StreamSummary:
    j = as_json(info)
    return StreamSummary(stream_id=info.stream_id, source=info.source, kind=j["kind"], state=state_name(info.state),
                         error=info.error, chunks=info.chunks, duration_s=info.duration_s,
                         source_duration_s=info.source_duration_s, lag_s=info.lag_s, gaps=len(info.gaps),
                         scene_cuts=info.scene_cuts, model=info.model, random_weights=info.random_weights,
                         created_unix=info.created_unix, updated_unix=info.updated_unix)


def evidence_item(e) -> EvidenceItem:
    j = as_json(e)
    return EvidenceItem(chunk_id=e.chunk_id, start_s=e.start_s, end_s=e.end_s, keyframe_s=e.keyframe_s,
                        score=j["score"], rank=e.rank, on_screen_text=e.on_screen_text, labels=e.labels,
                        signals=[SignalHit(**s) for s in j["signals"]])


def window_model(w) -> Window:
    j = as_json(w)
    return Window(start_s=j["start_s"], end_s=j["end_s"])


def moment(m) -> Moment:
    j = as_json(m)
    return Moment(camera=m.camera, stream_id=m.stream_id, chunk_id=m.chunk_id, start_s=m.start_s, end_s=m.end_s,
                  wall_start_unix=j["wall_start_unix"], wall_end_unix=j["wall_end_unix"], score=j["score"],
                  rank=m.rank, signals=[SignalHit(**x) for x in j["signals"]], on_screen_text=m.on_screen_text,
                  labels=m.labels, keyframe_s=m.keyframe_s)


def searched_stream(s) -> SearchedStream:
    return SearchedStream(camera=s.camera, stream_id=s.stream_id, chunks=s.chunks,
                          searched_window=window_model(s.searched_window), skipped=s.skipped)


def alert_item(ev) -> AlertItem:
    a, j = ev.alert, as_json(ev.alert)
    return AlertItem(camera=a.camera, stream_id=ev.info.stream_id, rule=a.rule, kind=a.kind, start_s=a.start_s,
                     end_s=a.end_s, wall_start_unix=j["wall_start_unix"], matched_text=a.matched_text,
                     score=a.score, chunk_id=j["chunk_id"], keyframe_s=a.keyframe_s, time_unix=ev.time_unix)


def _wall(v: float) -> float | None:
    return v or None


def _window(start_s: float | None, end_s: float | None) -> tuple[float, float] | None:
    return None if start_s is None and end_s is None else (start_s or 0.0, end_s or 0.0)


def _refused(exc: grpc.RpcError, address: str = "") -> ToolError:
    """A failed call as the tool's error: its status and the server's message (which says what to change)."""
    details = exc.details() or "no details"
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
        return ToolError(f"UNAVAILABLE: no vigil server answered at {address}: is `vigil serve` running there? "
                         f"({details.rsplit(': ', 1)[-1][:160]})")
    return ToolError(f"{exc.code().name}: {details}")


# ---- the server --------------------------------------------------------------------------------------------------

def build_server(client: Client) -> MCPServer:
    """An MCPServer whose tools call the vigil server `client` talks to (its token and TLS are the client's)."""
    mcp = MCPServer(NAME, instructions=INSTRUCTIONS, log_level="WARNING")

    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise _refused(exc, client.address) from None

    @mcp.tool(title="List streams")
    def list_streams() -> StreamList:
        """Every stream (camera, file, push) the server keeps, with its state, how much footage its memory covers
        and whether it runs now."""
        return StreamList(streams=[stream_summary(i) for i in call(client.list)])

    @mcp.tool(title="Ask one camera")
    def ask(camera: Camera,
            question: Annotated[str, Field(min_length=1, max_length=2000, description=(
                "the question; time words in it (\"in the first minute\", \"after 1:30\") narrow the search "
                "unless a window is given"))],
            start_s: StartS = None, end_s: EndS = None,
            top_k: Annotated[int, Field(0, ge=0, le=64, description="evidence chunks (0: the server's default)")] = 0,
            conversation_id: Annotated[str, Field("", max_length=128, description=(
                "continue this conversation (from an earlier answer)"))] = "",
            new_conversation: Annotated[bool, Field(False, description=(
                "start a conversation; its id comes back in the answer"))] = False) -> AskResult:
        """Ask a question about one camera's past footage. The answer comes with its evidence: the stored chunks
        (media-time ranges, on-screen text, which retrieval signal found them) the model read."""
        r = call(client.ask, camera, question, top_k=top_k, window=_window(start_s, end_s),
                 conversation_id=conversation_id, new_conversation=new_conversation)
        j = as_json(r)
        return AskResult(camera=camera, question=question, answer=r.answer,
                         evidence=[evidence_item(e) for e in r.evidence],
                         searched_window=window_model(r.searched_window),
                         window_source=j["searched_window"]["source"], window_phrase=r.window_phrase,
                         conversation_id=r.conversation_id, model=r.model, random_weights=r.random_weights)

    @mcp.tool(title="Summarize a window")
    def summarize(camera: Camera, start_s: StartS = None, end_s: EndS = None,
                  detail: Annotated[int, Field(0, ge=0, le=64, description=(
                      "segments to aim for (0: the server's default)"))] = 0) -> SummaryResult:
        """A time-stamped summary of one camera's window (unset: all of it): segments in time order, each
        summarised from its stored chunks, and one overview."""
        segments, done, model, random_weights = [], None, "", False
        for m in call(lambda: list(client.summarize(camera, window=_window(start_s, end_s), detail=detail))):
            model, random_weights = m.model or model, m.random_weights or random_weights
            kind = m.WhichOneof("msg")
            if kind == "segment":
                s = m.segment
                segments.append(Segment(index=s.index, start_s=s.start_s, end_s=s.end_s, summary=s.summary,
                                        on_screen_text=list(s.on_screen_text), chunks=s.chunks))
            elif kind == "done":
                done = m.done
        if done is None:
            raise ToolError("the summary ended before its overview (the server stopped?)")
        return SummaryResult(camera=camera, overview=done.overview, window=window_model(done.window),
                             segments=segments, model=model, random_weights=random_weights)

    @mcp.tool(title="Keyframe at a moment")
    def keyframe(camera: Camera,
                 time_s: Annotated[float, Field(ge=0, description="media seconds from the stream's start")]
                 ) -> Annotated[CallToolResult, Keyframe]:
        """The keyframe (JPEG) of the stored chunk that covers `time_s` (else the nearest one after it), as an
        image, with the chunk's time range and on-screen text."""
        # the gRPC API serves keyframes with evidence: the chunk overlapping an instant from time_s (else, past the
        # footage or in a gap, the earliest of those after it the search finds), one answer token
        kw = dict(max_new_tokens=1, include_keyframes=True)
        try:
            r = client.ask(camera, KEYFRAME_QUESTION, top_k=1, window=(time_s, time_s + 1e-3), **kw)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise _refused(exc, client.address) from None
            r = call(client.ask, camera, KEYFRAME_QUESTION, window=(time_s, 0.0), **kw)
        found = [e for e in r.evidence if e.keyframe_jpeg]
        if not found:
            raise ToolError(f"no stored keyframe of {camera} at or after {time_s:g} s")
        e = min(found, key=lambda e: (not (e.start_s <= time_s < e.end_s), e.start_s))
        info = Keyframe(camera=camera, chunk_id=e.chunk_id, start_s=e.start_s, end_s=e.end_s,
                        keyframe_s=e.keyframe_s, on_screen_text=e.on_screen_text)
        image = ImageContent(type="image", data=base64.b64encode(e.keyframe_jpeg).decode(), mime_type="image/jpeg")
        return CallToolResult(
            content=[image, TextContent(type="text", text=info.model_dump_json())],
            structured_content=info.model_dump(mode="json"))

    @mcp.tool(title="Watch for alerts")
    def watch_alerts(cameras: Cameras = (),
                     seconds: Annotated[float, Field(30.0, gt=0, le=MAX_WATCH_S, description=(
                         f"how long to wait (at most {MAX_WATCH_S:g} s)"))] = 30.0) -> AlertWatch:
        """Wait for the cameras' alert rules to fire: every alert that fires on the given cameras (none: every
        running stream) within `seconds`, in order; it returns early once every watched stream has ended."""
        if cameras:
            ids = [call(client.describe, cam).stream_id for cam in cameras]
        else:
            ids = [i.stream_id for i in call(client.list) if state_name(i.state) in LIVE_STATES]
        ids = list(dict.fromkeys(ids))[:MAX_WATCHED]
        found: list[tuple[float, int, AlertItem]] = []
        failed: list[grpc.RpcError] = []
        lock = threading.Lock()

        def follow(sid: str) -> None:  # WatchStream until the stream ends or the deadline cuts the call
            try:
                for ev in client.watch(sid, timeout=seconds):
                    if ev.kind == ingest_pb2.StreamEvent.KIND_ALERT:
                        with lock:
                            found.append((ev.time_unix, len(found), alert_item(ev)))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    failed.append(exc)

        t0 = time.monotonic()
        threads = [threading.Thread(target=follow, args=(sid,), daemon=True, name="vigil-mcp-watch") for sid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 10)
        if failed:
            raise _refused(failed[0], client.address)
        waited = time.monotonic() - t0
        return AlertWatch(watched=ids, waited_s=round(waited, 3), ended=waited < seconds,
                          alerts=[a for *_, a in sorted(found, key=lambda x: x[:2])])

    # ---- across cameras (QAService.Search, AskAcross, Report) -------------------------------------------------

    def across(cameras, group, start_s, end_s, since_unix, until_unix, when) -> dict:
        given = [w for w, v in (("start_s/end_s", _window(start_s, end_s)), ("when", when),
                                ("since_unix/until_unix", since_unix is not None or until_unix is not None)) if v]
        if len(given) > 1:
            raise ToolError(f"give at most one window: {' or '.join(given)}")
        return dict(streams=list(cameras), group=group, window=_window(start_s, end_s), since=since_unix,
                    until=until_unix, when=when)

    @mcp.tool(title="Search across cameras")
    def search(question: Annotated[str, Field(min_length=1, max_length=2000, description="what to find")],
               cameras: Cameras = (), group: Group = "", start_s: StartS = None, end_s: EndS = None,
               since_unix: SinceUnix = None, until_unix: UntilUnix = None, when: When = "",
               top_k: Annotated[int, Field(0, ge=0, le=100, description=(
                   "moments to return across all cameras (0: the server's default)"))] = 0) -> SearchResult:
        """Find moments across cameras, ranked together (scores compare across cameras): each with its camera,
        media and wall-clock time range, score, the signals that found it and the text read on screen."""
        r = call(client.search, question, top_k=top_k,
                 **across(cameras, group, start_s, end_s, since_unix, until_unix, when))
        return SearchResult(question=question, moments=[moment(m) for m in r.moments],
                            streams=[searched_stream(x) for x in r.streams], window_phrase=r.window_phrase)

    @mcp.tool(title="Ask several cameras")
    def ask_cameras(question: Annotated[str, Field(min_length=1, max_length=2000, description="the question")],
                    cameras: Cameras = (), group: Group = "", start_s: StartS = None, end_s: EndS = None,
                    since_unix: SinceUnix = None, until_unix: UntilUnix = None, when: When = "",
                    max_cameras: Annotated[int, Field(0, ge=0, le=16, description=(
                        "cameras the answer is generated on, best first (0: the server's default)"))] = 0,
                    conversation_id: Annotated[str, Field("", max_length=128, description=(
                        "continue this conversation (from an earlier answer)"))] = "",
                    new_conversation: Annotated[bool, Field(False, description=(
                        "start a conversation; its id comes back in the answer"))] = False) -> AskCamerasResult:
        """Ask a question over several cameras (all by default): the cameras whose footage fits it best are found
        first, then the answer is generated on their memories; each evidence moment names its camera."""
        r = call(client.ask_across, question, max_cameras=max_cameras, conversation_id=conversation_id,
                 new_conversation=new_conversation,
                 **across(cameras, group, start_s, end_s, since_unix, until_unix, when))
        return AskCamerasResult(question=question, answer=r.answer, evidence=[moment(m) for m in r.evidence],
                                cameras=[CameraAnswer(camera=c.camera, stream_id=c.stream_id, answer=c.answer)
                                         for c in r.cameras],
                                conversation_id=r.conversation_id, model=r.model, random_weights=r.random_weights)

    @mcp.tool(title="Report across cameras")
    def report(cameras: Cameras = (), group: Group = "", start_s: StartS = None, end_s: EndS = None,
               since_unix: SinceUnix = None, until_unix: UntilUnix = None, when: When = "",
               detail: Annotated[int, Field(0, ge=0, le=64, description=(
                   "segments per camera to aim for (0: the server's default)"))] = 0) -> ReportResult:
        """What happened in a time range ("between 18:00 and 06:00", "last night") across cameras: per camera its
        segments with activity (scene cuts, alerts, novelty, text) summarised, then one overview."""
        reports, segments, done, model, random_weights = [], {}, None, "", False
        msgs = call(lambda: list(client.report(detail=detail, **across(cameras, group, start_s, end_s, since_unix,
                                                                         until_unix, when))))
        for m in msgs:
            model, random_weights = m.model or model, m.random_weights or random_weights
            kind = m.WhichOneof("msg")
            if kind == "segment":
                g = m.segment
                segments.setdefault(g.stream_id, []).append(ReportSegment(
                    start_s=g.segment.start_s, end_s=g.segment.end_s, wall_start_unix=_wall(g.wall_start_unix),
                    wall_end_unix=_wall(g.wall_end_unix), summary=g.segment.summary, activity=list(g.activity),
                    on_screen_text=list(g.segment.on_screen_text)))
            elif kind == "camera":
                c = m.camera
                reports.append(CameraReport(camera=c.camera, stream_id=c.stream_id, summary=c.summary,
                                            chunks=c.chunks, window=window_model(c.window) if c.chunks else None,
                                            segments=segments.pop(c.stream_id, [])))
            elif kind == "done":
                done = m.done
        if done is None:
            raise ToolError("the report ended before its overview (the server stopped?)")
        return ReportResult(overview=done.overview, cameras=reports, window_phrase=done.window_phrase, model=model,
                            random_weights=random_weights)

    return mcp


def run_stdio(client: Client) -> None:
    """Serve `build_server(client)` on stdin/stdout until the agent closes them (`vigil mcp`)."""
    build_server(client).run("stdio")


# ---- streamable HTTP at /mcp on the HTTP port --------------------------------------------------------------------

class HttpEndpoint:
    """The ASGI app of `/mcp` (streamable HTTP). Its tools reach the gRPC server of this process through a unix
    socket in a private folder (mode 0700), with the server's token like any client; the HTTP side's bearer token
    guards the endpoint itself (services/http/app.py). uvicorn runs without lifespan events, so the SDK's session
    manager starts at the first request and stops at `aclose` (stateless: no session outlives its request)."""

    def __init__(self, target: str, token: str | None, host: str, cleanup: Callable[[], None] = lambda: None) -> None:
        self.target = target
        self.client = Client(target, token=token)
        self._mcp = build_server(self.client)
        # DNS-rebinding protection (Host and Origin checked) when the HTTP side listens on loopback only
        self._app = self._mcp.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, host=host,
                                                  max_request_body_size=MAX_REQUEST_BYTES)
        self._cleanup = cleanup
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @classmethod
    def attach(cls, grpc_server, token: str | None, host: str) -> "HttpEndpoint":
        """Add the private unix socket to `grpc_server` (before it starts) and make the endpoint that uses it."""
        folder = tempfile.mkdtemp(prefix="vigil-mcp-")  # 0700: only this user reaches the socket
        target = f"unix:{os.path.join(folder, 'grpc.sock')}"
        if grpc_server.add_insecure_port(target) == 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"cannot listen on {target} for the /mcp endpoint")
        return cls(target, token, host, cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))

    async def _running(self) -> None:
        if self._task is None:
            self._ready, self._stop = asyncio.Event(), asyncio.Event()

            async def run() -> None:
                async with self._mcp.session_manager.run():
                    self._ready.set()
                    await self._stop.wait()

            self._task = asyncio.create_task(run(), name="vigil-mcp-sessions")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            self._task.result()  # the manager failed to start: its error
            raise RuntimeError("the MCP session manager stopped")

    async def __call__(self, scope, receive, send) -> None:
        await self._running()
        await self._app(scope, receive, send)

    async def aclose(self) -> None:
        """Stop the session manager (requests in flight are cancelled), close the client, remove the socket."""
        if self._task is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        self.discard()

    def discard(self) -> None:
        """Close the client and remove the socket's folder (also when the server failed to start)."""
        self.client.close()
        self._cleanup()
