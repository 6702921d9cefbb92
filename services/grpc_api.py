"""Thin gRPC servicers: translate messages, run blocking work off the event loop, map errors."""
from __future__ import annotations

import asyncio
import json
import functools
import logging
import time

import grpc

from memory.errors import StreamNotFound, clipped
from memory.store import ChunkRecord, Gap, SourceKind, StreamRecord, StreamState
from services import alerts, memory_wire, qa, report, search, summarize
from services.errors import InvalidRequest, NotServedHere, public_message, status_for
from services.ingest import IngestManager
from services.metrics import STORE_DOWN, Metrics
from streamer.push import FeedClosed
from streamer.redact import redact_source, redact_text
from services.runtime import Runtime
from services.streaming import worker_stream
from services.watchers import WatchHub
from services.work import WorkQueue
from services.wire import common_pb2, ingest_pb2, ingest_pb2_grpc, qa_pb2, qa_pb2_grpc

log = logging.getLogger("vigil.api")

STATES = {state: ingest_pb2.StreamState.Value(f"STREAM_STATE_{state.name}") for state in StreamState}
STATE_NAMES = {v: k for k, v in STATES.items()}
KINDS = {kind: ingest_pb2.SourceKind.Value(f"SOURCE_KIND_{kind.name}") for kind in SourceKind}
EVENT_KINDS = {
    "state": ingest_pb2.StreamEvent.KIND_STATE, "progress": ingest_pb2.StreamEvent.KIND_PROGRESS,
    "gap": ingest_pb2.StreamEvent.KIND_GAP, "reconnect_attempt": ingest_pb2.StreamEvent.KIND_RECONNECT_ATTEMPT,
    alerts.EVENT_KIND: ingest_pb2.StreamEvent.KIND_ALERT,
    "transcript": ingest_pb2.StreamEvent.KIND_TRANSCRIPT,
}
TERMINAL = tuple(s for s in StreamState if s.terminal)
WINDOW_SOURCES = {w: qa_pb2.WindowSource.Value(f"WINDOW_SOURCE_{w.name}") for w in qa.WindowSource}
MAX_GAPS_SHOWN = 100
_LOST_SAID: dict[str, int] = {}  # stream id -> the missing-chunk count last logged (services log it once)
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000


def stream_id(rt: Runtime, given: str) -> str:
    """The stream a request names: its id, or a camera's name (services/cameras.py) mapped to its stream's id.
    Every handler that takes a stream_id resolves it here (blocking: call it off the event loop)."""
    return rt.store.stream_for_name(given) or given


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The client's address without its port ("ipv4:127.0.0.1", "ipv6:[::1]", "unix:..."): what per-client
    limits count by."""
    peer = context.peer() or ""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


def gap_msg(g: Gap) -> common_pb2.Gap:
    return common_pb2.Gap(start_s=g.start_s, end_s=g.end_s, wall_start_unix=g.wall_start or 0.0,
                          wall_end_unix=g.wall_end or 0.0, reason=g.reason)


def speech_msgs(c: ChunkRecord) -> list:
    """A chunk's transcript as SpeechSegments, wall-clock times from its live anchor (0 for files)."""
    return [common_pb2.SpeechSegment(start_s=a, end_s=b, text=t,
                                     wall_start_unix=(c.wall_start + (a - c.start_s)) if c.wall_start else 0.0)
            for a, b, t in c.speech]


def alert_msg(a: alerts.Alert) -> ingest_pb2.Alert:
    msg = ingest_pb2.Alert(
        id=a.id, rule=a.rule, kind=str(a.kind), camera=a.camera, start_s=a.start_s, end_s=a.end_s,
        wall_start_unix=a.wall_start or 0.0, wall_end_unix=a.wall_end or 0.0, matched_text=a.matched_text,
        score=a.score, signal=str(a.signal or ""), keyframe_s=a.keyframe_s or 0.0)
    if a.chunk_id is not None:
        msg.chunk_id = a.chunk_id
    return msg


