"""Stream records: create, read, page through, change state (fenced), delete; the set of active streams."""
from __future__ import annotations

import json
import time

from memory import errors
from memory.errors import StreamNotFound
from memory.store import scripts
from memory.store.keys import EVENTS_MAXLEN, STREAM_ID, STREAM_KEYS, StoreBase
from memory.store.leases import LeaseLost
from memory.store.records import StreamRecord, StreamState

DELETE_BATCH = 512  # keys per DEL round trip when a stream is deleted


def _not_found(sid: str) -> StreamNotFound:
    return StreamNotFound(f"no stream with id {errors.clipped(sid)}")


class Streams(StoreBase):
    def _init_streams(self) -> None:
        self._set_state = self.r.register_script(scripts.SET_STATE)

    def create_stream(self, rec: StreamRecord, source_url: str | None = None) -> None:
        """`source_url`: the source as the worker must open it (credentials included) when `rec.source` is a
        redacted form of it; kept in its own key, never returned by the API."""
        if not STREAM_ID.match(rec.stream_id):
            raise ValueError(f"invalid stream id {errors.clipped(rec.stream_id)}")
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k(rec.stream_id, "meta"), mapping=rec.to_hash())
        pipe.zadd(self._streams, {rec.stream_id: rec.created})
        if rec.state.active:
            pipe.sadd(self._active, rec.stream_id)
        if source_url is not None and source_url != rec.source:
            pipe.set(self._k(rec.stream_id, "source"), source_url)
        pipe.execute()

    def source_url(self, sid: str) -> str:
        """What the worker opens: the credentialed URL when one was kept, else the record's source."""
        raw = self.r.get(self._k(sid, "source"))
        return raw.decode() if raw is not None else self.get_stream(sid).source

    def update_stream(self, sid: str, **changes) -> None:
        changes["updated"] = time.time()
        self.r.hset(self._k(sid, "meta"), mapping={k: json.dumps(v) for k, v in changes.items()})

    def set_state(self, sid: str, state: StreamState | str, error: str | None = None, *, fence: str | None = None,
                  **changes) -> None:
        """Change the state (and the error text when given), keep the active set in step, and publish the
        change to watchers. `fence`: the writer's lease token (an ingest worker's writes); LeaseLost when the
        lease is no longer its own. Unfenced: an operator's stop, or a stream no worker owns."""
        state = StreamState(state)
        if error is not None:
            changes["error"] = error
        pairs = [x for k, v in changes.items() for x in (k, json.dumps(v))]
        got = self._set_state(
            keys=[self._k(sid, "meta"), self._k(sid, "events"), self._active, self._k(sid, "lease")],
            args=[fence or "", sid, json.dumps(state.value), "1" if state.active else "0", EVENTS_MAXLEN,
                  json.dumps(time.time()), error or "", len(changes), *pairs])
        if got == -1:
            raise LeaseLost(f"stream {sid}: the lease is no longer this worker's")
        if got == -2:
            raise _not_found(sid)

    def get_stream(self, sid: str) -> StreamRecord:
        h = self.r.hgetall(self._k(sid, "meta")) if STREAM_ID.match(sid or "") else {}
        if not h:
            raise _not_found(sid)
        return StreamRecord.from_hash(h)

    def _records(self, ids: list[str]) -> list[StreamRecord]:
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self._k(sid, "meta"))
        return [StreamRecord.from_hash(h) for h in pipe.execute() if h]

    def list_streams(self) -> list[StreamRecord]:
        return self._records([i.decode() for i in self.r.zrange(self._streams, 0, -1)])

    def page_streams(self, size: int, after: str = "") -> tuple[list[StreamRecord], str]:
        """Up to `size` streams in creation order, starting after the stream id `after` ("" = from the first),
        and the id to continue after ("" when this page is the last). A continuation id that was deleted
        meanwhile continues from the streams created after it."""
        start = 0
        if after:
            rank = self.r.zrank(self._streams, after)
            if rank is not None:
                start = rank + 1
            else:
                raise _not_found(after)
        ids = [i.decode() for i in self.r.zrange(self._streams, start, start + size)]  # one more: is there a next?
        more = len(ids) > size
        ids = ids[:size]
        return self._records(ids), (ids[-1] if more and ids else "")

    def count_streams(self) -> int:
        return int(self.r.zcard(self._streams))

    def active_ids(self) -> list[str]:
        """Streams in an active state (what an ingest worker owns or should adopt), from the active set."""
        return sorted(i.decode() for i in self.r.smembers(self._active))

    def index_active(self) -> int:
        """Build the active set once for streams stored before it existed (idempotent; cheap when built)."""
        marker = f"{self.ns}:active:built"
        if self.r.exists(marker):
            return 0
        recs = self.list_streams()
        pipe = self.r.pipeline(transaction=True)
        for rec in recs:
            if rec.state.active:
                pipe.sadd(self._active, rec.stream_id)
        pipe.set(marker, "1")
        pipe.execute()
        return sum(r.state.active for r in recs)

    def delete_stream(self, sid: str) -> int:
        """Remove the stream: its record, lease (so its worker's next fenced write fails and it lets go),
        memory, chunks, keyframes, events and gaps. Returns the number of keys removed."""
        if not STREAM_ID.match(sid or "") or not self.r.exists(self._k(sid, "meta")):
            raise _not_found(sid)
        pipe = self.r.pipeline(transaction=True)  # first the record and lease: no fenced write lands after this
        pipe.delete(self._k(sid, "meta"), self._k(sid, "lease"))
        pipe.zrem(self._streams, sid)
        pipe.srem(self._active, sid)
        removed = int(pipe.execute()[0])
        chunk_keys = [self._chunk_key(sid, int(c)) for c in self.r.zrange(self._k(sid, "chunks"), 0, -1)]
        keys = chunk_keys + [self._k(sid, s) for s in STREAM_KEYS]
        for i in range(0, len(keys), DELETE_BATCH):
            removed += int(self.r.delete(*keys[i:i + DELETE_BATCH]))
        return removed

    # ---- camera names (services/cameras.py): {ns}:names hash, name -> stream id -----------------------------
    @property
    def _names(self) -> str:
        return f"{self.ns}:names"

    def set_name(self, name: str, sid: str) -> None:
        """Map a camera's name to the stream it runs as (written when the camera's stream is created)."""
        self.r.hset(self._names, name, sid)

    def stream_for_name(self, name: str) -> str | None:
        """The stream id a camera's name maps to (None: no camera of that name)."""
        if not name or len(name) > 64:
            return None
        raw = self.r.hget(self._names, name)
        return raw.decode() if raw is not None else None

    def names(self) -> dict[str, str]:
        """Every camera name -> its stream id."""
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self._names).items()}

    def name_of(self, sid: str) -> str | None:
        """The camera name that maps to `sid` (None: the stream is no named camera's)."""
        return next((n for n, s in self.names().items() if s == sid), None)

    def forget_names(self, sid: str) -> int:
        """Drop the names that map to `sid` (its stream was deleted). Returns how many."""
        gone = [n for n, s in self.names().items() if s == sid]
        return int(self.r.hdel(self._names, *gone)) if gone else 0

    def lock_name(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take the short start-up lock of a camera's name (so two servers do not both start it)."""
        return bool(self.r.set(f"{self._names}:lock:{name}", owner, nx=True, px=ttl_ms))

    def unlock_name(self, name: str, owner: str) -> None:
        """Release the lock if it is still `owner`'s (compare and delete, atomically)."""
        self.r.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                    1, f"{self._names}:lock:{name}", owner)
