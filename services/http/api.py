"""The JSON API under /api/v1 (read by the timeline page, and by anyone with the token).

Every handler resolves the stream like gRPC does (an id, or a camera's name: `grpc_api.stream_id`), runs its
store reads off the event loop (asyncio.to_thread), and maps domain errors through the one table
(`services.errors.status_for`) to an HTTP status, as JSON `{"error": {"code", "message"}}`. Questions and
summaries run on the question WorkQueue, like AskStream and Summarize, and answer as server-sent events.

What has a message in proto/vigil/v1 (a stream, a gap, an alert, an answer's evidence, a summary's parts) is
built as that message, as gRPC builds it, and rendered by `services.client.as_json`, the rendering `vigil ...
--json` prints: the same names and shapes. The API adds what only it has (a keyframe's URL, a camera's name);
a chunk record has no message and is rendered here (`chunk_json`).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from memory.errors import StreamNotFound, clipped
from memory.store import ChunkRecord, Gap, StreamRecord
from services import alerts, qa, summarize
from services.client import as_json
from services.errors import InvalidRequest, NotServedHere, public_message, status_for
from services.grpc_api import MAX_GAPS_SHOWN, QAServicer, alert_msg, gap_msg, speech_msgs, stream_id, stream_info
from services.metrics import STORE_DOWN
from services.runtime import Runtime
from services.streaming import worker_stream
from services.wire import qa_pb2
from services.work import WorkQueue
from streamer.redact import redact_text

log = logging.getLogger("vigil.http")
PREFIX = "/api/v1"
PAGE, MAX_PAGE = 200, 1000

# gRPC's codes as HTTP statuses (the mapping of google.rpc.Code to HTTP)
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.INTERNAL: 500,
}


def error_body(exc: BaseException) -> tuple[int, dict]:
    """(HTTP status, JSON body) of an error: the gRPC table's code, its message (credentials masked); anything
    the table does not know is INTERNAL (logged)."""
    code = status_for(exc)
    if code is None:
        log.error("HTTP API call failed", exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}: " \
                                                  f"{clipped(redact_text(str(exc)), 200)}"
    else:
        message = redact_text(public_message(exc))
    return HTTP_STATUS.get(code, 500), {"error": {"code": code.name, "message": message}}


def error_response(exc: BaseException) -> JSONResponse:
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status)


def stream_json(rec: StreamRecord, name: str | None = None, gaps: list[Gap] = ()) -> dict:
    """A stream as gRPC's StreamInfo renders (`gaps`: its last ones, as DescribeStream has them; a list of streams
    has none, as ListStreams), with its camera's name and whether it runs live."""
    return {**as_json(stream_info(rec, gaps, name)), "live": rec.live}


def keyframe_url(sid: str, cid: int, text_frame: bool = False) -> str:
    """A chunk's keyframe; `text_frame`: the frame its on-screen text was read in (where it stored one)."""
    return f"{PREFIX}/streams/{sid}/chunks/{cid}/keyframe.jpg" + ("?frame=text" if text_frame else "")


def with_keyframe_urls(sid: str, evidence: list[dict], text_frames: list[bool] | None = None) -> list[dict]:
    """Rendered Evidence messages, each with the URL of the frame it shows (the API serves no keyframe bytes
    inline); `text_frames`: which show their chunk's text frame (`qa.shows_text_frame`)."""
    for i, e in enumerate(evidence):
        e["keyframe_url"] = keyframe_url(sid, e["chunk_id"], bool(text_frames and text_frames[i]))
    return evidence


def chunk_json(sid: str, c: ChunkRecord) -> dict:
    return dict(chunk_id=c.chunk_id, start_s=c.start_s, end_s=c.end_s, keyframe_s=c.keyframe_s,
                wall_start_unix=c.wall_start, wall_end_unix=c.wall_end, keyframe_url=keyframe_url(sid, c.chunk_id),
                scene_cuts=c.cuts, on_screen_text=c.text, labels=c.labels, novelty=c.novelty, frames=c.frames,
                tokens=c.tokens, bytes=c.bytes, level=c.level, text_frame_s=c.text_frame_s,
                text_frame_url=keyframe_url(sid, c.chunk_id, True) if c.text_frame_s is not None else None,
                speech=[as_json(m) for m in speech_msgs(c)])