class LogOncePer:
    """Once per `period_s` per cause: one store outage fails every open call at once (60 watchers: 60 errors),
    and the log gets one line for them, with the count of those left out."""

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s = period_s
        self._last: dict[tuple, tuple[float, int]] = {}  # cause -> (when last logged, left out since)

    def due(self, cause: tuple) -> int | None:
        """None: leave this one out; else log it, with the count of those left out since the last line."""
        now = time.monotonic()
        when, skipped = self._last.get(cause, (float("-inf"), 0))
        if now - when < self.period_s:
            self._last[cause] = (when, skipped + 1)
            return None
        if len(self._last) > 1000:  # causes are few (handler x exception class); never grow without bound
            self._last.clear()
        self._last[cause] = (now, 0)
        return skipped


_OUTAGE_LOG = LogOncePer()


async def _fail(context: grpc.aio.ServicerContext, exc: Exception, name: str, metrics: Metrics | None = None):
    """The one place errors become statuses: domain errors by the table, anything else INTERNAL (logged).
    `metrics`: the server's, counting store outages (vigil_redis_errors_total{where="api"})."""
    code = status_for(exc)
    if metrics is not None and isinstance(exc, STORE_DOWN):
        metrics.store_error("api")
    text = redact_text(str(exc))  # the last line of defence: no URL's credentials in a status (cut after masking)
    if code is None:
        log.exception("%s failed", name)
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error: {exc.__class__.__name__}: {clipped(text, 200)}")
    if code == grpc.StatusCode.UNAVAILABLE and (repeats := _OUTAGE_LOG.due((name, exc.__class__.__name__))) is not None:
        log.warning("%s: %s (%s)%s", name, exc.__class__.__name__, clipped(text, 200),
                    f" (and {repeats} more like it in the last {_OUTAGE_LOG.period_s:g} s)" if repeats else "")
    await context.abort(code, redact_text(public_message(exc)))


def rpc(fn):
    """Run a unary (or client-streaming) handler, mapping its errors."""
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await _fail(context, exc, fn.__name__, self.rt.metrics)
    return wrapper


def rpc_stream(fn):
    """Run a server-streaming handler (an async generator), mapping its errors."""
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            await _fail(context, exc, fn.__name__, self.rt.metrics)
    return wrapper


