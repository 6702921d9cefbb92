"""Thin gRPC servicers: translate messages, run blocking work off the event loop, map errors."""
from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from memory.errors import StreamNotFound, clipped
from memory.store import Gap, StreamRecord, StreamState
from services import memory_wire, qa
from services.errors import InvalidRequest, NotServedHere, public_message, status_for
from services.ingest import IngestManager
from streamer.push import FeedClosed
from streamer.redact import redact_source, redact_text
from services.runtime import Runtime
from services.work import WorkQueue
from services.wire import common_pb2, ingest_pb2, ingest_pb2_grpc, qa_pb2, qa_pb2_grpc

log = logging.getLogger("vigil.api")

STATES = {state: ingest_pb2.StreamState.Value(f"STREAM_STATE_{state.name}") for state in StreamState}
STATE_NAMES = {v: k for k, v in STATES.items()}
KINDS = {"file": ingest_pb2.SOURCE_KIND_FILE, "live": ingest_pb2.SOURCE_KIND_LIVE, "push": ingest_pb2.SOURCE_KIND_PUSH}
EVENT_KINDS = {
    "state": ingest_pb2.StreamEvent.KIND_STATE, "progress": ingest_pb2.StreamEvent.KIND_PROGRESS,
    "gap": ingest_pb2.StreamEvent.KIND_GAP, "reconnect_attempt": ingest_pb2.StreamEvent.KIND_RECONNECT_ATTEMPT,
}
TERMINAL = tuple(s for s in StreamState if s.terminal)
WINDOW_SOURCES = {qa.ALL: qa_pb2.WINDOW_SOURCE_ALL, qa.REQUEST: qa_pb2.WINDOW_SOURCE_REQUEST,
                  qa.QUESTION: qa_pb2.WINDOW_SOURCE_QUESTION}
MAX_GAPS_SHOWN = 100
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000


def gap_msg(g: Gap) -> common_pb2.Gap:
    return common_pb2.Gap(start_s=g.start_s, end_s=g.end_s, wall_start_unix=g.wall_start or 0.0,
                          wall_end_unix=g.wall_end or 0.0, reason=g.reason)


async def _fail(context: grpc.aio.ServicerContext, exc: Exception, name: str):
    """The one place errors become statuses: domain errors by the table, anything else INTERNAL (logged)."""
    code = status_for(exc)
    text = redact_text(str(exc))  # the last line of defence: no URL's credentials in a status (cut after masking)
    if code is None:
        log.exception("%s failed", name)
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error: {exc.__class__.__name__}: {clipped(text, 200)}")
    if code == grpc.StatusCode.UNAVAILABLE:
        log.warning("%s: %s (%s)", name, exc.__class__.__name__, clipped(text, 200))
    await context.abort(code, redact_text(public_message(exc)))


def rpc(fn):
    """Run a unary (or client-streaming) handler, mapping its errors."""
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await _fail(context, exc, fn.__name__)
    return wrapper


def rpc_stream(fn):
    """Run a server-streaming handler (an async generator), mapping its errors."""
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            await _fail(context, exc, fn.__name__)
    return wrapper


