"""Stream records: create, read, page through, change state (fenced), delete; the set of active streams.

What spans streams (`{ns}:streams`, `{ns}:active`, `{ns}:names`) lives in keys of its own slot, never in a
script or transaction with a stream's keys (one Redis Cluster slot per stream): it is updated with single-key
commands next to the stream's own atomic write, in an order that keeps each registry a superset of the truth
(a stream is added before its record is written and removed after it is deleted or left an active state), and
it is reconciled on read against the records (`active_ids` keeps only streams whose record says active, and
prunes the rest). So a process that dies between the two writes leaves at worst a stale entry that readers
skip, never a stream that adoption cannot find; the fencing (the lease checked in the state script) is
unchanged."""
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
        reg = self.r.pipeline(transaction=False)  # the registries first (other slots): supersets of the records
        reg.zadd(self._streams, {rec.stream_id: rec.created})
        if rec.state.active:
            reg.sadd(self._active, rec.stream_id)
        reg.execute()
        pipe = self.r.pipeline(transaction=True)  # the stream's own keys (one slot), at once
        pipe.hset(self._k(rec.stream_id, "meta"), mapping=rec.to_hash())
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
        if state.active:  # in the active set before the record says so (a superset: adoption never misses it)
            self.r.sadd(self._active, sid)
        got = self._set_state(
            keys=[self._k(sid, "meta"), self._k(sid, "events"), self._k(sid, "lease")],
            args=[fence or "", json.dumps(state.value), EVENTS_MAXLEN, json.dumps(time.time()), error or "",
                  len(changes), *pairs])
        if got == -1:
            raise LeaseLost(f"stream {sid}: the lease is no longer this worker's")
        if got == -2:
            raise _not_found(sid)
        if state.active:
            self.r.sadd(self._active, sid)  # again: a racing change to an inactive state may have removed it
        else:
            self._prune_active([sid])

    def _states(self, ids: list[str]) -> list[StreamState | None]:
        """Each stream's state from its record (None: no record), read in one round trip (fanned out per node)."""
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hget(self._k(sid, "meta"), "state")
        return [StreamState(json.loads(v)) if v is not None else None for v in pipe.execute()]

    def _prune_active(self, ids: list[str]) -> None:
        """Remove streams that are not active from the active set, then read their records again and put back any
        that a racing change made active meanwhile (that change adds it too, but may have done so before our
        removal)."""
        if not ids:
            return
        self.r.srem(self._active, *ids)
        back = [sid for sid, st in zip(ids, self._states(ids)) if st is not None and st.active]
        if back:
            self.r.sadd(self._active, *back)

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
        ids = sorted(i.decode() for i in self.r.smembers(self._active))
        states = self._states(ids)
        self._prune_active([sid for sid, st in zip(ids, states) if st is None or not st.active])
        return [sid for sid, st in zip(ids, states) if st is not None and st.active]

    def index_active(self) -> int:
        """Build the active set once for streams stored before it existed (idempotent; cheap when built)."""
        marker = f"{self.ns}:active:built"
        if self.r.exists(marker):
            return 0
        recs = self.list_streams()
        pipe = self.r.pipeline(transaction=False)  # keys of the namespace's own (single-key commands)
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
        removed = int(pipe.execute()[0])
        reg = self.r.pipeline(transaction=False)  # then the registries (other slots)
        reg.zrem(self._streams, sid)
        reg.srem(self._active, sid)
        reg.execute()
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