def stream_info(rec: StreamRecord, gaps: list[Gap] = (), name: str | None = None, missing: int = 0
                ) -> ingest_pb2.StreamInfo:
    covered = rec.media_end_s
    return ingest_pb2.StreamInfo(
        stream_id=rec.stream_id, source=redact_source(rec.source), state=STATES.get(rec.state, 0),  # records stored
        error=redact_text(rec.error),  # before sources were redacted at StartStream keep their credentials
        fps=rec.fps, clip_frames=rec.clip_frames, frames=rec.frames, chunks=rec.chunks, duration_s=covered,
        source_duration_s=rec.source_duration_s, memory_bytes=rec.bytes,
        bytes_per_hour=rec.chunk_bytes_written / covered * 3600 if covered > 0 else 0.0,
        model=rec.model, random_weights=rec.random_weights, created_unix=rec.created, updated_unix=rec.updated,
        kind=KINDS.get(rec.kind, 0), dropped_frames=rec.dropped, reconnects=rec.reconnects, lag_s=rec.lag_s,
        gaps=[gap_msg(g) for g in gaps], scene_cuts=rec.scene_cuts, memory=memory_wire.to_proto(rec.memory),
        chunk_bytes=rec.chunk_bytes, working_memory_bytes=rec.working_bytes, working_memory_tokens=rec.working_used,
        consolidated_chunks=rec.consolidated, deleted_chunks=rec.deleted, name=name or "", missing_chunks=missing,
    )


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, rt: Runtime, manager: IngestManager | None) -> None:
        self.rt = rt
        self.manager = manager
        s = rt.settings
        self.watchers = WatchHub(rt.store.read_events, self._rendered, self._ended, s.max_watchers_per_stream,
                                 s.max_watchers_per_client)

    def _manager(self) -> IngestManager:
        if self.manager is None:
            raise NotServedHere("this server runs the QA role only; start streams on an ingest server")
        return self.manager

    def _info(self, sid: str) -> ingest_pb2.StreamInfo:
        rec = self.rt.store.get_stream(sid)
        missing = rec.missing(self.rt.store.stored_chunks(sid))
        if missing and _LOST_SAID.get(sid) != missing:  # once per stream and count, not on every describe
            _LOST_SAID[sid] = missing
            log.warning("stream %s: the store holds %d chunks fewer than the %d it acknowledged (lost by Redis)",
                        sid, missing, rec.chunks - rec.deleted - rec.merged_away)
        return stream_info(rec, self.rt.store.gaps(sid, last=MAX_GAPS_SHOWN), self.rt.store.name_of(sid), missing)

    @rpc
    async def StartStream(self, request, context):
        rec = await asyncio.to_thread(self._manager().start, request.source, request.fps, request.clip_frames,
                                      memory_wire.overrides_from_proto(request.memory))
        return await asyncio.to_thread(self._info, rec.stream_id)

    @rpc
    async def PushStream(self, request_iterator, context):
        """Config, bytes, end. Only a push that reaches its PushEnd is complete: one that stops short (the
        client cancelled, its deadline passed, it vanished) or goes silent for `push_idle_timeout_s` ends the
        stream FAILED as truncated, and frees its slot."""
        manager, idle = self._manager(), self.rt.settings.push_idle_timeout_s
        messages = aiter(request_iterator)

        async def following():
            try:
                return await asyncio.wait_for(anext(messages), idle)
            except StopAsyncIteration:
                return None

        try:
            first = await following()
        except asyncio.TimeoutError:
            raise InvalidRequest(f"no PushConfig arrived within {idle:g} s") from None
        if first is None or first.WhichOneof("msg") != "config":
            raise InvalidRequest("the first PushStream message must be a PushConfig")
        c = first.config
        rec, feed = await asyncio.to_thread(manager.start_push, c.name, c.format, c.fps, c.clip_frames, c.live,
                                            memory_wire.overrides_from_proto(c.memory))
        kept = "; the chunks stored so far are kept"
        try:
            while True:
                try:
                    msg = await following()
                except asyncio.TimeoutError:
                    feed.abort(f"truncated by the client: nothing arrived for {idle:g} s (VIGIL_PUSH_IDLE_TIMEOUT_S) "
                               f"after {feed.received} bytes{kept}")
                    break
                if msg is None:  # the request stream ended without its PushEnd
                    feed.abort(f"truncated by the client: the push ended after {feed.received} bytes without its "
                               f"end message (cancelled, timed out or disconnected){kept}")
                    break
                kind = msg.WhichOneof("msg")
                if kind == "end":
                    feed.close()
                    break
                if kind != "data":
                    raise InvalidRequest("only the first PushStream message may be a PushConfig")
                await asyncio.to_thread(feed.write, msg.data)
        except FeedClosed:
            pass  # the stream ended on its own (failed or stopped): its state says why
        except BaseException as exc:  # cancelled (client gone, deadline) or a bad message
            feed.abort(f"truncated by the client: the push was cancelled after {feed.received} bytes{kept}"
                       if isinstance(exc, asyncio.CancelledError) else
                       f"the push was refused after {feed.received} bytes: {clipped(str(exc), 200)}{kept}")
            raise
        await asyncio.to_thread(manager.wait, rec.stream_id)
        return await asyncio.to_thread(self._info, rec.stream_id)

    @rpc
    async def DescribeStream(self, request, context):
        return await asyncio.to_thread(lambda: self._info(stream_id(self.rt, request.stream_id)))

    @rpc
    async def ListStreams(self, request, context):
        size = request.page_size or PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidRequest(f"page_size {size} is over the limit of {MAX_PAGE_SIZE}")
        try:
            recs, after = await asyncio.to_thread(self.rt.store.page_streams, size, request.page_token)
        except StreamNotFound:
            raise InvalidRequest(f"page_token {clipped(request.page_token)} names no stream (deleted since? "
                                 "start again from the first page)") from None
        total = await asyncio.to_thread(self.rt.store.count_streams)
        names = {sid: n for n, sid in (await asyncio.to_thread(self.rt.store.names)).items()}
        return ingest_pb2.ListStreamsResponse(streams=[stream_info(r, name=names.get(r.stream_id)) for r in recs],
                                              next_page_token=after,
                                              total=total)

    @rpc_stream
    async def WatchStream(self, request, context):
        """A snapshot, then the stream's events as they happen, until it ends. Waiting costs no thread of the
        shared pool: one poller per stream fans its events out to every watcher (services/watchers.py)."""
        sid = await asyncio.to_thread(stream_id, self.rt, request.stream_id)
        with self.watchers.join(sid, peer_address(context)) as sub:  # the caps, before any further work

            def start() -> tuple[str, ingest_pb2.StreamInfo]:
                # the newest event id before the snapshot: nothing is missed, nothing is sent twice
                return self.rt.store.last_event_id(sid), self._info(sid)

            last_id, info = await asyncio.to_thread(start)
            yield ingest_pb2.StreamEvent(kind=ingest_pb2.StreamEvent.KIND_SNAPSHOT, info=info, time_unix=time.time())
            if STATE_NAMES.get(info.state, "") in TERMINAL:
                return
            async for ev in self.watchers.events(sub, last_id):
                yield ev

    def _rendered(self, sid: str, body: dict[str, str]) -> tuple[ingest_pb2.StreamEvent | None, bool]:
        """One stored event as watchers get it, and whether it ends the stream (on a poller's thread)."""
        ends = body.get("kind") == "state" and body.get("state") in TERMINAL
        return self._event(sid, body), ends

    def _ended(self, sid: str) -> bool:
        return self.rt.store.get_stream(sid).state in TERMINAL

    def _event(self, sid: str, body: dict[str, str]) -> ingest_pb2.StreamEvent | None:
        kind = EVENT_KINDS.get(body.get("kind"))
        if kind is None:
            return None
        ev = ingest_pb2.StreamEvent(kind=kind, info=self._info(sid), message=redact_text(body.get("message", "")),
                                    time_unix=float(body.get("time", 0)))
        if body.get("kind") == "state":
            ev.previous_state = STATES.get(body.get("previous", ""), 0)
            ev.info.state = STATES.get(body["state"], ev.info.state)  # the state this event is about
        if body.get("kind") == "gap":
            ev.gap.CopyFrom(gap_msg(Gap.from_json(body["gap"])))  # was a dict: WatchStream died at a gap
        if body.get("kind") == alerts.EVENT_KIND:
            ev.alert.CopyFrom(alert_msg(alerts.Alert.from_json(body["alert"])))
        if body.get("kind") == "transcript":
            ev.speech.extend(common_pb2.SpeechSegment(start_s=s[0], end_s=s[1], text=s[2], wall_start_unix=s[3])
                             for s in json.loads(body.get("speech", "[]")))
        return ev

    @rpc
    async def StopStream(self, request, context):
        sid = await asyncio.to_thread(stream_id, self.rt, request.stream_id)
        await asyncio.to_thread(self._manager().stop, sid)
        return await asyncio.to_thread(self._info, sid)

    @rpc
    async def DeleteStream(self, request, context):
        sid = await asyncio.to_thread(stream_id, self.rt, request.stream_id)
        if self.manager is not None:
            removed = await asyncio.to_thread(self.manager.delete, sid)
        else:  # a QA server: the owning ingest worker, wherever it runs, lets go at its next (fenced) write
            removed = await asyncio.to_thread(self.rt.store.delete_stream, sid)
            self.rt.indexes.drop(sid)
            self.rt.resident.drop(sid)
        await asyncio.to_thread(self.rt.store.forget_names, sid)  # a camera's name no longer leads to it
        return ingest_pb2.DeleteStreamResponse(stream_id=sid, keys_removed=removed)


