"""Thin gRPC servicers: translate messages, run blocking work off the event loop, map errors."""
from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from memory.store import StreamRecord
from services import qa
from services.errors import NotServedHere, status_for
from services.ingest import IngestManager
from services.runtime import Runtime
from services.wire import ingest_pb2, ingest_pb2_grpc, qa_pb2, qa_pb2_grpc

log = logging.getLogger("vigil.api")

STATES = {
    "starting": ingest_pb2.STREAM_STATE_STARTING, "running": ingest_pb2.STREAM_STATE_RUNNING,
    "finished": ingest_pb2.STREAM_STATE_FINISHED, "stopped": ingest_pb2.STREAM_STATE_STOPPED,
    "failed": ingest_pb2.STREAM_STATE_FAILED,
}


def rpc(fn):
    """Run the handler; domain errors become their status code, anything else INTERNAL (logged)."""
    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await fn(self, request, context)
        except Exception as exc:  # the one place errors become statuses
            code = status_for(exc)
            if code is None:
                log.exception("%s failed", fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}")
            await context.abort(code, str(exc))
    return wrapper


def stream_info(rec: StreamRecord) -> ingest_pb2.StreamInfo:
    covered = rec.media_end_s
    return ingest_pb2.StreamInfo(
        stream_id=rec.stream_id, source=rec.source, state=STATES.get(rec.state, 0), error=rec.error,
        fps=rec.fps, clip_frames=rec.clip_frames, frames=rec.frames, chunks=rec.chunks, duration_s=covered,
        source_duration_s=rec.source_duration_s, memory_bytes=rec.bytes,
        bytes_per_hour=rec.bytes / covered * 3600 if covered > 0 else 0.0,
        model=rec.model, random_weights=rec.random_weights, created_unix=rec.created, updated_unix=rec.updated,
    )


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, rt: Runtime, manager: IngestManager | None) -> None:
        self.rt = rt
        self.manager = manager

    def _manager(self) -> IngestManager:
        if self.manager is None:
            raise NotServedHere("this server runs the QA role only; start streams on an ingest server")
        return self.manager

    @rpc
    async def StartStream(self, request, context):
        rec = await asyncio.to_thread(self._manager().start, request.source, request.fps, request.clip_frames)
        return stream_info(rec)

    @rpc
    async def DescribeStream(self, request, context):
        return stream_info(await asyncio.to_thread(self.rt.store.get_stream, request.stream_id))

    @rpc
    async def ListStreams(self, request, context):
        recs = await asyncio.to_thread(self.rt.store.list_streams)
        return ingest_pb2.ListStreamsResponse(streams=[stream_info(r) for r in recs])

    @rpc
    async def StopStream(self, request, context):
        await asyncio.to_thread(self._manager().stop, request.stream_id)
        return stream_info(await asyncio.to_thread(self.rt.store.get_stream, request.stream_id))


class QAServicer(qa_pb2_grpc.QAServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @rpc
    async def Ask(self, request, context):
        window = None
        if request.HasField("window"):
            end = request.window.end_s if request.window.end_s > 0 else float("inf")
            window = (request.window.start_s, end)
        ans = await asyncio.to_thread(
            qa.ask, self.rt, request.stream_id, request.question, top_k=request.top_k, window=window,
            max_new_tokens=request.max_new_tokens, include_keyframes=request.include_keyframes,
        )
        spec = self.rt.adapter.spec
        return qa_pb2.AskResponse(
            answer=ans.text, model=spec.name, random_weights=spec.random_weights, latency_ms=ans.latency_ms,
            memory_tokens=ans.memory_tokens,
            evidence=[
                qa_pb2.Evidence(chunk_id=h.chunk.chunk_id, start_s=h.chunk.start_s, end_s=h.chunk.end_s,
                                score=h.score, keyframe_s=h.chunk.keyframe_s, keyframe_jpeg=jpg)
                for h, jpg in zip(ans.hits, ans.keyframes)
            ],
        )
