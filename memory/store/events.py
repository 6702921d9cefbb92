"""A stream's event log (state changes, progress, gaps, retention) for WatchStream, and its gaps."""
from __future__ import annotations

import json
import time

from memory.store.keys import EVENTS_MAXLEN, StoreBase
from memory.store.records import Gap


class Events(StoreBase):
    def add_gap(self, sid: str, gap: Gap) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(self._k(sid, "gaps"), gap.to_json())
        pipe.zadd(self._k(sid, "gapz"), {gap.to_json(): gap.end_s})
        self._event(pipe, sid, "gap", gap=gap.to_json())
        pipe.execute()

    def gaps(self, sid: str, last: int = 0) -> list[Gap]:
        """Gaps oldest first; `last` > 0 returns only the newest `last`."""
        raw = self.r.lrange(self._k(sid, "gaps"), -last if last else 0, -1)
        return [Gap.from_json(g) for g in raw]

    def gaps_in(self, sid: str, lo: float, hi: float, cap: int = 64) -> list[Gap]:
        """At most `cap` gaps overlapping [lo, hi), oldest first, read by their end time (an index of the gaps:
        a question reads the gaps of its window, not every outage of the stream). Streams stored before the
        index existed: the newest `cap` gaps, filtered."""
        k = self._k(sid, "gapz")
        pipe = self.r.pipeline(transaction=False)  # one round trip, whichever applies
        pipe.zrangebyscore(k, f"({lo}", "+inf", start=0, num=cap)
        pipe.exists(k)
        pipe.lrange(self._k(sid, "gaps"), -cap, -1)
        by_end, indexed, newest = pipe.execute()
        raw = by_end if indexed else newest
        return [g for g in map(Gap.from_json, raw) if g.overlaps(lo, hi)]

    def event(self, sid: str, kind: str, **fields) -> None:
        pipe = self.r.pipeline(transaction=False)
        self._event(pipe, sid, kind, **fields)
        pipe.execute()

    def _event(self, pipe, sid: str, kind: str, **fields) -> None:
        body = {"kind": kind, "time": json.dumps(time.time()), **{k: str(v) for k, v in fields.items()}}
        pipe.xadd(self._k(sid, "events"), body, maxlen=EVENTS_MAXLEN, approximate=True)

    def last_event_id(self, sid: str) -> str:
        last = self.r.xrevrange(self._k(sid, "events"), count=1)
        return last[0][0].decode() if last else "0-0"

    def read_events(self, sid: str, after_id: str, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        """Events after `after_id`, waiting up to `block_ms` for the first one (None: do not wait)."""
        got = self.r.xread({self._k(sid, "events"): after_id}, block=block_ms, count=100)
        if not got:
            return []
        return [(eid.decode(), {k.decode(): v.decode() for k, v in body.items()}) for eid, body in got[0][1]]
