"""One stream's ingest pipeline: source -> sampler -> keyframe detector -> [queue] -> clips -> encoder -> store.

The decode side runs in its own thread and hands sampled, scored frames (and control events:
connects, disconnects, gaps, the end) to the encode side over a `FrameQueue`: a file is paced,
a live source never waits and loses frames evenly instead. After every stored chunk the store
moves the stream's checkpoint in the same transaction, so a killed process resumes exactly
after the last stored chunk. Every write carries the worker's lease token (fenced: refused once another
worker owns the stream). While Redis is unreachable the worker waits with backoff and sends the same
write again (chunk writes are idempotent), so an outage delays a stream, never fails it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import redis

from encoders.base import ClipRequest, EncodedSegment
from encoders.describe import StreamMemo
from memory.delta import working_write
from memory.layout import TokenSet
from memory.retention import Retention
from memory.store import (Checkpoint, ChunkGap, ChunkRecord, ChunkWrite, IngestProgress, LeaseLost, SourceKind,
                          StreamRecord, StreamState)
from memory.store.client import STORE_DOWN as STORE_UNAVAILABLE
from memory.working import WorkingState, absorb, context, step
from services import alerts
from services.config import Reader
from services.errors import STORE_FULL as STORE_FULL_MESSAGE
from services.paths import MediaFile
from services.runtime import Runtime
from encoders.signals import Signal
from services.transcripts import SpeechFeed
from streamer.audio import AudioBuffer
from streamer.backpressure import FrameQueue
from streamer.errors import SourceError
from streamer.redact import redact_text
from streamer.keyframes import DetectorConfig, SceneDetector
from streamer.live import Connected, Disconnected, Gap, LiveOptions, LiveSource, Reconnecting
from streamer.push import ByteFeed
from streamer.frontend import scored_frames
from streamer.sampling import Clip, ClipBuilder, DecodeState, SampledFrame, Sampler, jpeg
from streamer.source import AvSource, DecodedFrame, FileSource

log = logging.getLogger("vigil.ingest")
STORE_DOWN = STORE_UNAVAILABLE  # Redis unreachable, stalled, loading, or a cluster slot failing over: wait, then resend
STORE_FULL = redis.exceptions.OutOfMemoryError  # Redis at maxmemory (noeviction): wait for room, then resend
STORE_BACKOFF_CAP_S = 5.0


class StoreLostChunks(RuntimeError):
    """The store lost chunks it had acknowledged, more than the worker still holds to send again."""


class _Memory:
    """The stream's prefix and working memory as ingest advances them (one per worker); `since_snapshot`: chunks
    stored since the store's working-memory snapshot (None: the next chunk stores one)."""

    def __init__(self, prefix: EncodedSegment, state: WorkingState, since_snapshot: int | None = None,
                 version: int = -1) -> None:
        self.prefix, self.state, self.since_snapshot = prefix, state, since_snapshot
        self.version = version  # the chunk this memory is after (-1: none yet)


class _End:
    """The source ended cleanly."""


@dataclass(frozen=True)
class Plan:
    """What a worker ingests and how."""
    kind: SourceKind
    live: bool  # drop evenly when behind (live, live push) instead of pacing the source
    file: MediaFile | None = None  # files: the confined, open file; the worker closes it when it ends
    url: str | None = None
    feed: ByteFeed | None = None
    format: str | None = None
    reader: Reader = Reader.PYAV  # files

    @property
    def path(self) -> Path | None:
        """The file's user-facing path; what the worker reads is `file.open_path` (the confined inode)."""
        return self.file.path if self.file is not None else None


@dataclass(frozen=True)
class Resume:
    """Where a stream continues after a restart (from the store's checkpoint)."""
    next_clip: int
    after_s: float  # media time of the last stored frame
    last_wall_s: float | None
    frames_total: int
    decode: DecodeState


class Released(Exception):
    """The worker was told to let go (shutdown, lease lost) while it waited for the store."""