class QAServicer(qa_pb2_grpc.QAServiceServicer):
    """Questions run on `work` (their own threads and bounded queue), never on the default pool that the control
    calls use: a flood of questions waiting for the model cannot hold up DescribeStream, ListStreams or health.
    AskStream and Summarize run there too, handing their messages to the event loop as they are made
    (services/streaming.py); a client that cancels stops the model at its next token."""

    def __init__(self, rt: Runtime, work: WorkQueue | None = None) -> None:
        self.rt = rt
        self.work = work or WorkQueue(rt.settings.question_workers, rt.settings.max_queued_questions)

    @staticmethod
    def _left(context) -> float | None:
        left = context.time_remaining()  # no deadline: None, or a time centuries away
        return left if left is not None and left < 1e8 else None

    @staticmethod
    def _window(request) -> tuple[float, float] | None:
        """The request's window, refused here, before a queue slot is taken (end_s 0: to the end)."""
        if not request.HasField("window"):
            return None
        return qa.request_window(request.window.start_s, request.window.end_s)

    def _ask_kwargs(self, request) -> dict:
        return dict(top_k=request.top_k, window=self._window(request), max_new_tokens=request.max_new_tokens,
                    include_keyframes=request.include_keyframes, example_image=request.example_image,
                    signals=list(request.signals), conversation_id=request.conversation_id,
                    new_conversation=request.new_conversation)

    @staticmethod
    def _evidence(hits, keyframes, ranks) -> list:
        return [qa_pb2.Evidence(chunk_id=h.chunk.chunk_id, start_s=h.chunk.start_s, end_s=h.chunk.end_s,
                                score=h.score, keyframe_s=qa.evidence_frame_s(h), keyframe_jpeg=jpg, rank=rank,
                                on_screen_text=h.chunk.text, labels=h.chunk.labels, speech=speech_msgs(h.chunk),
                                signals=[qa_pb2.SignalScore(signal=x.name, rank=x.rank, score=x.score)
                                         for x in h.signals])
                for h, jpg, rank in zip(hits, keyframes, ranks)]

    @staticmethod
    def _searched(w: qa.Searched) -> dict:
        end = w.end_s if w.end_s < float("inf") else 0.0  # 0: to the end
        return dict(searched_window=qa_pb2.TimeWindow(start_s=w.start_s, end_s=end),
                    window_source=WINDOW_SOURCES[w.source], window_phrase=w.phrase)

    @rpc
    async def Ask(self, request, context):
        kwargs = self._ask_kwargs(request)
        sid = await asyncio.to_thread(stream_id, self.rt, request.stream_id)
        with self.rt.metrics.question():  # vigil_question_seconds, queue wait included
            ans = await self.work.run(qa.ask, self.rt, sid, request.question, timeout_s=self._left(context), **kwargs)
        spec = self.rt.adapter.spec
        return qa_pb2.AskResponse(
            answer=ans.text, model=spec.name, random_weights=spec.random_weights, latency_ms=ans.latency_ms,
            memory_tokens=ans.memory_tokens, gaps=[gap_msg(g) for g in ans.gaps],
            evidence=self._evidence(ans.hits, ans.keyframes, ans.ranks), **self._searched(ans.window),
            conversation_id=ans.conversation_id, history_turns=ans.history_turns,
        )

    @rpc_stream
    async def AskStream(self, request, context):
        """Evidence, then the text as the model makes it, then the whole answer (equal to Ask's)."""
        kwargs = self._ask_kwargs(request)
        sid = await asyncio.to_thread(stream_id, self.rt, request.stream_id)
        spec = self.rt.adapter.spec
        with self.rt.metrics.question():
            async for item in worker_stream(self.work, qa.ask_streamed, self.rt, sid, request.question,
                                            timeout_s=self._left(context), **kwargs):
                if isinstance(item, str):
                    yield qa_pb2.AskStreamResponse(delta=qa_pb2.AnswerDelta(text=item))
                elif isinstance(item, qa.Prepared):
                    yield qa_pb2.AskStreamResponse(evidence=qa_pb2.AnswerEvidence(
                        evidence=self._evidence(item.hits, item.keyframes, item.ranks),
                        gaps=[gap_msg(g) for g in item.gaps], **self._searched(item.window), model=spec.name,
                        random_weights=spec.random_weights, conversation_id=item.conversation_id,
                        history_turns=len(item.history), memory_tokens=item.memory.length))
                else:
                    yield qa_pb2.AskStreamResponse(done=qa_pb2.AnswerDone(
                        answer=item.text, latency_ms=item.latency_ms, memory_tokens=item.memory_tokens,
                        conversation_id=item.conversation_id))

    @rpc_stream
    async def Summarize(self, request, context):
        """Progress and each segment as it is done, then the overview."""
        window = self._window(request)
        sid = await asyncio.to_thread(stream_id, self.rt, request.stream_id)
        spec = self.rt.adapter.spec
        mark = dict(model=spec.name, random_weights=spec.random_weights)
        async for item in worker_stream(self.work, summarize.summarize, self.rt, sid, window, request.detail,
                                        request.max_new_tokens, request.include_keyframes,
                                        timeout_s=self._left(context)):
            if isinstance(item, summarize.Progress):
                yield qa_pb2.SummarizeResponse(progress=qa_pb2.SummaryProgress(
                    segment=item.segment, segments=item.segments, stage=item.stage), **mark)
            elif isinstance(item, summarize.SegmentSummary):
                yield qa_pb2.SummarizeResponse(segment=qa_pb2.SummarySegment(
                    index=item.index, segments=item.segments, start_s=item.start_s, end_s=item.end_s,
                    summary=item.text, on_screen_text=list(item.on_screen), chunks=item.chunks,
                    evidence=[qa_pb2.Evidence(chunk_id=c.chunk_id, start_s=c.start_s, end_s=c.end_s,
                                              keyframe_s=c.keyframe_s, keyframe_jpeg=jpg, on_screen_text=c.text,
                                              labels=c.labels, speech=speech_msgs(c))
                              for c, jpg in zip(item.read, item.keyframes)]), **mark)
            else:
                yield qa_pb2.SummarizeResponse(done=qa_pb2.SummaryDone(
                    overview=item.overview, window=qa_pb2.TimeWindow(start_s=item.start_s, end_s=item.end_s),
                    segments=item.segments, latency_ms=item.latency_ms, gaps=[gap_msg(g) for g in item.gaps]),
                    **mark)

    # ---- across streams (services/search.py, services/report.py) ----------------------------------------------

    @staticmethod
    def _spec(request) -> search.WindowSpec:
        """The request's window (at most one of window, wall_window, when), checked before a queue slot is taken."""
        media = QAServicer._window(request)
        wall = None
        if request.HasField("wall_window"):
            w = request.wall_window
            wall = (w.start_unix, w.end_unix if w.end_unix > 0 else float("inf"))
        return search.WindowSpec(media, wall, request.when.strip())

    def _targets(self, request) -> list[search.Target]:
        return search.targets(self.rt, list(request.streams.streams), request.streams.group)

    @staticmethod
    def _moment(m: search.Moment) -> qa_pb2.Moment:
        c = m.chunk
        return qa_pb2.Moment(
            camera=m.target.camera, stream_id=m.target.sid, chunk_id=c.chunk_id, start_s=c.start_s, end_s=c.end_s,
            wall_start_unix=c.wall_start or 0.0, wall_end_unix=c.wall_end or 0.0, score=m.score,
            signals=[qa_pb2.SignalScore(signal=x.name, rank=x.rank, score=x.score) for x in m.signals],
            on_screen_text=c.text, labels=c.labels, keyframe_s=c.keyframe_s, keyframe_jpeg=m.keyframe, rank=m.rank)

    @staticmethod
    def _parts(parts: list[search.StreamPart]) -> list[qa_pb2.SearchedStream]:
        out = []
        for p in parts:
            lo, hi = p.bounds if p.bounds is not None else (0.0, 0.0)
            out.append(qa_pb2.SearchedStream(
                camera=p.target.camera, stream_id=p.target.sid, chunks=p.chunks, skipped=p.skipped,
                searched_window=qa_pb2.TimeWindow(start_s=lo, end_s=hi if hi < float("inf") else 0.0)))
        return out

    @rpc
    async def Search(self, request, context):
        spec = self._spec(request)
        targets = await asyncio.to_thread(self._targets, request)
        found = await self.work.run(search.search, self.rt, request.question, targets, spec, top_k=request.top_k,
                                    example_image=request.example_image, signals=list(request.signals),
                                    include_keyframes=request.include_keyframes, timeout_s=self._left(context))
        return qa_pb2.SearchResponse(moments=[self._moment(m) for m in found.moments], streams=self._parts(found.parts),
                                     window_phrase=found.phrase, latency_ms=found.latency_ms)

    @rpc
    async def AskAcross(self, request, context):
        spec = self._spec(request)
        targets = await asyncio.to_thread(self._targets, request)
        with self.rt.metrics.question():
            ans = await self.work.run(
                search.ask_across, self.rt, request.question, targets, spec, top_k=request.top_k,
                max_cameras=request.max_cameras, max_new_tokens=request.max_new_tokens,
                include_keyframes=request.include_keyframes, conversation_id=request.conversation_id,
                new_conversation=request.new_conversation, timeout_s=self._left(context))
        spec_ = self.rt.adapter.spec
        return qa_pb2.AskAcrossResponse(
            answer=ans.text, evidence=[self._moment(m) for m in ans.evidence],
            cameras=[qa_pb2.CameraAnswer(camera=c.target.camera, stream_id=c.target.sid, answer=c.text,
                                         memory_tokens=c.memory_tokens) for c in ans.cameras],
            model=spec_.name, random_weights=spec_.random_weights, latency_ms=ans.latency_ms,
            conversation_id=ans.conversation_id, history_turns=ans.history_turns,
            streams=self._parts(ans.searched.parts))

    @rpc_stream
    async def Report(self, request, context):
        """Per camera: progress, its segments, its summary; then the overview."""
        spec = self._spec(request)
        targets = await asyncio.to_thread(self._targets, request)
        model = self.rt.adapter.spec
        mark = dict(model=model.name, random_weights=model.random_weights)
        async for item in worker_stream(self.work, report.report, self.rt, targets, spec, request.detail,
                                        request.max_new_tokens, request.include_keyframes,
                                        timeout_s=self._left(context)):
            yield report_msg(item, mark)