def gap_json(g: Gap) -> dict:
    return as_json(gap_msg(g))


def alert_json(sid: str, a: alerts.Alert, message: str = "") -> dict:
    """A stored alert as gRPC's Alert renders, with its keyframe's URL (null: none) and the event's message."""
    d = as_json(alert_msg(a))
    url = keyframe_url(sid, a.chunk_id) if a.chunk_id is not None else None
    return {**d, "keyframe_url": url, "message": redact_text(message)}


# the question work's items as AskStream's and Summarize's messages (built as services/grpc_api.py builds them)

def evidence_msg(p: qa.Prepared, spec) -> qa_pb2.AnswerEvidence:
    return qa_pb2.AnswerEvidence(
        evidence=QAServicer._evidence(p.hits, p.keyframes, p.ranks), gaps=[gap_msg(g) for g in p.gaps],
        **QAServicer._searched(p.window), model=spec.name, random_weights=spec.random_weights,
        conversation_id=p.conversation_id, history_turns=len(p.history), memory_tokens=p.memory.length)


def segment_msg(s: summarize.SegmentSummary) -> qa_pb2.SummarySegment:
    return qa_pb2.SummarySegment(
        index=s.index, segments=s.segments, start_s=s.start_s, end_s=s.end_s, summary=s.text,
        on_screen_text=list(s.on_screen), chunks=s.chunks,
        evidence=[qa_pb2.Evidence(chunk_id=c.chunk_id, start_s=c.start_s, end_s=c.end_s, keyframe_s=c.keyframe_s,
                                  keyframe_jpeg=jpg, on_screen_text=c.text, labels=c.labels, speech=speech_msgs(c))
                  for c, jpg in zip(s.read, s.keyframes)])


def summary_done_msg(d: summarize.Summary) -> qa_pb2.SummaryDone:
    return qa_pb2.SummaryDone(overview=d.overview, window=qa_pb2.TimeWindow(start_s=d.start_s, end_s=d.end_s),
                              segments=d.segments, latency_ms=d.latency_ms, gaps=[gap_msg(g) for g in d.gaps])


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, not {clipped(raw)}") from None
    if not lo <= v <= hi:
        raise InvalidRequest(f"{name} {v} is out of range [{lo}, {hi}]")
    return v


U32 = 2**32 - 1  # the gRPC fields these mirror are uint32