class Controls:
    """How the outside asks a worker to end. `stop()`: final (StopStream): the pending partial clip
    is stored and the state becomes stopped. `release()`: leave the stream resumable (server
    shutdown, lease lost): no state change, no partial clip, the checkpoint stays where it is."""

    def __init__(self) -> None:
        self.ending = threading.Event()  # what the decode side and the live source wait on
        self.letting_go = threading.Event()  # release() only: what a wait for the store gives up on
        self.final = False

    def stop(self) -> None:
        self.final = True
        self.ending.set()

    def release(self) -> None:
        self.letting_go.set()
        self.ending.set()

    @property
    def released(self) -> bool:
        return self.ending.is_set() and not self.final


def _is_frame(item) -> bool:
    return isinstance(item, SampledFrame)


class StreamWorker:
    def __init__(self, rt: Runtime, rec: StreamRecord, plan: Plan, controls: Controls, fence: str,
                 resume: Resume | None = None) -> None:
        """`fence`: the lease token every write of this worker carries."""
        self.rt, self.rec, self.plan, self.controls, self.resume = rt, rec, plan, controls, resume
        self.fence = fence
        s = rt.settings
        self.detector_cfg = DetectorConfig(**s.detector.model_dump())
        self.queue = FrameQueue(s.queue_frames, live=plan.live, is_frame=_is_frame)
        self.memory = rec.memory  # the stream's own options, recorded at start (not this server's settings)
        self.ending = controls.ending
        self.replay_until = 0  # clips below this id are stored already: encoded again for the memory only
        self.describe_memo = StreamMemo()  # the frame index reads a frame again only once it changed
        self._describer: ThreadPoolExecutor | None = None  # the frame index's thread (started on first use)
        self._decoding = False  # once the decode thread runs, it closes plan.file
        self._sent: deque[ChunkWrite] = deque(maxlen=s.resend_chunks)  # the last chunk writes, to send again
        self.alerts = alerts.for_stream(rt, rec, self._durable)  # the camera's alert rules (services/alerts)
        self._last_state: StreamState | None = rec.state if resume is not None else None  # for the log lines
        self._who: str | None = None  # "stream <id> (camera 'gate')", once known
        self.name: str | None = None  # the camera's or push's name, for the log lines (the manager sets it)
        self.audio, self.speech = self._speech_parts()  # the audio track and its speech thread (None: no speech)
        self._source_ended = False  # the source's end was seen: the last clip takes all the audio left

    # ---- speech (the audio track; services/transcripts.py) ----------------------------------------
    def _speech_parts(self) -> tuple[AudioBuffer | None, SpeechFeed | None]:
        """An audio buffer for the decoder and a speech thread, when this process transcribes and the source can
        carry audio (decord reads video only)."""
        t, opts = self.rt.transcriber, self.rt.settings.speech
        if t is None or (self.plan.kind == SourceKind.FILE and self.plan.reader == Reader.DECORD):
            return None, None
        buf = AudioBuffer(opts.buffer_s)
        return buf, SpeechFeed(t, buf, opts, self.plan.live, self.rec.stream_id)

    def _said(self, clip: Clip) -> tuple:
        """The clip's transcript ((start_s, end_s, text), ...), waited for on the speech thread (() without speech)."""
        if self.speech is None:
            return ()
        end = float("inf") if self._source_ended else clip.end_s
        return tuple((s.start_s, s.end_s, s.text) for s in self.speech.until(end, self.ending))

    def _transcript_event(self, record: ChunkRecord) -> None:
        """WatchStream's KIND_TRANSCRIPT for a live stream's chunk with speech: [[start_s, end_s, text, wall], ...]."""
        if not record.speech or not self.plan.live:
            return
        wall = record.wall_start
        said = [[a, b, t, (wall + (a - record.start_s)) if wall else 0.0] for a, b, t in record.speech]
        self._durable(self.rt.store.event, self.rec.stream_id, "transcript", speech=json.dumps(said),
                      message=record.said[:500])

    def _speech_vector(self, said: tuple) -> dict:
        """The "speech" vector of a transcript, for the chunk's frame-index vectors ({} when nothing was said)."""
        if not said or self.rt.transcriber is None:
            return {}
        v = self.rt.transcriber.embed(" ".join(t for _, _, t in said))
        return {Signal.SPEECH: v} if v is not None else {}

    # ---- decode side (its own thread) -------------------------------------------------------
    def _decoded(self):
        """Decoded frames and live control events from the plan's source."""
        p, r = self.plan, self.resume
        after = r.after_s if r else None
        if p.kind == SourceKind.LIVE:
            opts: LiveOptions = self.rt.settings.live
            resume = (r.after_s, r.last_wall_s or time.time()) if r else None
            yield from LiveSource(p.url, opts, resume=resume, audio=self.audio).events(self.ending)
            return
        if p.kind == SourceKind.PUSH:
            with AvSource(p.feed, self.rec.source, format=p.format) as src:  # source reads "push:<name>"
                for f in src.frames(audio=self.audio):
                    yield DecodedFrame(f.time_s, f.frame, time.time()) if p.live else f
            return
        if p.reader == Reader.DECORD:
            from streamer.decord_source import DecordSource

            with DecordSource(p.file.open_path, name=p.file.name) as src:  # the confined inode, never the name
                yield from src.frames(self.rec.fps, after_s=after)
            return
        with FileSource(p.file.open_path, name=p.file.name) as src:
            yield from src.frames(after_s=after, audio=self.audio)

    def _decode_and_close(self) -> None:
        """The decode thread: the file's descriptor is closed only here, once nothing can open its
        /proc/self/fd path any more (a closed number may be reused by another file)."""
        try:
            self._decode()
        finally:
            if self.plan.file is not None:
                self.plan.file.close()

    def _decode(self) -> None:
        r = self.resume
        resumed = r is not None and r.decode.next_tick is not None
        sampler = Sampler(self.rec.fps, r.decode.next_tick, r.decode.next_index) if resumed else Sampler(self.rec.fps)
        detector = (SceneDetector.restore(self.detector_cfg, r.decode.detector) if r and r.decode.detector
                    else SceneDetector(self.detector_cfg))
        q, ending = self.queue, self.ending
        try:
            for item in scored_frames(self._decoded(), sampler, detector, self.rt.settings.frame_max_side):
                if ending.is_set() or not q.put(item, ending):
                    return
        except BaseException as exc:  # handed to the encode side, which records it
            q.put(exc, ending)
            return
        finally:
            if self.audio is not None:  # the speech thread transcribes what is left
                self.audio.close()
        q.put(_End(), ending)

    # ---- the store, through outages --------------------------------------------------------
    def _durable(self, fn, *args, **kwargs):
        """Call a store method until Redis answers: while it is unreachable, wait with backoff (0.1 s doubling
        to 5 s) and send the same call again; a lapsed lease no one else took is taken back with the same
        token. Raises LeaseLost when another worker owns the stream, Released when told to let go meanwhile."""
        sid, delay, down_since, retakes = self.rec.stream_id, 0.1, None, 0
        while True:
            try:
                out = fn(*args, **kwargs)
                if down_since is not None:
                    log.info("stream %s: the store answers again after %.1fs; continuing", sid,
                             time.monotonic() - down_since)
                return out
            except STORE_DOWN as exc:
                self.rt.metrics.store_error("ingest")
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("stream %s: the store is unreachable (%s); waiting for it", sid,
                                exc.__class__.__name__)
            except STORE_FULL:
                self.rt.metrics.store_error("ingest")
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("stream %s: %s", sid, STORE_FULL_MESSAGE)
            except LeaseLost:
                retakes += 1
                try:
                    if retakes <= 3 and self.rt.store.renew(sid, self.fence, int(self.rt.settings.lease_ttl_s * 1000)):
                        continue  # it had lapsed during the outage and nobody took it: ours again
                except STORE_DOWN:
                    continue
                raise
            if self.controls.letting_go.wait(delay):
                raise Released()
            delay = min(delay * 2, STORE_BACKOFF_CAP_S)

    def _describe_pool(self) -> ThreadPoolExecutor:
        if self._describer is None:
            self._describer = ThreadPoolExecutor(1, thread_name_prefix=f"describe-{self.rec.stream_id}")
        return self._describer

    def _state(self, state: StreamState, error: str | None = None, **changes) -> None:
        before = self._last_state
        self._durable(self.rt.store.set_state, self.rec.stream_id, state, error, fence=self.fence, **changes)
        self._last_state = state
        self._log_state(before, state, error)

    def _log_state(self, before: StreamState | None, state: StreamState, error: str | None) -> None:
        """One log line per lifecycle step of the stream (a camera's: connected, outage, reconnected, stopped; a
        failure at WARNING, with its reason)."""
        if self._who is None:
            name = self.name
            what = "camera" if self.plan.kind == SourceKind.LIVE else "push" if self.plan.kind == SourceKind.PUSH \
                else "stream"
            self._who = f"stream {self.rec.stream_id}" + (f" ({what} {name!r})" if name else "")
        why = f": {redact_text(error)[:300]}" if error else ""
        if state == StreamState.RUNNING and self.plan.kind == SourceKind.LIVE:
            step = (f"reconnected (reconnect {self.rec.reconnects})" if before == StreamState.RECONNECTING
                    else "connected")
        elif state == StreamState.RECONNECTING:
            step = f"outage, reconnecting{why}"
        elif state == StreamState.RUNNING:
            step = "running"
        else:
            step = f"{state}{why}"
        (log.warning if state == StreamState.FAILED else log.info)("%s: %s", self._who, step)

    # ---- encode side (the worker's thread) --------------------------------------------------
    def run(self) -> None:
        rt, sid = self.rt, self.rec.stream_id
        try:
            try:
                mem = self._memory()
                decoder = threading.Thread(target=self._decode_and_close, name=f"decode-{sid}", daemon=True)
                if self.speech is not None:
                    self.speech.start()
                decoder.start()
                self._decoding = True
                if self.plan.kind != SourceKind.LIVE:
                    self._state(StreamState.RUNNING, error="")
                self._consume(mem)
                decoder.join(rt.settings.live.read_timeout_s + 5)
                if self.controls.released:
                    return  # resumable: state and checkpoint stay as they are
                if self.plan.feed is not None and self.plan.feed.error and not self.controls.final:
                    self._state(StreamState.FAILED, error=self.plan.feed.error)  # a push that stopped short
                    return
                self._state(StreamState.STOPPED if self.controls.final else StreamState.FINISHED)
            except SourceError as exc:  # the FAILED state's log line says why (_log_state)
                if self.controls.final:  # StopStream before the source gave a frame (a push that sent nothing)
                    self._state(StreamState.STOPPED)
                    return
                aborted = self.plan.feed.error if self.plan.feed is not None else None
                self._state(StreamState.FAILED, error=aborted or str(exc))  # a push: why its sender stopped short
            except (LeaseLost, Released):
                raise
            except StoreLostChunks as exc:  # the store's fault, said as such (not an internal error)
                log.error("stream %s failed: %s", sid, exc)
                self._state(StreamState.FAILED, error=str(exc))
            except Exception as exc:  # recorded, never silent: the stream shows it and the log has the trace
                aborted = self.plan.feed.error if self.plan.feed is not None else None
                if aborted is None:
                    log.exception("stream %s failed", sid)
                self._state(StreamState.FAILED,
                            error=aborted or f"internal error: {exc.__class__.__name__}: {redact_text(str(exc))[:500]}")
        except (LeaseLost, Released) as exc:  # resumable by whoever holds the lease now (or by the next server)
            log.warning("stream %s: letting go (%s)", sid, exc or "released while waiting for the store")
            self.controls.release()
        finally:
            if self._describer is not None:
                self._describer.shutdown(wait=True)
            if self.speech is not None:
                self.speech.stop()
            rt.resident.release(sid)  # the copy stays for questions until space is needed
            if not self.controls.ending.is_set():
                self.controls.stop()
            if self.plan.feed is not None:
                self.plan.feed.reader_done()
            if self.plan.file is not None and not self._decoding:  # else the decode thread closes it
                self.plan.file.close()

    def _memory(self) -> _Memory:
        """A new stream's prefix and empty working memory, or a resumed one's: as stored with its last chunk when
        the store has it; else the newest snapshot, then (files) the clips after it decoded and encoded again
        without storing them twice, exactly, or (live sources, pushes) the chunks stored after it merged in."""
        rt, sid, store = self.rt, self.rec.stream_id, self.rt.store
        if self.resume is None:
            with rt.model_lock:
                prefix = rt.adapter.encode_prefix()
            self._durable(store.put_prefix, sid, prefix)
            return _Memory(prefix, WorkingState.empty(prefix))
        prefix = self._durable(store.get_prefix, sid).to(rt.adapter.device)  # the store's copy is on the host
        got = self._durable(store.load_working, sid)  # the snapshot (with its deltas, when stored)
        if got is None:
            return _Memory(prefix, WorkingState.empty(prefix))
        state = got.state.to(rt.adapter.device)
        stored = self.resume.next_clip  # chunks below this id are stored
        if got.version >= stored - 1:
            snap_v = self._durable(store.get_stream, sid).wm_snapshot_version
            return _Memory(prefix, state, since_snapshot=stored - 1 - snap_v, version=stored - 1)
        snap = self._durable(store.snapshot_checkpoint, sid)
        if self.plan.kind == SourceKind.FILE and snap is not None:
            # decode and encode again from the snapshot's point: the memory comes out as it was (the chunks
            # are stored already and are not stored again)
            self.resume, self.replay_until = resume_point(snap), stored
            log.info("stream %s: working memory at chunk %d, stored chunks up to %d; encoding %d clips again",
                     sid, got.version, stored - 1, stored - 1 - got.version)
            return _Memory(prefix, state, version=got.version)
        # live sources and pushes cannot be decoded again: the chunks stored since the snapshot are merged in
        ids = self._durable(store.chunk_ids, sid, got.version)
        chunks = [p.to(rt.adapter.device) for p in self._durable(store.chunk_payloads, sid, ids)
                  if isinstance(p, TokenSet)]
        rec = self._durable(store.get_stream, sid)
        log.info("stream %s: working memory at chunk %d, stored chunks up to %d; the %d chunks after it are "
                 "merged into it (approximate: their clips cannot be encoded again)", sid, got.version, stored - 1,
                 len(ids))
        return _Memory(prefix, absorb(state, chunks, self.memory, rec.next_pos, rec.max_pos, rec.next_serial,
                                      rec.next_frame), version=stored - 1)

    def _consume(self, mem: _Memory) -> None:
        r, store, sid = self.resume, self.rt.store, self.rec.stream_id
        period = 1.0 / self.rec.fps
        builder = ClipBuilder(self.rec.clip_frames, period, self.rt.settings.min_clip_frames, r.next_clip if r else 0)
        back_wall: float | None = None  # reconnected at (wall): its "up" alert waits for media time
        self.frames_total = r.frames_total if r else 0
        while True:
            if self.controls.released:
                return
            if self.controls.final:
                break
            try:
                item = self.queue.get(timeout=0.2)  # wakes up to notice a stop even when nothing comes
            except Empty:
                continue
            if isinstance(item, SampledFrame):
                if back_wall is not None:  # back with no gap to report (nothing came before the outage)
                    self.alerts.on_feed(True, media_s=item.time_s, wall_s=back_wall)
                    back_wall = None
                if (clip := builder.push(item)) is not None:
                    self._store(clip, mem)
            elif isinstance(item, _End):
                self._source_ended = True
                break
            elif isinstance(item, Connected):
                back = self._durable(store.get_stream, sid).state == StreamState.RECONNECTING  # after an outage
                if back:
                    self.rec.reconnects += 1
                self._state(StreamState.RUNNING, error="", reconnects=self.rec.reconnects)
                if back:  # the "up" alert waits for the outage's gap: it carries the media time the feed resumed at
                    back_wall = item.wall_s
                else:
                    self.alerts.on_feed(True, wall_s=item.wall_s)
            elif isinstance(item, Disconnected):
                if (clip := builder.flush()) is not None:  # a chunk never spans an outage
                    self._store(clip, mem)
                self._state(StreamState.RECONNECTING, error=item.reason)
                self.alerts.on_feed(False, item.reason, media_s=item.media_s, wall_s=item.wall_s)
            elif isinstance(item, Reconnecting):
                self._durable(store.event, sid, "reconnect_attempt",
                              message=f"attempt {item.attempt} in {item.delay_s:.1f}s: {item.reason}")
            elif isinstance(item, Gap):  # the live source's gap is what the store keeps (streamer.gap.Gap)
                self._durable(store.add_gap, sid, item)
                if back_wall is not None:  # the feed is up again at the outage's end
                    self.alerts.on_feed(True, media_s=item.end_s, wall_s=back_wall)
                    back_wall = None
            elif isinstance(item, BaseException):
                if (clip := builder.flush()) is not None:  # what decoded cleanly is kept
                    self._store(clip, mem)
                raise item
        if (clip := builder.flush()) is not None:  # end of source or StopStream: nothing sampled is lost
            self._store(clip, mem)
        if mem.since_snapshot != 0 and mem.version >= max(0, self.replay_until - 1) \
                and not self.rt.settings.working_deltas:
            # the final memory, kept whole (replicas, later questions; also one merged in after a resume and never
            # stored since); with deltas the log has it already
            self._durable(store.put_working, sid, mem.state, mem.version, fence=self.fence)
            mem.since_snapshot = 0

    def _store(self, clip: Clip, mem: _Memory) -> None:
        rt, sid = self.rt, self.rec.stream_id
        key = clip.keyframe
        novelty = clip.novelty[key] if clip.novelty else 0.0
        # the frame index describes the clip on the worker's describe thread while the model encodes it (OCR and
        # labels overlap the prefill; one clip at a time, so the stream's memo of read frames stays in order)
        described = None
        describer = rt.describer  # a resumed stream is described only by the models that described its first chunks
        if (clip.index >= self.replay_until and self.memory.frame_index and describer is not None
                and describer.fingerprint == self.rec.frames_fingerprint):
            described = self._describe_pool().submit(describer.describe, list(clip.frames), keyframe=key,
                                                     memo=self.describe_memo)
        said = self._said(clip)  # what was said (its own thread transcribed it while the video went on)
        # batched with other streams' ready clips (services/scheduler.py); the result stays on the model's device
        enc = rt.encoder.encode(ClipRequest(clip.frames, self.rec.fps, clip.start_s, clip.end_s,
                                            context(mem.prefix, mem.state), key_rows=self.memory.retrieval_keys,
                                            speech=" ".join(t for _, _, t in said)),
                                stream=self.rec.stream_id)
        t0 = time.perf_counter()  # timed around the step (metrics), never inside it
        done = step(mem.prefix, mem.state, enc, novelty, self.memory)
        rt.metrics.memory_step_seconds.observe(time.perf_counter() - t0)
        if clip.index < self.replay_until:  # stored before a restart: only the memory is rebuilt
            self.frames_total += len(clip.frames)
            mem.state, mem.version = done.state, clip.index
            rt.resident.publish(sid, mem.prefix, done.state, clip.index)
            return
        desc = described.result() if described is not None else None
        text_jpeg, text_s = text_frame(clip, desc)
        self.frames_total += len(clip.frames)
        record = ChunkRecord(
            chunk_id=clip.index, start_s=clip.start_s, end_s=clip.end_s, frames=len(clip.frames),
            tokens=done.chunk.length, keyframe_s=clip.times[key], wall_start=clip.wall_start,
            wall_end=clip.wall_end, cuts=clip.cuts, novelty=novelty, redundant=clip.redundant,
            static=round(clip.static, 4), span_start=done.span[0], span_end=done.span[1],
            text=" | ".join(desc.text.splitlines()) if desc else "",
            labels=", ".join(f"{name} ({p:.2f})" for name, p in desc.labels) if desc else "", text_frame_s=text_s,
            speech=said,
        )
        dense = {**(dict(desc.vectors) if desc else {}), **self._speech_vector(said)}
        d = clip.checkpoint
        checkpoint = Checkpoint(next_clip=clip.index + 1, after_s=clip.times[-1], frames_total=self.frames_total,
                                last_wall_s=clip.wall_end, next_tick=d.next_tick if d else None,
                                next_index=d.next_index if d else None)
        lag = max(0.0, time.time() - clip.wall_end) if clip.wall_end is not None and self.plan.live else None
        # the working memory: a snapshot every `working_snapshot_chunks` chunks; in between, the tokens that
        # entered (a delta) when `working_deltas` is on, else nothing
        working = working_write(mem.state, done.state, mem.since_snapshot, rt.settings.working_snapshot_chunks,
                                rt.settings.working_deltas)
        snapshot = isinstance(working, WorkingState)
        self._put_chunk(rt.store.prepare_chunk(
            sid, record, done.chunk, enc.segment.retrieval, jpeg(clip.frames[key]), self.frames_total,
            fence=self.fence, dense=dense or None, working=working, int8=self.memory.kv_int8,
            checkpoint=checkpoint, detector_state=d.detector if d else b"",
            progress=IngestProgress(self.queue.dropped, lag), counters=done.state, text_jpeg=text_jpeg))
        mem.since_snapshot = 0 if snapshot else mem.since_snapshot + 1
        mem.state, mem.version = done.state, clip.index  # only once stored: what resumes is what ingest continues from
        rt.resident.publish(sid, mem.prefix, done.state, clip.index)
        self.alerts.on_chunk(record, dense or None)
        self._transcript_event(record)
        self._durable(rt.store.enforce_retention, sid, Retention.of(self.memory), fence=self.fence)

    def _put_chunk(self, w: ChunkWrite) -> None:
        """Store a chunk. When the store says it skips the next id (the store lost chunks it had acknowledged:
        a Redis restarted from an older snapshot or a lost append-only write, a replica promoted before it had
        them), the lost ones still held here are sent again in order, then this one; StoreLostChunks when they
        are not held any more."""
        store, sid = self.rt.store, self.rec.stream_id
        try:
            self._durable(store.send_chunk, w)
        except ChunkGap as exc:
            ck = self._durable(store.checkpoint, sid)
            have = ck[0].next_clip if ck else 0
            held = {s.chunk_id: s for s in self._sent}
            lost = list(range(have, w.chunk_id))
            if not lost or any(c not in held for c in lost):
                raise StoreLostChunks(
                    f"the store lost chunks {have}..{w.chunk_id - 1} after acknowledging them (see Redis "
                    f"persistence in docs/operations.md); this worker keeps only the last {self._sent.maxlen} to send "
                    "again") from exc
            log.warning("stream %s: the store lost chunks %d..%d after acknowledging them (its persistence); "
                        "sending them again", sid, have, w.chunk_id - 1)
            self.rt.metrics.store_error("ingest")
            for cid in lost:
                self._durable(store.send_chunk, held[cid])
            self._durable(store.send_chunk, w)
        self._sent.append(w)


def text_frame(clip: Clip, desc) -> tuple[bytes, float | None]:
    """(JPEG, media time) of the frame the clip's on-screen text was read in, when the keyframe does not show it
    (`FrameDescription.text_frame`); (b"", None) otherwise: at most one extra JPEG a chunk, only for such text."""
    i = desc.text_frame if desc is not None else None
    if i is None or i == clip.keyframe:
        return b"", None
    return jpeg(clip.frames[i]), clip.times[i]


def resume_point(checkpoint: tuple[Checkpoint, bytes] | None) -> Resume | None:
    """The Resume a stored checkpoint describes (None: nothing stored yet, start over)."""
    if checkpoint is None:
        return None
    c, detector = checkpoint
    return Resume(next_clip=c.next_clip, after_s=c.after_s, last_wall_s=c.last_wall_s, frames_total=c.frames_total,
                  decode=DecodeState(c.next_tick, c.next_index, detector))
