"""File ingest: source -> sampler -> clip builder -> encoder -> store, one worker per stream.

Decode runs in its own thread and hands clips over a bounded queue, so a file is paced by the
encoder (nothing is dropped). A stream's failure is recorded in its state; other streams go on.
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from memory.context import RecentWindow
from memory.store import ChunkRecord, StreamRecord
from services.errors import InvalidRequest, LimitExceeded
from services.paths import confine
from services.runtime import Runtime
from streamer.errors import SourceError
from streamer.sampling import Clip, build_clips, jpeg, sample
from streamer.source import FileSource, probe

log = logging.getLogger("vigil.ingest")
_END = object()


@dataclass
class _Worker:
    thread: threading.Thread
    stop: threading.Event


class IngestManager:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()

    def start(self, source: str, fps: float = 0.0, clip_frames: int = 0) -> StreamRecord:
        s = self.rt.settings
        fps = fps or s.fps
        clip_frames = clip_frames or s.clip_frames
        if not (0 < fps <= 30):
            raise InvalidRequest(f"fps must be in (0, 30], got {fps}")
        if not (2 <= clip_frames <= 64) or clip_frames % self.rt.adapter.clip_frames():
            raise InvalidRequest(f"clip_frames must be an even number in [2, 64], got {clip_frames}")
        path = confine(source, s.media_roots, s.max_file_bytes)
        info = probe(path)
        if info.duration_s and info.duration_s > s.max_source_duration_s:
            raise LimitExceeded(f"{path.name}: {info.duration_s:.0f}s is over the limit of {s.max_source_duration_s:.0f}s")
        with self._lock:
            self._workers = {k: w for k, w in self._workers.items() if w.thread.is_alive()}
            running = len(self._workers)
            if running >= s.max_streams:
                raise LimitExceeded(f"{running} streams are running; the limit is {s.max_streams}")
            spec = self.rt.adapter.spec
            rec = StreamRecord(
                stream_id=uuid.uuid4().hex[:12], source=str(path), fps=fps, clip_frames=clip_frames,
                model=spec.name, random_weights=spec.random_weights, source_duration_s=info.duration_s or 0.0,
            )
            self.rt.store.create_stream(rec)
            stop = threading.Event()
            t = threading.Thread(target=self._run, args=(rec, path, stop), name=f"ingest-{rec.stream_id}", daemon=True)
            self._workers[rec.stream_id] = _Worker(t, stop)
            t.start()
        return rec

    def stop(self, sid: str, timeout_s: float = 30.0) -> None:
        self.rt.store.get_stream(sid)  # NOT_FOUND for unknown ids
        with self._lock:
            w = self._workers.get(sid)
        if w is not None:
            w.stop.set()
            w.thread.join(timeout_s)

    def shutdown(self) -> None:
        with self._lock:
            workers = list(self._workers.items())
        for _, w in workers:
            w.stop.set()
        for _, w in workers:
            w.thread.join(60)

    # ---- the worker -------------------------------------------------------------------
    @staticmethod
    def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
        """Wait for room (a file is paced by the encoder); give up once the stream is stopped."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self, path: Path, fps: float, clip_frames: int, out: queue.Queue, stop: threading.Event) -> None:
        try:
            with FileSource(path) as src:
                frames = sample(src.frames(), fps, self.rt.settings.frame_max_side)
                for clip in build_clips(frames, clip_frames, 1.0 / fps):
                    if not self._put(out, clip, stop):
                        return
        except BaseException as exc:  # handed to the encoder thread, which records it
            self._put(out, exc, stop)
            return
        self._put(out, _END, stop)

    def _run(self, rec: StreamRecord, path: Path, stop: threading.Event) -> None:
        rt, sid = self.rt, rec.stream_id
        store, adapter = rt.store, rt.adapter
        try:
            with rt.model_lock:
                prefix = adapter.encode_prefix()
            store.put_prefix(sid, prefix)
            window = RecentWindow(prefix, rt.settings.context_tokens)
            store.update_stream(sid, state="running")
            clips: queue.Queue = queue.Queue(maxsize=2)
            decoder = threading.Thread(target=self._decode, args=(path, rec.fps, rec.clip_frames, clips, stop),
                                       name=f"decode-{sid}", daemon=True)
            decoder.start()
            frames_total = 0
            while not stop.is_set():
                try:
                    item = clips.get(timeout=0.2)  # wakes up to notice a stop even when nothing comes
                except queue.Empty:
                    continue
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                frames_total += len(item.frames)
                self._store_clip(sid, item, window, rec.fps, frames_total)
            decoder.join(5)
            store.update_stream(sid, state="stopped" if stop.is_set() else "finished")
        except SourceError as exc:
            log.warning("stream %s failed: %s", sid, exc)
            store.update_stream(sid, state="failed", error=str(exc))
        except Exception as exc:  # recorded, never silent: the stream shows it and the log has the trace
            log.exception("stream %s failed", sid)
            store.update_stream(sid, state="failed", error=f"internal error: {exc.__class__.__name__}: {exc}")
        finally:
            stop.set()

    def _store_clip(self, sid: str, clip: Clip, window: RecentWindow, fps: float, frames_total: int) -> None:
        rt = self.rt
        with rt.model_lock:
            seg = rt.adapter.encode_clip(clip.frames, fps, clip.start_s, clip.end_s, window.memory())
        window.push(seg)
        record = ChunkRecord(
            chunk_id=clip.index, start_s=clip.start_s, end_s=clip.end_s, frames=len(clip.frames),
            tokens=seg.length, keyframe_s=clip.times[clip.keyframe],
        )
        rt.store.put_chunk(sid, record, seg, seg.retrieval, jpeg(clip.frames[clip.keyframe]), frames_total)
