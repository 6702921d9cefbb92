"""Ingest workers: start, push, stop, and resume streams; one `StreamWorker` thread per stream.

Each stream is owned through a lease in Redis, renewed by a heartbeat; the lease's token fences every
write of its worker. A stream left in an active state with no live lease (its process was killed, or
shut down) is adopted by the next ingest server with room for it that scans the active set, and resumed
from its checkpoint: a file continues after its last stored chunk, a live camera continues at the live
edge with the outage recorded as a gap. A stream's failure is recorded in its own state; other streams
go on. Redis being unreachable fails no stream: workers wait for it (`pipeline.StreamWorker._durable`).
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

from memory.options import MemoryOptions
from memory.store import SourceKind, StreamRecord, StreamState
from services.cameras import check_camera_host, push_name
from services.errors import InvalidRequest, LimitExceeded
from services.paths import confine
from services.pipeline import STORE_DOWN, Controls, Plan, StreamWorker, resume_point
from services.runtime import Runtime
from streamer.errors import SourceError
from streamer.live import is_live_url, probe_live
from streamer.redact import redact_url
from streamer.push import ByteFeed
from streamer.source import probe

log = logging.getLogger("vigil.ingest")
PUSH_FORMATS = ("mpegts", "mp4")


@dataclass
class _Running:
    thread: threading.Thread
    controls: Controls
    plan: Plan
    fence: str  # the lease token


class IngestManager:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.owner = f"{uuid.uuid4().hex[:8]}"
        self._workers: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._store_down = False  # the heartbeat's view: logged once per outage
        rt.store.index_active()  # streams stored before the active set existed
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

    def _record(self, source: str, fps: float, clip_frames: int, kind: SourceKind, live: bool,
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

    def start(self, source: str, fps: float = 0.0, clip_frames: int = 0, memory: dict | None = None,
              name: str | None = None) -> StreamRecord:
        """Start a file or rtsp:// stream; the source is checked (opened, one frame decoded) first.
        `memory`: per-stream overrides of the memory settings (None values: server default). `name`: a configured
        camera's name (services/cameras.py), mapped to the new stream as it is created."""
        s = self.rt.settings
        fps, clip_frames = self._check(fps, clip_frames)
        memory = self._memory(memory)  # bad memory options fail before the source is touched
        if is_live_url(source):
            if len(source) > 2048 or any(c.isspace() for c in source):
                raise InvalidRequest("the URL is too long or contains whitespace")
            check_camera_host(source, s.camera_hosts)  # before any connection: the refusal tells nothing
            probe_live(source, s.live)
            # the record (API, logs, events) shows the URL without its credentials; the worker's plan, and the
            # store's private key (create_stream's source_url, read back on adoption), keep the real one
            rec = self._record(redact_url(source), fps, clip_frames, SourceKind.LIVE, live=True, memory=memory)
            plan = Plan(kind=SourceKind.LIVE, live=True, url=source)
        elif "://" in source:
            raise InvalidRequest(f"unsupported URL scheme in {source.split('://')[0]!r}: use rtsp:// or rtsps://, "
                                 "a file path, or PushStream")
        else:
            file = confine(source, s.media_roots, s.max_file_bytes)  # open: what is checked is what is read
            try:
                info = probe(file.open_path, name=file.name)
                if info.duration_s and info.duration_s > s.max_source_duration_s:
                    raise LimitExceeded(f"{file.name}: {info.duration_s:.0f}s is over the limit of "
                                        f"{s.max_source_duration_s:.0f}s")
                rec = self._record(str(file.path), fps, clip_frames, SourceKind.FILE, live=False,
                                   duration_s=info.duration_s or 0.0, memory=memory)
            except BaseException:
                file.close()
                raise
            plan = Plan(kind=SourceKind.FILE, live=False, file=file, reader=s.reader)
        try:
            self._launch(rec, plan, resume=None, create=True, name=name)
        except BaseException:  # no worker took the file
            if plan.file is not None:
                plan.file.close()
            raise
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
        resolvable = push_name(name, self.rt.settings.cameras) if name != "client" else None
        feed = ByteFeed(self.rt.settings.push_buffer_bytes)
        rec = self._record(f"push:{name}", fps, clip_frames, SourceKind.PUSH, live=live, memory=memory)
        self._launch(rec, Plan(kind=SourceKind.PUSH, live=live, feed=feed, format=fmt), resume=None, create=True,
                     name=resolvable)
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
            if w.plan.feed is not None:  # a clean end of input, not an error: the stream ends stopped
                w.plan.feed.close()
            w.thread.join(timeout_s)
        else:
            rec = self.rt.store.get_stream(sid)
            if rec.state.active:  # owned by no one here (another server's worker sees it and stops)
                self.rt.store.set_state(sid, StreamState.STOPPED)

    def delete(self, sid: str, timeout_s: float = 30.0) -> int:
        """Stop the stream if it runs here, then remove everything stored of it (a worker on another server
        lets go at its next write: the lease is gone with the record). Returns the keys removed."""
        self.rt.store.get_stream(sid)  # NOT_FOUND for unknown ids
        with self._lock:
            w = self._workers.get(sid)
        if w is not None:
            w.controls.release()  # no final chunk, no state change: it is all going
            if w.plan.feed is not None:
                w.plan.feed.abort("the stream was deleted")
            w.thread.join(timeout_s)
        removed = self.rt.store.delete_stream(sid)
        self.rt.indexes.drop(sid)
        self.rt.resident.drop(sid)
        return removed

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
            try:
                if w.plan.kind == SourceKind.PUSH:  # a pushed stream cannot be resumed: its sender is gone
                    self.rt.store.set_state(sid, StreamState.FAILED, fence=w.fence,
                                            error="the server shut down during the push; the chunks stored so far "
                                            "are kept; push the rest as a new stream")
                self.rt.store.release(sid, w.fence)
            except Exception as exc:  # Redis down, lease lost, stream deleted: the lease lapses by itself
                log.warning("stream %s: could not hand back its lease at shutdown: %s", sid, exc.__class__.__name__)
        self._leases.join(5)

    # ---- workers ----------------------------------------------------------------------------
    def _running(self) -> int:
        """Live workers (under self._lock)."""
        self._workers = {k: w for k, w in self._workers.items() if w.thread.is_alive()}
        return len(self._workers)

    def _launch(self, rec: StreamRecord, plan: Plan, resume, create: bool, fence: str | None = None,
                name: str | None = None) -> None:
        """Start a worker: a new stream (`create`: stored and claimed here) or an adopted one (`fence`: the lease
        token already taken)."""
        s, store = self.rt.settings, self.rt.store
        with self._lock:
            if self._running() >= s.max_streams:
                raise LimitExceeded(f"{len(self._workers)} streams are running; the limit is {s.max_streams}")
            if create:
                store.create_stream(rec, source_url=plan.url)  # a live URL with credentials: kept privately
                fence = store.claim(rec.stream_id, self.owner, self._ttl_ms)
                if fence is None:  # cannot happen for a new id; never run unfenced
                    raise RuntimeError(f"stream {rec.stream_id}: could not take its new lease")
                if name is not None:  # before the worker: it reads its camera's alert rules by this name
                    store.set_name(name, rec.stream_id)
                log.info("stream %s%s started: %s (%s)", rec.stream_id, f" ({name!r})" if name else "",
                         redact_url(rec.source), rec.kind)
            controls = Controls()
            worker = StreamWorker(self.rt, rec, plan, controls, fence, resume)
            worker.name = name
            t = threading.Thread(target=self._run, args=(worker,), name=f"ingest-{rec.stream_id}", daemon=True)
            self._workers[rec.stream_id] = _Running(t, controls, plan, fence)
            t.start()

    def _run(self, worker: StreamWorker) -> None:
        try:
            worker.run()
        finally:
            if not worker.controls.released:
                try:
                    self.rt.store.release(worker.rec.stream_id, worker.fence)
                except STORE_DOWN:  # it lapses by itself
                    pass

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
                if self._store_down:
                    log.info("lease heartbeat: the store answers again")
                self._store_down = False
            except STORE_DOWN as exc:  # the workers wait for it; so does the heartbeat, logging it once
                if not self._store_down:
                    log.warning("lease heartbeat: the store is unreachable (%s); retrying", exc.__class__.__name__)
                self._store_down = True
            except Exception:  # nothing may kill the heartbeat
                log.exception("lease heartbeat failed")

    def _renew(self) -> None:
        with self._lock:
            workers = [(sid, w) for sid, w in self._workers.items() if w.thread.is_alive()]
        for sid, w in workers:
            if not self.rt.store.renew(sid, w.fence, self._ttl_ms):
                log.warning("stream %s: lease lost to another worker (or the stream was deleted); letting go", sid)
                w.controls.release()
            elif self.rt.store.get_stream(sid).state == StreamState.STOPPED:  # StopStream reached another server
                w.controls.stop()

    def adopt_orphans(self) -> list[str]:
        """Resume active streams that no live process owns, as many as this server has room for (it never
        claims a stream it cannot run). Reads the active set, not every record. Returns the ids taken."""
        if self._closing.is_set():
            return []
        store, taken = self.rt.store, []
        with self._lock:
            room = self.rt.settings.max_streams - self._running()
            mine = set(self._workers)
        if room <= 0:
            return []
        candidates = [sid for sid in store.active_ids() if sid not in mine]
        orphans = [sid for sid, held in zip(candidates, store.holders(candidates)) if not held]
        for sid in orphans:
            if len(taken) >= room:
                break
            fence = store.claim(sid, self.owner, self._ttl_ms)
            if fence is None:
                continue
            try:
                rec = store.get_stream(sid)
                if not rec.state.active:  # ended meanwhile
                    store.release(sid, fence)
                    continue
                if self._adopt(rec, fence):
                    taken.append(sid)
            except LimitExceeded:  # filled up meanwhile (a StartStream): leave it to another server
                store.release(sid, fence)
                break
            except STORE_DOWN:
                raise
            except Exception as exc:
                log.warning("stream %s: cannot resume: %s", sid, exc)
                store.set_state(sid, StreamState.FAILED, fence=fence, error=f"could not resume after a restart: {exc}")
                store.release(sid, fence)
        return taken

    def _adopt(self, rec: StreamRecord, fence: str) -> bool:
        """Resume an orphan whose lease was just taken (`fence`); False when it cannot be resumed (a push)."""
        s, store, sid = self.rt.settings, self.rt.store, rec.stream_id
        if rec.kind == SourceKind.PUSH:
            store.set_state(sid, StreamState.FAILED, fence=fence, error="the server restarted during the push; the "
                            "chunks stored so far are kept; push the rest as a new stream")
            store.release(sid, fence)
            return False
        resume = resume_point(store.checkpoint(sid))
        if resume is None and rec.chunks:
            raise SourceError("the stream has chunks but no checkpoint")
        if rec.kind == SourceKind.LIVE:
            plan = Plan(kind=SourceKind.LIVE, live=True, url=store.source_url(sid))
        else:
            plan = Plan(kind=SourceKind.FILE, live=False, file=confine(rec.source, s.media_roots, s.max_file_bytes),
                        reader=s.reader)
        log.info("stream %s adopted: resuming %s %s after %.2fs (its worker is gone)", sid, rec.kind,
                 redact_url(rec.source), resume.after_s if resume else 0.0)
        try:
            store.event(sid, "resumed", message=f"resumed by worker {self.owner}")
            self._launch(rec, plan, resume=resume, create=False, fence=fence, name=store.name_of(sid))
        except BaseException:  # no worker took the file
            if plan.file is not None:
                plan.file.close()
            raise
        return True
