"""Each stream's prompt prefix and working memory, resident on the model's device, at a version (the chunk id it
is the memory after): what questions are answered on, so an answer reads no memory it already holds.

* In the process that ingests a stream, its worker publishes the live memory after every stored chunk: a question
  there takes it as it is (one small version read; no memory bytes from Redis).
* A QA-only replica keeps the copy it last read and, per question, reads only the deltas stored since (or the
  newest snapshot once the log it would need was compacted away). Staleness: none; every question first reads the
  stored version, so it answers on the memory after the newest stored chunk.

Bounded by bytes (`max_bytes`): the least recently used streams are dropped and read again when asked; a stream
being ingested here is never dropped (its worker holds the same tensors anyway).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from encoders.base import EncodedSegment
from memory.store import MemoryStore, WorkingLoad
from memory.working import WorkingState


def state_bytes(state: WorkingState) -> int:
    t = state.tokens
    return sum(x.numel() * x.element_size() for x in (t.keys, t.values, t.positions, t.serial, t.score))


@dataclass
class _Entry:
    prefix: EncodedSegment | None
    load: WorkingLoad | None
    live: bool  # published by this process's ingest worker
    nbytes: int


class ResidentMemory:
    def __init__(self, store: MemoryStore, device: torch.device | str, max_bytes: int) -> None:
        self.store, self.device, self.max_bytes = store, device, max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.read_bytes = 0  # working-memory and prefix bytes read from Redis so far (tests, metrics)
        self.reads = 0  # questions that had to read memory bytes

    # ---- the ingesting worker ---------------------------------------------------------------
    def publish(self, sid: str, prefix: EncodedSegment, state: WorkingState, version: int, snapshot_bytes: int = 0,
                log_bytes: int = 0) -> None:
        """The worker's live memory after chunk `version` was stored (never moves a copy backwards)."""
        with self._lock:
            e = self._entries.get(sid)
            if e is not None and e.load is not None and e.load.version > version:
                return
            self._entries[sid] = _Entry(prefix, WorkingLoad(state, version, snapshot_bytes, log_bytes, 0), True,
                                        state_bytes(state))
            self._entries.move_to_end(sid)
            self._evict()

    def release(self, sid: str) -> None:
        """The worker let go or ended: the copy stays as any other (it may be dropped when space is needed)."""
        with self._lock:
            if (e := self._entries.get(sid)) is not None:
                e.live = False

    def drop(self, sid: str) -> None:
        with self._lock:
            self._entries.pop(sid, None)

    # ---- questions --------------------------------------------------------------------------
    def prefix(self, sid: str) -> EncodedSegment:
        with self._lock:
            e = self._entries.get(sid)
            if e is not None and e.prefix is not None:
                return e.prefix
        prefix = self.store.get_prefix(sid)
        nbytes = prefix.keys.numel() * prefix.keys.element_size() * 2
        prefix = prefix.to(self.device)
        with self._lock:
            self.read_bytes += nbytes
            e = self._entries.get(sid)
            if e is None:
                self._entries[sid] = e = _Entry(prefix, None, False, 0)
            e.prefix = prefix
        return prefix

    def working(self, sid: str) -> WorkingLoad | None:
        """The working memory after the newest stored chunk (None before the first), on the device."""
        with self._lock:
            e = self._entries.get(sid)
            have = e.load if e is not None else None
            if e is not None:
                self._entries.move_to_end(sid)
        got = self.store.load_working(sid, have)
        if got is None:
            return None
        if got.read_bytes == 0 and have is not None and got.version == have.version:
            return have
        got = WorkingLoad(got.state.to(self.device), got.version, got.snapshot_bytes, got.log_bytes, got.read_bytes)
        with self._lock:
            self.read_bytes += got.read_bytes
            self.reads += 1
            e = self._entries.get(sid)
            if e is None:
                self._entries[sid] = e = _Entry(None, None, False, 0)
            if e.load is None or e.load.version < got.version:
                e.load, e.nbytes = got, state_bytes(got.state)
            self._evict()
        return got

    def _evict(self) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        for sid in list(self._entries):
            if total <= self.max_bytes:
                return
            e = self._entries[sid]
            if e.live:
                continue
            total -= e.nbytes
            del self._entries[sid]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())