async def _body(request: Request) -> dict:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not JSON: {clipped(str(exc), 120)}") from None
    except RecursionError:  # thousands of nested arrays: the parser's own stack limit, not a server error
        raise InvalidRequest("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _window(body: dict) -> tuple[float, float] | None:
    w = body.get("window")
    if w is None:
        return None
    if not isinstance(w, dict):
        raise InvalidRequest('window must be {"start_s": number, "end_s": number (0 or absent: to the end)}')
    try:
        return qa.request_window(float(w.get("start_s") or 0.0), float(w.get("end_s") or 0.0))
    except (TypeError, ValueError):
        raise InvalidRequest("window bounds must be numbers") from None


def _typed(body: dict, name: str, kind: type, default, lo: int | None = None, hi: int | None = None):
    """A field of `kind`, within [lo, hi] when given (the ranges gRPC's unsigned fields have), else 400 naming it."""
    v = body.get(name, default)
    if kind is int and isinstance(v, bool) or not isinstance(v, kind):
        raise InvalidRequest(f"{name} must be {kind.__name__}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise InvalidRequest(f"{name} {v} is out of range: it must be {bounds}")
    return v


class Api:
    """The /api/v1 routes of one server (`work`: its question queue; None on an ingest-only server)."""

    def __init__(self, rt: Runtime, work: WorkQueue | None) -> None:
        self.rt, self.work = rt, work

    def routes(self) -> list[Route]:
        p = PREFIX
        return [
            Route(f"{p}/streams", self.streams),
            Route(f"{p}/streams/{{sid}}", self.stream),
            Route(f"{p}/streams/{{sid}}/chunks", self.chunks),
            Route(f"{p}/streams/{{sid}}/gaps", self.gaps),
            Route(f"{p}/streams/{{sid}}/alerts", self.alerts),
            Route(f"{p}/streams/{{sid}}/chunks/{{cid:int}}/keyframe.jpg", self.keyframe),
            Route(f"{p}/streams/{{sid}}/ask", self.ask, methods=["POST"]),
            Route(f"{p}/streams/{{sid}}/summarize", self.summarize, methods=["POST"]),
            *self.across_routes(),
        ]

    async def _call(self, fn, *args):
        try:
            return await asyncio.to_thread(fn, *args)
        except STORE_DOWN:
            self.rt.metrics.store_error("api")
            raise

    def _sid(self, request: Request) -> str:
        return stream_id(self.rt, request.path_params["sid"])  # blocking: called in a thread

    # ---- reads -------------------------------------------------------------------------------------------

    async def streams(self, request: Request) -> Response:
        """The streams in creation order, and this server's answering model (`random_weights`: its answer text is
        noise, as `vigil ask` notes)."""
        spec = self.rt.adapter.spec

        def read():
            names = {sid: name for name, sid in self.rt.store.names().items()}
            return {"streams": [stream_json(r, names.get(r.stream_id))
                                for r in sorted(self.rt.store.list_streams(), key=lambda r: r.created)],
                    "model": spec.name, "random_weights": spec.random_weights}
        try:
            return JSONResponse(await self._call(read))
        except Exception as exc:
            return error_response(exc)

    async def stream(self, request: Request) -> Response:
        def read():
            sid = self._sid(request)
            rec = self.rt.store.get_stream(sid)
            return stream_json(rec, self.rt.store.name_of(sid), self.rt.store.gaps(sid, last=MAX_GAPS_SHOWN))
        try:
            return JSONResponse(await self._call(read))
        except Exception as exc:
            return error_response(exc)

    async def chunks(self, request: Request) -> Response:
        """`after` (a chunk id, -1: from the first) and `limit`: a page in id (= time) order; `next_after` is
        the id to pass for the next page (null: this was the last)."""
        def read():
            after = _int(request, "after", -1, -1, 2**62)
            limit = _int(request, "limit", PAGE, 1, MAX_PAGE)
            sid = self._sid(request)
            self.rt.store.get_stream(sid)  # NOT_FOUND for an unknown stream
            records = self.rt.indexes.synced(sid).records
            ids = sorted(i for i in records if i > after)
            page = ids[:limit]
            return {"stream_id": sid, "chunks": [chunk_json(sid, records[i]) for i in page],
                    "next_after": page[-1] if len(ids) > limit else None, "total": len(records)}
        try:
            return JSONResponse(await self._call(read))
        except Exception as exc:
            return error_response(exc)

    async def gaps(self, request: Request) -> Response:
        def read():
            sid = self._sid(request)
            self.rt.store.get_stream(sid)
            return {"stream_id": sid, "gaps": [gap_json(g) for g in self.rt.store.gaps(sid)]}
        try:
            return JSONResponse(await self._call(read))
        except Exception as exc:
            return error_response(exc)

    async def alerts(self, request: Request) -> Response:
        """The stream's alerts from its event log (kind "alert"; the log is capped, so the oldest may be gone)."""
        def read():
            sid = self._sid(request)
            self.rt.store.get_stream(sid)
            found, last = [], "0-0"
            while events := self.rt.store.read_events(sid, last, None):
                for eid, body in events:
                    last = eid
                    if body.get("kind") == alerts.EVENT_KIND and "alert" in body:
                        found.append(alert_json(sid, alerts.Alert.from_json(body["alert"]), body.get("message", "")))
            return {"stream_id": sid, "alerts": found}
        try:
            return JSONResponse(await self._call(read))
        except Exception as exc:
            return error_response(exc)

    async def keyframe(self, request: Request) -> Response:
        """A chunk's keyframe JPEG; `?frame=text`: the frame its on-screen text was read in, where the chunk stored
        one (else its keyframe)."""
        def read():
            frame = request.query_params.get("frame", "key")
            if frame not in ("key", "text"):
                raise InvalidRequest(f'frame must be "key" or "text" (the frame its on-screen text was read in), '
                                     f"not {clipped(frame)}")
            sid = self._sid(request)
            cid = request.path_params["cid"]
            self.rt.store.get_stream(sid)
            jpeg = self.rt.store.keyframes(sid, [cid], frozenset({cid}) if frame == "text" else frozenset())[0]
            if not jpeg:
                raise StreamNotFound(f"stream {clipped(sid)} has no chunk {cid} (or it has no keyframe)")
            return jpeg
        try:
            jpeg = await self._call(read)
        except Exception as exc:
            return error_response(exc)
        # a chunk id is never reused for other footage within a stream (merges take new ids): cache it a while
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # ---- model work (server-sent events) -------------------------------------------------------------------

    def _queue(self) -> WorkQueue:
        if self.work is None:
            raise NotServedHere("this server runs the ingest role only; ask a QA server")
        return self.work

    async def _sse(self, items: AsyncIterator, encode, metered: bool) -> Response:
        """The first item is awaited before any byte is sent, so an error found before the work starts (a bad
        question, an unknown stream, a full queue) is a plain JSON error with its status; a later one is an
        `error` event."""
        question = self.rt.metrics.question() if metered else None
        if question is not None:
            question.__enter__()

        def finish(exc: BaseException | None) -> None:
            nonlocal question
            if question is not None:
                q, question = question, None
                q.__exit__(type(exc) if exc else None, exc, None)

        try:
            first = await anext(items)
        except StopAsyncIteration:
            finish(None)
            return Response(status_code=204)
        except Exception as exc:
            finish(exc)
            await items.aclose()
            return error_response(exc)

        async def body():
            failed: BaseException | None = None
            try:
                yield encode(first)
                async for item in items:
                    yield encode(item)
            except Exception as exc:  # after the first event: the status is sent already
                failed = exc
                status, err = error_body(exc)
                yield sse("error", {**err["error"], "status": status})
            except BaseException as exc:  # the client went away (cancelled)
                failed = exc
                raise
            finally:
                await items.aclose()
                finish(failed)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def ask(self, request: Request) -> Response:
        """Body: {"question", "top_k", "window": {"start_s", "end_s"}, "max_new_tokens", "signals",
        "conversation_id", "new_conversation"}. Events: `evidence` (once, first), `delta` (text pieces), `done`
        (the whole answer, equal to Ask's), or `error`."""
        try:
            body = await _body(request)
            question = _typed(body, "question", str, "")
            kwargs = dict(top_k=_typed(body, "top_k", int, 0, 0, U32), window=_window(body),
                          max_new_tokens=_typed(body, "max_new_tokens", int, 0, 0, U32),
                          signals=[str(x) for x in _typed(body, "signals", list, [])],
                          conversation_id=_typed(body, "conversation_id", str, ""),
                          new_conversation=_typed(body, "new_conversation", bool, False))
            work = self._queue()
            sid = await self._call(self._sid, request)
        except Exception as exc:
            return error_response(exc)
        spec = self.rt.adapter.spec

        def encode(item) -> bytes:
            if isinstance(item, str):
                return sse("delta", as_json(qa_pb2.AnswerDelta(text=item)))
            if isinstance(item, qa.Prepared):
                d = as_json(evidence_msg(item, spec))
                texts = [qa.shows_text_frame(h) for h in item.hits]
                return sse("evidence", {"stream_id": sid, **d, "evidence": with_keyframe_urls(sid, d["evidence"], texts)})
            return sse("done", as_json(qa_pb2.AnswerDone(answer=item.text, latency_ms=item.latency_ms,
                                                         memory_tokens=item.memory_tokens,
                                                         conversation_id=item.conversation_id)))

        items = worker_stream(work, qa.ask_streamed, self.rt, sid, question, **kwargs)
        return await self._sse(items, encode, metered=True)

    async def summarize(self, request: Request) -> Response:
        """Body: {"window": {"start_s", "end_s"}, "detail", "max_new_tokens"}. Events: `progress`, `segment`
        (each as it is done), `done` (the overview), or `error`."""
        try:
            body = await _body(request)
            window = _window(body)
            detail = _typed(body, "detail", int, 0, 0, U32)
            max_new = _typed(body, "max_new_tokens", int, 0, 0, U32)
            work = self._queue()
            sid = await self._call(self._sid, request)
        except Exception as exc:
            return error_response(exc)
        spec = self.rt.adapter.spec
        mark = dict(model=spec.name, random_weights=spec.random_weights)

        def encode(item) -> bytes:
            if isinstance(item, summarize.Progress):
                return sse("progress", as_json(qa_pb2.SummaryProgress(segment=item.segment, segments=item.segments,
                                                                      stage=item.stage)))
            if isinstance(item, summarize.SegmentSummary):
                d = as_json(segment_msg(item))
                return sse("segment", {**d, "evidence": with_keyframe_urls(sid, d["evidence"]), **mark})
            return sse("done", {**as_json(summary_done_msg(item)), **mark})

        items = worker_stream(work, summarize.summarize, self.rt, sid, window, detail, max_new, False)
        return await self._sse(items, encode, metered=False)

    # ---- across cameras: POST /api/v1/search, /api/v1/report (services/search.py, services/report.py) ----------
    # The body is the gRPC request message as JSON (SearchRequest, ReportRequest: the same field names), e.g.
    # {"question": "...", "streams": {"streams": ["gate"], "group": ""}, "when": "since 22:00", "top_k": 8}.

    def across_routes(self) -> list[Route]:
        return [Route(f"{PREFIX}/search", self.search, methods=["POST"]),
                Route(f"{PREFIX}/report", self.report, methods=["POST"])]

    @staticmethod
    def _message(body: dict, cls):
        from google.protobuf import json_format

        try:
            return json_format.ParseDict(body, cls())
        except json_format.ParseError as exc:
            raise InvalidRequest(f"the request body is not a {cls.DESCRIPTOR.name}: {clipped(str(exc), 200)}") from None

    async def search(self, request: Request) -> Response:
        """Body: a SearchRequest as JSON. Answer: the SearchResponse as JSON, each moment with its keyframe's URL
        and the URL of its camera's timeline at that moment."""
        from services import search as across

        try:
            req = self._message(await _body(request), qa_pb2.SearchRequest)
            spec = QAServicer._spec(req)
            work = self._queue()
            targets = await self._call(across.targets, self.rt, list(req.streams.streams), req.streams.group)
            found = await work.run(across.search, self.rt, req.question, targets, spec, top_k=req.top_k,
                                   example_image=req.example_image, signals=list(req.signals),
                                   include_keyframes=req.include_keyframes)
        except Exception as exc:
            return error_response(exc)
        d = as_json(qa_pb2.SearchResponse(moments=[QAServicer._moment(m) for m in found.moments],
                                          streams=QAServicer._parts(found.parts), window_phrase=found.phrase,
                                          latency_ms=found.latency_ms))
        for m in d["moments"]:
            m["keyframe_url"] = keyframe_url(m["stream_id"], m["chunk_id"])
            m["timeline_url"] = f"/#stream={m['stream_id']}&t={m['start_s']:g}"  # the page opens it there
        return JSONResponse(d)

    async def report(self, request: Request) -> Response:
        """Body: a ReportRequest as JSON. Events: `progress`, `segment`, `camera`, `done` (Report's messages as
        JSON), or `error`."""
        from services import report as reports
        from services import search as across
        from services.grpc_api import report_msg

        try:
            req = self._message(await _body(request), qa_pb2.ReportRequest)
            spec = QAServicer._spec(req)
            work = self._queue()
            targets = await self._call(across.targets, self.rt, list(req.streams.streams), req.streams.group)
        except Exception as exc:
            return error_response(exc)
        model = self.rt.adapter.spec
        mark = dict(model=model.name, random_weights=model.random_weights)

        def encode(item) -> bytes:
            msg = report_msg(item, mark)
            kind = msg.WhichOneof("msg")
            return sse(kind, {**as_json(getattr(msg, kind)), **mark})

        items = worker_stream(work, reports.report, self.rt, targets, spec, req.detail, req.max_new_tokens, False)
        return await self._sse(items, encode, metered=False)
