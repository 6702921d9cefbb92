"""One stream's ingest pipeline: source -> sampler -> keyframe detector -> [queue] -> clips -> encoder -> store.

The decode side runs in its own thread and hands sampled, scored frames (and control events:
connects, disconnects, gaps, the end) to the encode side over a `FrameQueue`: a file is paced,
a live source never waits and loses frames evenly instead. After every stored chunk the store
moves the stream's checkpoint in the same transaction, so a killed process resumes exactly
after the last stored chunk.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

from encoders.base import EncodedSegment
from memory.store import ChunkRecord, StreamRecord
from memory.working import WorkingState, context, step
from services.runtime import Runtime
from streamer.backpressure import FrameQueue
from streamer.errors import SourceError
from streamer.keyframes import DetectorConfig, SceneDetector
from streamer.live import Connected, Disconnected, Gap, LiveOptions, LiveSource, Reconnecting
from streamer.push import ByteFeed
from streamer.frontend import scored_frames
from streamer.sampling import Clip, ClipBuilder, DecodeState, SampledFrame, Sampler, jpeg
from streamer.source import AvSource, DecodedFrame, FileSource

log = logging.getLogger("vigil.ingest")


class _Memory:
    """The stream's prefix and working memory as ingest advances them (one per worker)."""

    def __init__(self, prefix: EncodedSegment, state: WorkingState) -> None:
        self.prefix, self.state = prefix, state


class _End:
    """The source ended cleanly."""


@dataclass(frozen=True)
class Plan:
    """What a worker ingests and how."""
    kind: str  # file | live | push
    live: bool  # drop evenly when behind (live, live push) instead of pacing the source
    path: Path | None = None
    url: str | None = None
    feed: ByteFeed | None = None
    format: str | None = None
    reader: str = "pyav"  # files: pyav | decord


@dataclass(frozen=True)
class Resume:
    """Where a stream continues after a restart (from the store's checkpoint)."""
    next_clip: int
    after_s: float  # media time of the last stored frame
    last_wall_s: float | None
    frames_total: int
    decode: DecodeState


class Controls:
    """How the outside asks a worker to end. `stop()`: final (StopStream): the pending partial clip
    is stored and the state becomes stopped. `release()`: leave the stream resumable (server
    shutdown, lease lost): no state change, no partial clip, the checkpoint stays where it is."""

    def __init__(self) -> None:
        self.ending = threading.Event()  # what the decode side and the live source wait on
        self.final = False

    def stop(self) -> None:
        self.final = True
        self.ending.set()

    def release(self) -> None:
        self.ending.set()

    @property
    def released(self) -> bool:
        return self.ending.is_set() and not self.final


def _is_frame(item) -> bool:
    return isinstance(item, SampledFrame)


