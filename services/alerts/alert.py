"""A fired alert: the one record for it, and its stored form.

The stored form is the JSON object below: the `alert` field of the stream's event log entry (kind "alert"), and
(compact) the MQTT message and the webhook body. `Alert.from_json` reads what any version stored; the APIs render
the record (`services.grpc_api.alert_msg`, `services.http.api.alert_json`).

    {"id": "<stream id>:<rule>:c<chunk id>",   same for every delivery of one firing (dedupe key)
     "stream_id", "camera", "rule", "kind",    kind: on_screen_text | query | cuts | feed
     "start_s", "end_s",                       media time range of the chunk (feed: the last frame's time)
     "wall_start", "wall_end",                 wall-clock unix times (live sources; null for files)
     "matched_text", "score", "signal",        what matched, how well (similarity, cosine, cuts/min; 1 for feed)
     "keyframe": {"chunk_id", "keyframe_s"},   the chunk's keyframe (null for feed alerts)
     "fired_unix"}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from encoders.signals import Signal
from services.alerts.rules import Firing, RuleKind


@dataclass(frozen=True)
class Alert:
    id: str  # the same for every delivery of one firing
    stream_id: str
    camera: str  # the camera's name (its stream id when it has none): the MQTT topic's level
    rule: str
    kind: RuleKind
    start_s: float
    end_s: float
    wall_start: float | None = None
    wall_end: float | None = None
    matched_text: str = ""
    score: float = 0.0
    signal: Signal | None = None  # query rules: the frame-index signal that scored best
    chunk_id: int | None = None  # the chunk whose keyframe shows it (None: feed alerts)
    keyframe_s: float | None = None
    fired_unix: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", RuleKind(self.kind))
        object.__setattr__(self, "signal", Signal(self.signal) if self.signal else None)

    @classmethod
    def of(cls, f: Firing, stream_id: str, camera: str | None, fired_unix: float) -> "Alert":
        """The alert a rule's firing on stream `stream_id` makes (times rounded to the millisecond)."""
        return cls(id=f"{stream_id}:{f.dedupe_id}", stream_id=stream_id, camera=camera or stream_id, rule=f.rule.name,
                   kind=f.rule.kind, start_s=round(f.start_s, 3), end_s=round(f.end_s, 3), wall_start=f.wall_start,
                   wall_end=f.wall_end, matched_text=f.matched, score=f.score, signal=f.signal, chunk_id=f.chunk_id,
                   keyframe_s=round(f.keyframe_s, 3) if f.chunk_id is not None else None, fired_unix=fired_unix)

    def to_dict(self) -> dict[str, Any]:
        """The stored form as a dict (the module docstring's layout)."""
        return {
            "id": self.id, "stream_id": self.stream_id, "camera": self.camera, "rule": self.rule,
            "kind": str(self.kind), "start_s": self.start_s, "end_s": self.end_s, "wall_start": self.wall_start,
            "wall_end": self.wall_end, "matched_text": self.matched_text, "score": self.score,
            "signal": str(self.signal) if self.signal else "",
            "keyframe": ({"chunk_id": self.chunk_id, "keyframe_s": self.keyframe_s}
                         if self.chunk_id is not None else None),
            "fired_unix": self.fired_unix,
        }

    def to_json(self, compact: bool = False) -> str:
        """The stored form (`compact`: without spaces, as published)."""
        return json.dumps(self.to_dict(), separators=(",", ":") if compact else None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Alert":
        key = d.get("keyframe") or {}
        return cls(id=d["id"], stream_id=d.get("stream_id") or "", camera=d.get("camera") or "", rule=d["rule"],
                   kind=d["kind"], start_s=d["start_s"], end_s=d["end_s"], wall_start=d.get("wall_start"),
                   wall_end=d.get("wall_end"), matched_text=d.get("matched_text") or "", score=d.get("score") or 0.0,
                   signal=d.get("signal") or None, chunk_id=key.get("chunk_id"), keyframe_s=key.get("keyframe_s"),
                   fired_unix=d.get("fired_unix") or 0.0)

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Alert":
        return cls.from_dict(json.loads(raw))
