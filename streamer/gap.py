"""A gap: a stretch of a stream's media time with no footage (a camera outage), the one type for it.

The live source emits it (`streamer.live`), the store keeps it as JSON (`memory.store`: `to_json` / `from_json`),
answers and the APIs show it. Imports nothing of the project, so every layer may use it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Gap:
    """A media-time range on the stream clock with no frames, and the wall-clock range it covers.

    start_s / wall_start: the last frame before the hole (its media time and arrival time). end_s: the first
    frame after it. wall_end: when the new session started (its PLAY), which is up to ~1 s before that frame's
    arrival (the demuxer's probe); for a live outage end_s - start_s == wall_end - wall_start. The wall-clock
    times are None where there is no wall clock.
    """

    start_s: float
    end_s: float
    reason: str = ""
    wall_start: float | None = None
    wall_end: float | None = None

    def overlaps(self, lo: float, hi: float) -> bool:
        return self.end_s > lo and self.start_s < hi

    def to_json(self) -> str:
        """The stored form: a JSON object of the fields."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Gap":
        d = json.loads(raw)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
