"""Ingest workers: start, push, stop, and resume streams; one `StreamWorker` thread per stream.

Each stream is owned through a lease in Redis, renewed by a heartbeat. A stream left in an
active state with no live lease (its process was killed, or shut down) is adopted by the next
ingest server that scans for it and resumed from its checkpoint: a file continues after its
last stored chunk, a live camera continues at the live edge with the outage recorded as a gap.
A stream's failure is recorded in its own state; other streams go on.
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

from memory.options import MemoryOptions
from memory.store import ACTIVE, StreamRecord
from services.errors import InvalidRequest, LimitExceeded
from services.paths import confine
from services.pipeline import Controls, Plan, StreamWorker, resume_point
from services.runtime import Runtime
from streamer.errors import SourceError
from streamer.live import is_live_url, probe_live
from streamer.push import ByteFeed
from streamer.source import probe

log = logging.getLogger("vigil.ingest")
PUSH_FORMATS = ("mpegts", "mp4")


@dataclass
class _Running:
    thread: threading.Thread
    controls: Controls
    plan: Plan


class IngestManager:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.owner = f"{uuid.uuid4().hex[:8]}"
        self._workers: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._leases = threading.Thread(target=self._lease_loop, name="ingest-leases", daemon=True)
        self._leases.start()

    # ---- requests ---------------------------------------------------------------------------
    def _check(self, fps: float, clip_frames: int) -> tuple[float, int]:
        s = self.rt.settings
        fps = fps or s.fps
        clip_frames = clip_frames or s.clip_frames
        if not (0 < fps <= 30):
            raise InvalidRequest(f"fps must be in (0, 30], got {fps}")
        if not (2 <= clip_frames <= 64) or clip_frames % self.rt.adapter.clip_frames():
            raise InvalidRequest(f"clip_frames must be an even number in [2, 64], got {clip_frames}")
        return fps, clip_frames

    def _memory(self, overrides: dict | None) -> MemoryOptions:
        """The stream's memory options: the server's defaults with the request's overrides (None: keep),
        validated by MemoryOptions itself (InvalidMemoryOptions: INVALID_ARGUMENT)."""
        return self.rt.settings.memory.with_overrides(**(overrides or {}))

    def _record(self, source: str, fps: float, clip_frames: int, kind: str, live: bool,
                duration_s: float = 0.0, memory: MemoryOptions | None = None) -> StreamRecord:
        spec, describer = self.rt.adapter.spec, self.rt.describer
        memory = memory or self.rt.settings.memory
        if describer is None and memory.frame_index:  # recorded as it runs: this process has no frame index
            memory = memory.with_overrides(frame_index=False)
        return StreamRecord(
            stream_id=uuid.uuid4().hex[:12], source=source, fps=fps, clip_frames=clip_frames, model=spec.name,
            random_weights=spec.random_weights, source_duration_s=duration_s, kind=kind, live=live,
            memory=memory, frames_fingerprint=describer.fingerprint if memory.frame_index else "",
        )

    def start(self, source: str, fps: float = 0.0, clip_frames: int = 0, memory: dict | None = None) -> StreamRecord:
        """Start a file or rtsp:// stream; the source is checked (opened, one frame decoded) first.
        `memory`: per-stream overrides of the memory settings (None values: server default)."""
        s = self.rt.settings
        fps, clip_frames = self._check(fps, clip_frames)
        memory = self._memory(memory)  # bad memory options fail before the source is touched
        if is_live_url(source):
            if len(source) > 2048 or any(c.isspace() for c in source):
                raise InvalidRequest("the URL is too long or contains whitespace")
            probe_live(source, s.live.options())
            rec = self._record(source, fps, clip_frames, "live", live=True, memory=memory)
            plan = Plan(kind="live", live=True, url=source)
        elif "://" in source:
            raise InvalidRequest(f"unsupported URL scheme in {source.split('://')[0]!r}: use rtsp:// or rtsps://, "
                                 "a file path, or PushStream")
        else:
            path = confine(source, s.media_roots, s.max_file_bytes)
            info = probe(path)
            if info.duration_s and info.duration_s > s.max_source_duration_s:
                raise LimitExceeded(f"{path.name}: {info.duration_s:.0f}s is over the limit of "
                                    f"{s.max_source_duration_s:.0f}s")
            rec = self._record(str(path), fps, clip_frames, "file", live=False, duration_s=info.duration_s or 0.0,
                               memory=memory)
            plan = Plan(kind="file", live=False, path=path, reader=s.reader)
        self._launch(rec, plan, resume=None, create=True)
        return rec

    def start_push(self, name: str, fmt: str, fps: float, clip_frames: int, live: bool,
                   memory: dict | None = None) -> tuple[StreamRecord, ByteFeed]:
        """Create a pushed stream; the caller writes its bytes into the returned feed, then closes it."""
        fps, clip_frames = self._check(fps, clip_frames)
        memory = self._memory(memory)
        fmt = fmt or "mpegts"
        if fmt not in PUSH_FORMATS:
            raise InvalidRequest(f"push format must be one of {PUSH_FORMATS}, got {fmt!r}")
        name = name.strip() or "client"
        if len(name) > 200 or not name.isprintable():
            raise InvalidRequest("push name must be 1-200 printable characters")
        feed = ByteFeed(self.rt.settings.push_buffer_bytes)
        rec = self._record(f"push:{name}", fps, clip_frames, "push", live=live, memory=memory)
        self._launch(rec, Plan(kind="push", live=live, feed=feed, format=fmt), resume=None, create=True)
        return rec, feed

    def wait(self, sid: str, timeout_s: float | None = None) -> None:
        with self._lock:
            w = self._workers.get(sid)
        if w is not None:
            w.thread.join(timeout_s)

    def stop(self, sid: str, timeout_s: float = 30.0) -> None:
        self.rt.store.get_stream(sid)  # NOT_FOUND for unknown ids
        with self._lock:
            w = self._workers.get(sid)
        if w is not None:
            w.controls.stop()
            if w.plan.feed is not None:
                w.plan.feed.abort("the stream was stopped")
            w.thread.join(timeout_s)
        else:
            rec = self.rt.store.get_stream(sid)
            if rec.state in ACTIVE:  # owned by no one here (e.g. another worker died): stop it for good
                self.rt.store.set_state(sid, "stopped")

    def shutdown(self) -> None:
        """Stop this process's workers, leaving their streams resumable by the next server."""
        self._closing.set()
        with self._lock:
            workers = list(self._workers.items())
        for _, w in workers:
            w.controls.release()
            if w.plan.feed is not None:
                w.plan.feed.abort("the server is shutting down")
        for sid, w in workers:
            w.thread.join(60)
            if w.plan.kind == "push":  # a pushed stream cannot be resumed: its sender is gone
                self.rt.store.set_state(sid, "failed", error="the server shut down during the push; the chunks "
                                        "stored so far are kept; push the rest as a new stream")
            self.rt.store.release(sid, self.owner)
        self._leases.join(5)

    # ---- workers ----------------------------------------------------------------------------
    def _launch(self, rec: StreamRecord, plan: Plan, resume, create: bool) -> None:
        s, store = self.rt.settings, self.rt.store
        with self._lock:
            self._workers = {k: w for k, w in self._workers.items() if w.thread.is_alive()}
            if len(self._workers) >= s.max_streams:
                raise LimitExceeded(f"{len(self._workers)} streams are running; the limit is {s.max_streams}")
            if create:
                store.create_stream(rec)
                store.claim(rec.stream_id, self.owner, self._ttl_ms)
            controls = Controls()
            worker = StreamWorker(self.rt, rec, plan, controls, resume)
            t = threading.Thread(target=self._run, args=(worker,), name=f"ingest-{rec.stream_id}", daemon=True)
            self._workers[rec.stream_id] = _Running(t, controls, plan)
            t.start()

    def _run(self, worker: StreamWorker) -> None:
        try:
            worker.run()
        finally:
            if not worker.controls.released:
                self.rt.store.release(worker.rec.stream_id, self.owner)

    @property
    def _ttl_ms(self) -> int:
        return int(self.rt.settings.lease_ttl_s * 1000)

    def _lease_loop(self) -> None:
        """Heartbeat: renew this process's leases; adopt active streams whose owner is gone."""
        period = self.rt.settings.lease_ttl_s / 3
        while not self._closing.wait(period):
            try:
                self._renew()
                self.adopt_orphans()
            except Exception:  # a Redis hiccup must not kill the heartbeat
                log.exception("lease heartbeat failed")

    def _renew(self) -> None:
        with self._lock:
            workers = [(sid, w) for sid, w in self._workers.items() if w.thread.is_alive()]
        for sid, w in workers:
            if not self.rt.store.renew(sid, self.owner, self._ttl_ms):
                log.warning("stream %s: lease lost to another worker; letting go", sid)
                w.controls.release()
            elif self.rt.store.get_stream(sid).state == "stopped":  # StopStream reached another ingest server
                w.controls.stop()

    def adopt_orphans(self) -> list[str]:
        """Resume every active stream that no live process owns. Returns the ids taken."""
        if self._closing.is_set():
            return []
        store, taken = self.rt.store, []
        for rec in store.list_streams():
            if rec.state not in ACTIVE:
                continue
            with self._lock:
                if rec.stream_id in self._workers and self._workers[rec.stream_id].thread.is_alive():
                    continue
            if not store.claim(rec.stream_id, self.owner, self._ttl_ms):
                continue
            try:
                self._adopt(rec)
                taken.append(rec.stream_id)
            except Exception as exc:
                log.warning("stream %s: cannot resume: %s", rec.stream_id, exc)
                store.set_state(rec.stream_id, "failed", error=f"could not resume after a restart: {exc}")
                store.release(rec.stream_id, self.owner)
        return taken

    def _adopt(self, rec: StreamRecord) -> None:
        s, store, sid = self.rt.settings, self.rt.store, rec.stream_id
        if rec.kind == "push":
            store.set_state(sid, "failed", error="the server restarted during the push; the chunks stored so far "
                            "are kept; push the rest as a new stream")
            store.release(sid, self.owner)
            return
        resume = resume_point(store.checkpoint(sid))
        if resume is None and rec.chunks:
            raise SourceError("the stream has chunks but no checkpoint")
        if rec.kind == "live":
            plan = Plan(kind="live", live=True, url=rec.source)
        else:
            path = confine(rec.source, s.media_roots, s.max_file_bytes)
            plan = Plan(kind="file", live=False, path=path, reader=s.reader)
        log.info("stream %s: resuming %s after %.2fs", sid, rec.kind, resume.after_s if resume else 0.0)
        store.event(sid, "resumed", message=f"resumed by worker {self.owner}")
        self._launch(rec, plan, resume=resume, create=False)
