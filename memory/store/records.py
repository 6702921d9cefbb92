"""The records the store keeps: a stream's state and counters, a chunk's metadata, the resume checkpoint,
ingest progress. One type per concept; JSON in Redis hash fields. An outage is `streamer.gap.Gap` (the live
source makes it; re-exported here, stored as its JSON)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum, StrEnum
from typing import TYPE_CHECKING

import numpy as np

from encoders.signals import Signal
from memory.options import MemoryOptions, option_names
from streamer.gap import Gap  # re-exported: the one gap type

if TYPE_CHECKING:
    from memory.working import WorkingState


class StreamState(str, Enum):
    """A stream's life: starting -> running (<-> reconnecting) -> finished | stopped | failed. A str, so it is
    stored and compared as its name ("running")."""
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        """An ingest worker owns the stream (it is in the store's active set)."""
        return self in ACTIVE

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class SourceKind(StrEnum):
    """What a stream reads: a file, a live (RTSP) camera, or bytes pushed by a client. A str: stored and sent as its
    value ("file")."""
    FILE = "file"
    LIVE = "live"
    PUSH = "push"


class ChunkEncoding(StrEnum):
    """How a stored chunk's payload is encoded (`ChunkRecord.format`): KV in float, KV in int8, or features."""
    KV = "kv"
    KV_INT8 = "kv-int8"
    FEATURES = "features"


ACTIVE = (StreamState.STARTING, StreamState.RUNNING, StreamState.RECONNECTING)
TERMINAL = (StreamState.FINISHED, StreamState.STOPPED, StreamState.FAILED)


@dataclass
class StreamRecord:
    stream_id: str
    source: str  # what the API shows: a path, "push:<name>", or a URL with its credentials removed
    state: StreamState = StreamState.STARTING
    error: str = ""
    fps: float = 1.0
    clip_frames: int = 8
    model: str = ""
    random_weights: bool = False
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    source_duration_s: float = 0.0
    frames: int = 0
    chunks: int = 0
    media_end_s: float = 0.0
    next_pos: int = 0
    max_pos: int = 0
    next_serial: int = 0  # clip tokens the stream has produced (the working memory's counters after the last chunk)
    next_frame: int = 0
    bytes: int = 0
    kind: SourceKind = SourceKind.FILE
    live: bool = False  # drops frames when behind instead of pacing the source
    dropped: int = 0
    reconnects: int = 0
    lag_s: float = 0.0
    scene_cuts: int = 0
    # memory options, chosen at start (server defaults + the request's overrides) and kept for the stream's
    # life, so a resumed stream keeps them whatever the adopting server's settings; one JSON hash field
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    frames_fingerprint: str = ""  # the frame describer's models (encoders.describe) behind the d:* vectors
    # memory accounting
    chunk_bytes: int = 0  # bytes of the chunks stored now
    chunk_bytes_written: int = 0  # bytes of every chunk ever stored (retention does not lower it)
    working_bytes: int = 0  # the working memory's stored snapshot
    wm_log_bytes: int = 0  # the working-memory deltas stored since that snapshot
    working_bytes_written: int = 0  # every working-memory byte ever written (snapshots and deltas)
    wm_version: int = -1  # the chunk id the stored working memory is at
    wm_snapshot_version: int = -1  # the chunk id of its snapshot
    working_used: int = 0  # tokens per layer in the working memory
    consolidated: int = 0  # merges done by retention
    merged_away: int = 0  # chunks retention's merges removed (a merge of n chunks keeps 1)
    deleted: int = 0  # chunks deleted by retention
    epoch: int = 0  # bumped when retention rewrites chunks (search indexes rebuild)

    def missing(self, stored: int) -> int:
        """Chunk ids below `chunks` whose chunk the store does not hold, given how many it holds (`stored`):
        0 normally; more when a store lost chunks it had acknowledged. Streams merged by retention before
        `merged_away` was counted cannot tell (0)."""
        if self.consolidated and not self.merged_away:
            return 0
        return max(0, self.chunks - self.deleted - self.merged_away - stored)

    def __post_init__(self) -> None:
        self.state = StreamState(self.state)
        self.kind = SourceKind(self.kind)

    def to_hash(self) -> dict[str, str]:
        h = {f.name: json.dumps(getattr(self, f.name)) for f in fields(self) if f.name != "memory"}
        h["memory"] = self.memory.to_json()
        return h

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> "StreamRecord":
        raw = {k.decode(): v for k, v in h.items()}
        known = {f.name for f in fields(cls)} - {"memory"}
        vals = {k: json.loads(v) for k, v in raw.items() if k in known}
        if "memory" in raw:
            memory = MemoryOptions.from_json(raw["memory"])
        else:  # written before the options were one field: flat fields, the scoring ones possibly missing
            flat = set(option_names())
            memory = MemoryOptions.from_dict({k: json.loads(v) for k, v in raw.items() if k in flat})
        return cls(**vals, memory=memory)


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: int
    start_s: float
    end_s: float
    frames: int
    tokens: int
    keyframe_s: float
    bytes: int = 0
    wall_start: float | None = None  # unix time the first frame was received (live sources)
    wall_end: float | None = None
    cuts: int = 0  # scene cuts starting inside this chunk
    novelty: float = 0.0  # the keyframe's novelty score
    redundant: int = 0  # near-duplicate frames (a compressor may spend less on them)
    static: float = 0.0  # mean fraction of static patches
    span_start: int = 0  # serials of the clip tokens this chunk was compressed from: [span_start, span_end)
    span_end: int = 0
    level: int = 0  # 0: one clip; n: merged n times by retention
    format: ChunkEncoding = ChunkEncoding.KV
    text: str = ""  # text read on screen (OCR), lines joined with " | "
    labels: str = ""  # top image labels of the keyframe, "name (p), ..."
    text_frame_s: float | None = None  # media time of the stored text frame (the text read where the keyframe lacks it)
    # what was said (encoders.speech): ((start_s, end_s, text), ...) on the media clock, in time order
    speech: tuple[tuple[float, float, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", ChunkEncoding(self.format))  # read from JSON as its value
        object.__setattr__(self, "speech", tuple((float(a), float(b), str(t)) for a, b, t in self.speech))

    @property
    def said(self) -> str:
        """The chunk's transcript, segments in time order joined with " | " ("" if nothing was said)."""
        return " | ".join(t for _, _, t in self.speech)


@dataclass(frozen=True)
class IndexRow:
    """What the search index keeps of one chunk."""
    record: ChunkRecord
    mean: np.ndarray  # [E] float32 unit mean key (the baseline)
    keys: np.ndarray | None  # [C, m, D] float16 representative keys (None: a chunk stored before they existed)
    dense: dict[Signal, np.ndarray]  # frame-index signal -> [n, d] float32 unit vectors (n > 1: merged chunks)


@dataclass(frozen=True)
class WorkingLoad:
    """A stream's working memory as read from the store, and where it stands."""
    state: "WorkingState"
    version: int  # the chunk id it is the memory after
    snapshot_bytes: int  # the stored snapshot's size
    log_bytes: int  # the stored deltas' size since that snapshot
    read_bytes: int  # memory bytes this read transferred (0: the copy at hand was current)


@dataclass(frozen=True)
class Checkpoint:
    """Where ingest resumes: written in the same transaction as the chunk before `next_clip`."""
    next_clip: int
    after_s: float  # media time of the last stored frame
    frames_total: int
    last_wall_s: float | None = None  # live sources: when that frame was received
    next_tick: float | None = None  # the sampler's clock (None: an old checkpoint; the sampler restarts)
    next_index: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Checkpoint":
        d = json.loads(raw)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class IngestProgress:
    """Ingest's running figures, written with each chunk."""
    dropped: int = 0  # frames dropped because encoding fell behind (live)
    lag_s: float | None = None  # live: now minus the newest stored frame's receive time

    def fields(self) -> dict[str, str]:
        out = {"dropped": json.dumps(self.dropped)}
        if self.lag_s is not None:
            out["lag_s"] = json.dumps(self.lag_s)
        return out