class StreamWorker:
    def __init__(self, rt: Runtime, rec: StreamRecord, plan: Plan, controls: Controls,
                 resume: Resume | None = None) -> None:
        self.rt, self.rec, self.plan, self.controls, self.resume = rt, rec, plan, controls, resume
        s = rt.settings
        self.detector_cfg = DetectorConfig(**s.detector.model_dump())
        self.queue = FrameQueue(s.queue_frames, live=plan.live, is_frame=_is_frame)
        self.memory = rec.memory  # the stream's own options, recorded at start (not this server's settings)
        self.ending = controls.ending

    # ---- decode side (its own thread) -------------------------------------------------------
    def _decoded(self):
        """Decoded frames and live control events from the plan's source."""
        p, r = self.plan, self.resume
        after = r.after_s if r else None
        if p.kind == "live":
            opts: LiveOptions = self.rt.settings.live.options()
            resume = (r.after_s, r.last_wall_s or time.time()) if r else None
            yield from LiveSource(p.url, opts, resume=resume).events(self.ending)
            return
        if p.kind == "push":
            with AvSource(p.feed, self.rec.source, format=p.format) as src:  # source reads "push:<name>"
                for f in src.frames():
                    yield DecodedFrame(f.time_s, f.frame, time.time()) if p.live else f
            return
        if p.reader == "decord":
            from streamer.decord_source import DecordSource

            with DecordSource(p.path) as src:
                yield from src.frames(self.rec.fps, after_s=after)
            return
        with FileSource(p.path) as src:
            yield from src.frames(after_s=after)

    def _decode(self) -> None:
        r = self.resume
        sampler = Sampler(self.rec.fps, r.decode.next_tick, r.decode.next_index) if r else Sampler(self.rec.fps)
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
        q.put(_End(), ending)

    # ---- encode side (the worker's thread) --------------------------------------------------
    def run(self) -> None:
        rt, sid, store = self.rt, self.rec.stream_id, self.rt.store
        try:
            mem = self._memory()
            decoder = threading.Thread(target=self._decode, name=f"decode-{sid}", daemon=True)
            decoder.start()
            if self.plan.kind != "live":
                store.set_state(sid, "running", error="")
            self._consume(mem)
            decoder.join(rt.settings.live.read_timeout_s + 5)
            if self.controls.released:
                return  # resumable: state and checkpoint stay as they are
            store.set_state(sid, "stopped" if self.controls.final else "finished")
        except SourceError as exc:
            log.warning("stream %s failed: %s", sid, exc)
            store.set_state(sid, "failed", error=str(exc))
        except Exception as exc:  # recorded, never silent: the stream shows it and the log has the trace
            log.exception("stream %s failed", sid)
            store.set_state(sid, "failed", error=f"internal error: {exc.__class__.__name__}: {exc}")
        finally:
            if not self.controls.ending.is_set():
                self.controls.stop()
            if self.plan.feed is not None:
                self.plan.feed.reader_done()

    def _memory(self) -> _Memory:
        """A new stream's prefix and empty working memory, or a resumed one's, exactly as stored with
        its last chunk."""
        rt, sid, store = self.rt, self.rec.stream_id, self.rt.store
        if self.resume is None:
            with rt.model_lock:
                prefix = rt.adapter.encode_prefix()
            store.put_prefix(sid, prefix)
            return _Memory(prefix, WorkingState.empty(prefix))
        prefix = store.get_prefix(sid)
        return _Memory(prefix, store.get_working(sid) or WorkingState.empty(prefix))

    def _consume(self, mem: _Memory) -> None:
        r, store, sid = self.resume, self.rt.store, self.rec.stream_id
        period = 1.0 / self.rec.fps
        builder = ClipBuilder(self.rec.clip_frames, period, self.rt.settings.min_clip_frames, r.next_clip if r else 0)
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
                if (clip := builder.push(item)) is not None:
                    self._store(clip, mem)
            elif isinstance(item, _End):
                break
            elif isinstance(item, Connected):
                if store.get_stream(sid).state == "reconnecting":  # back after an outage
                    self.rec.reconnects += 1
                store.set_state(sid, "running", error="", reconnects=self.rec.reconnects)
            elif isinstance(item, Disconnected):
                if (clip := builder.flush()) is not None:  # a chunk never spans an outage
                    self._store(clip, mem)
                store.set_state(sid, "reconnecting", error=item.reason)
            elif isinstance(item, Reconnecting):
                store.event(sid, "reconnect_attempt",
                            message=f"attempt {item.attempt} in {item.delay_s:.1f}s: {item.reason}")
            elif isinstance(item, Gap):
                store.add_gap(sid, {"start_s": item.start_s, "end_s": item.end_s, "wall_start": item.wall_start,
                                    "wall_end": item.wall_end, "reason": item.reason})
            elif isinstance(item, BaseException):
                if (clip := builder.flush()) is not None:  # what decoded cleanly is kept
                    self._store(clip, mem)
                raise item
        if (clip := builder.flush()) is not None:  # end of source or StopStream: nothing sampled is lost
            self._store(clip, mem)

    def _store(self, clip: Clip, mem: _Memory) -> None:
        rt, sid = self.rt, self.rec.stream_id
        key = clip.keyframe
        novelty = clip.novelty[key] if clip.novelty else 0.0
        with rt.model_lock:
            enc = rt.adapter.ingest_clip(clip.frames, self.rec.fps, clip.start_s, clip.end_s,
                                         context(mem.prefix, mem.state), key_rows=self.memory.retrieval_keys)
            done = step(mem.prefix, mem.state, enc, novelty, self.memory)
        desc = None
        describer = rt.describer  # a resumed stream is described only by the models that described its first chunks
        if self.memory.frame_index and describer is not None and describer.fingerprint == self.rec.frames_fingerprint:
            desc = describer.describe(list(clip.frames), keyframe=key)
        self.frames_total += len(clip.frames)
        record = ChunkRecord(
            chunk_id=clip.index, start_s=clip.start_s, end_s=clip.end_s, frames=len(clip.frames),
            tokens=done.chunk.length, keyframe_s=clip.times[key], wall_start=clip.wall_start,
            wall_end=clip.wall_end, cuts=clip.cuts, novelty=novelty, redundant=clip.redundant,
            static=round(clip.static, 4), span_start=done.span[0], span_end=done.span[1],
            text=" | ".join(desc.text.splitlines()) if desc else "",
            labels=", ".join(f"{name} ({p:.2f})" for name, p in desc.labels) if desc else "",
        )
        d = clip.checkpoint
        checkpoint = {
            "next_clip": clip.index + 1, "after_s": clip.times[-1], "last_wall_s": clip.wall_end,
            "frames_total": self.frames_total,
            **({"next_tick": d.next_tick, "next_index": d.next_index} if d else {}),
        }
        progress = {"dropped": self.queue.dropped}
        if clip.wall_end is not None and self.plan.live:
            progress["lag_s"] = max(0.0, time.time() - clip.wall_end)
        rt.store.put_chunk(sid, record, done.chunk, enc.segment.retrieval, jpeg(clip.frames[key]), self.frames_total,
                           dense=dict(desc.vectors) if desc else None, working=done.state, int8=self.memory.kv_int8,
                           checkpoint=checkpoint,
                           detector_state=d.detector if d else b"", progress=progress)
        mem.state = done.state  # only once stored: what resumes is what ingest continues from
        rt.store.enforce_retention(sid, self.memory.retention())


def resume_point(checkpoint: tuple[dict, bytes] | None) -> Resume | None:
    """The Resume a stored checkpoint describes (None: nothing stored yet, start over)."""
    if checkpoint is None:
        return None
    c, detector = checkpoint
    return Resume(next_clip=c["next_clip"], after_s=c["after_s"], last_wall_s=c.get("last_wall_s"),
                  frames_total=c["frames_total"],
                  decode=DecodeState(c["next_tick"], c["next_index"], detector))