def stream_info(rec: StreamRecord, gaps: list[Gap] = ()) -> ingest_pb2.StreamInfo:
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
        consolidated_chunks=rec.consolidated, deleted_chunks=rec.deleted,
    )


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, rt: Runtime, manager: IngestManager | None) -> None:
        self.rt = rt
        self.manager = manager

    def _manager(self) -> IngestManager:
        if self.manager is None:
            raise NotServedHere("this server runs the QA role only; start streams on an ingest server")
        return self.manager

    def _info(self, sid: str) -> ingest_pb2.StreamInfo:
        rec = self.rt.store.get_stream(sid)
        return stream_info(rec, self.rt.store.gaps(sid, last=MAX_GAPS_SHOWN))

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
        return await asyncio.to_thread(self._info, request.stream_id)

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
        return ingest_pb2.ListStreamsResponse(streams=[stream_info(r) for r in recs], next_page_token=after,
                                              total=total)

    @rpc_stream
    async def WatchStream(self, request, context):
        store, sid = self.rt.store, request.stream_id
        last_id = await asyncio.to_thread(store.last_event_id, sid)  # before the snapshot: nothing is missed
        info = await asyncio.to_thread(self._info, sid)
        yield ingest_pb2.StreamEvent(kind=ingest_pb2.StreamEvent.KIND_SNAPSHOT, info=info, time_unix=time.time())
        done = STATE_NAMES.get(info.state, "") in TERMINAL
        while not done:
            events = await asyncio.to_thread(store.read_events, sid, last_id, 1000)
            if not events and STATE_NAMES.get((await asyncio.to_thread(self._info, sid)).state, "") in TERMINAL:
                # ended without a final event reaching us yet: send whatever is left, then stop
                events, done = await asyncio.to_thread(store.read_events, sid, last_id, None), True
            for eid, body in events:
                last_id = eid
                ev = await asyncio.to_thread(self._event, sid, body)
                if ev is None:
                    continue
                if body.get("kind") == "state" and body.get("state") in TERMINAL:
                    done = True
                yield ev

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
        return ev

    @rpc
    async def StopStream(self, request, context):
        await asyncio.to_thread(self._manager().stop, request.stream_id)
        return await asyncio.to_thread(self._info, request.stream_id)

    @rpc
    async def DeleteStream(self, request, context):
        sid = request.stream_id
        if self.manager is not None:
            removed = await asyncio.to_thread(self.manager.delete, sid)
        else:  # a QA server: the owning ingest worker, wherever it runs, lets go at its next (fenced) write
            removed = await asyncio.to_thread(self.rt.store.delete_stream, sid)
            self.rt.indexes.drop(sid)
        return ingest_pb2.DeleteStreamResponse(stream_id=sid, keys_removed=removed)


class QAServicer(qa_pb2_grpc.QAServiceServicer):
    """Questions run on `work` (their own threads and bounded queue), never on the default pool that the control
    calls use: a flood of questions waiting for the model cannot hold up DescribeStream, ListStreams or health."""

    def __init__(self, rt: Runtime, work: WorkQueue | None = None) -> None:
        self.rt = rt
        self.work = work or WorkQueue(rt.settings.question_workers, rt.settings.max_queued_questions)

    @rpc
    async def Ask(self, request, context):
        window = None
        if request.HasField("window"):  # refused here, before a queue slot is taken (end_s 0: to the end)
            window = qa.request_window(request.window.start_s, request.window.end_s)
        left = context.time_remaining()  # no deadline: None, or a time centuries away
        ans = await self.work.run(
            qa.ask, self.rt, request.stream_id, request.question, top_k=request.top_k, window=window,
            max_new_tokens=request.max_new_tokens, include_keyframes=request.include_keyframes,
            example_image=request.example_image, signals=list(request.signals),
            timeout_s=left if left is not None and left < 1e8 else None,
        )
        spec = self.rt.adapter.spec
        w = ans.window
        return qa_pb2.AskResponse(
            answer=ans.text, model=spec.name, random_weights=spec.random_weights, latency_ms=ans.latency_ms,
            memory_tokens=ans.memory_tokens, gaps=[gap_msg(g) for g in ans.gaps],
            evidence=[
                qa_pb2.Evidence(chunk_id=h.chunk.chunk_id, start_s=h.chunk.start_s, end_s=h.chunk.end_s,
                                score=h.score, keyframe_s=h.chunk.keyframe_s, keyframe_jpeg=jpg, rank=rank,
                                on_screen_text=h.chunk.text, labels=h.chunk.labels,
                                signals=[qa_pb2.SignalScore(signal=x.name, rank=x.rank, score=x.score)
                                         for x in h.signals])
                for h, jpg, rank in zip(ans.hits, ans.keyframes, ans.ranks)
            ],
            searched_window=qa_pb2.TimeWindow(start_s=w.start_s, end_s=w.end_s if w.end_s < float("inf") else 0.0),
            window_source=WINDOW_SOURCES[w.source], window_phrase=w.phrase,
        )