def report_msg(item, mark: dict) -> qa_pb2.ReportResponse:
    """One item of services/report.py as Report's message (gRPC and the HTTP API alike)."""
    if isinstance(item, report.ReportProgress):
        t = item.target
        return qa_pb2.ReportResponse(progress=qa_pb2.ReportProgress(
            stage=item.stage, camera_index=item.camera_index, cameras=item.cameras, camera=t.camera if t else "",
            stream_id=t.sid if t else "", segment=item.segment, segments=item.segments), **mark)
    if isinstance(item, report.ReportSegment):
        seg = item.segment
        return qa_pb2.ReportResponse(segment=qa_pb2.ReportSegment(
            camera=item.target.camera, stream_id=item.target.sid, activity=list(item.activity),
            wall_start_unix=item.wall_start or 0.0, wall_end_unix=item.wall_end or 0.0,
            segment=qa_pb2.SummarySegment(
                index=seg.index, segments=seg.segments, start_s=seg.start_s, end_s=seg.end_s, summary=seg.text,
                on_screen_text=list(seg.on_screen), chunks=seg.chunks,
                evidence=[qa_pb2.Evidence(chunk_id=c.chunk_id, start_s=c.start_s, end_s=c.end_s,
                                          keyframe_s=c.keyframe_s, keyframe_jpeg=jpg, on_screen_text=c.text,
                                          labels=c.labels)
                          for c, jpg in zip(seg.read, seg.keyframes)])), **mark)
    if isinstance(item, report.CameraReport):
        lo, hi = item.bounds
        return qa_pb2.ReportResponse(camera=qa_pb2.CameraReport(
            camera=item.target.camera, stream_id=item.target.sid, summary=item.summary or item.skipped,
            segments=item.segments, chunks=item.chunks, window=qa_pb2.TimeWindow(start_s=lo, end_s=hi),
            gaps=[gap_msg(g) for g in item.gaps]), **mark)
    return qa_pb2.ReportResponse(done=qa_pb2.ReportDone(
        overview=item.overview, cameras=item.cameras, latency_ms=item.latency_ms, window_phrase=item.phrase), **mark)
