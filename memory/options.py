"""A stream's memory options: one frozen, self-validating value, and the one place their defaults live.

Everything that carries memory options uses this type: the server settings (`VIGIL_MEMORY__*`,
`services.config.Settings.memory`), a request's overrides (`with_overrides`), the stream record in
Redis (`to_json` / `from_json`), the wire message (`services.memory_wire`), the CLI flags
(`services.cli`) and the ingest-time memory update (`memory.working.step`).

Adding an option: one field here (with its `help`, bounds or choices, and `absent` when records
stored before it existed must keep the old behaviour), one line in `services.memory_wire.WIRE`, one
field in the proto `MemoryOptions` message.

Torch-free on purpose (the CLI builds its flags from it), so the option vocabularies (`Policy`,
`ChunkFormat`, `RetentionMode`: `str` enums, stored and sent as their values) are defined here and used by
`memory.compress`, `memory.working` and `memory.retention`.
"""
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from enum import Enum, StrEnum
from typing import Any, Mapping

from memory.errors import InvalidMemoryOptions


class Policy(StrEnum):
    """Token scoring: query-agnostic proxy attention; two baselines."""
    ATTENTION = "attention"
    RECENCY = "recency"
    UNIFORM = "uniform"


class ChunkFormat(StrEnum):
    """What a stream's chunks hold: KV (fast answers) or the visual features (fewer bytes, prefilled when asked)."""
    KV = "kv"
    FEATURES = "features"


class RetentionMode(StrEnum):
    """What the byte limit does to a stream's oldest chunks: merge them (coarser) or delete them."""
    CONSOLIDATE = "consolidate"
    DELETE = "delete"


def _option(default, description: str, *, ge=None, le=None, absent=MISSING):
    """A field with what validation, settings, the CLI and legacy loading need to know about it. An enum default
    makes the enum's values the choices. `absent`: the value a stored record written before the field existed
    gets (default: `default`)."""
    choices = tuple(type(default)) if isinstance(default, Enum) else None
    meta = {"description": description, "ge": ge, "le": le, "choices": choices}  # pydantic reads description, ge, le
    if absent is not MISSING:
        meta["absent"] = absent
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MemoryOptions:
    working_tokens: int = _option(2048, "per-layer token budget of the working memory (0: none)", ge=0, le=1 << 20)
    chunk_tokens: int = _option(32, "per-layer token budget of every stored chunk", ge=1, le=1 << 16)
    policy: Policy = _option(Policy.ATTENTION, "attention: query-agnostic proxy scores; recency/uniform: baselines")
    prototypes: bool = _option(True, "one attention-weighted prototype token per frame")
    novelty_weight: float = _option(1.0, "clip scores x (1 + weight x keyframe novelty)", ge=0, le=100)
    redundancy_weight: float = _option(
        0.25, "share of each token's score given to how unlike earlier tokens its values are (InfiniPot-V's "
        "redundancy); 0: attention only", ge=0, le=1,
        absent=0.0)  # streams recorded before the redundancy term keep attention alone
    redundancy_window: int = _option(256, "novelty is measured against the previous window..2 x window - 1 "
                                     "tokens in stream order (0: against all, quadratic)", ge=0, le=1 << 16)
    chunk_format: ChunkFormat = _option(ChunkFormat.KV, "kv: fast answers; features: fewer bytes, prefilled at "
                                        "question time")
    kv_int8: bool = _option(False, "store KV chunks as int8 (scale per head and token)")
    max_bytes: int = _option(0, "retention: chunk bytes kept per stream (0: unlimited)", ge=0)
    max_age_s: float = _option(0.0, "retention: media seconds kept behind the newest chunk (0: unlimited)", ge=0)
    retention_mode: RetentionMode = _option(RetentionMode.CONSOLIDATE, "what the byte limit does to the oldest "
                                            "chunks")
    retrieval_keys: int = _option(64, "representative keys per KV head and retrieval layer kept with each chunk "
                                  "for late-interaction retrieval (0: every visual token)", ge=0, le=4096)
    frame_index: bool = _option(True, "describe each chunk's keyframe for search (on-screen text, image labels; "
                                "needs the frame-index packages, see scripts/setup.sh)",
                                absent=False)  # streams recorded before the frame index have none

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))
        if self.kv_int8 and self.chunk_format == ChunkFormat.FEATURES:
            raise InvalidMemoryOptions("memory option kv_int8 applies to KV chunks; a chunk_format='features' "
                                       "stream stores no KV chunks")

    def with_overrides(self, **overrides: Any) -> "MemoryOptions":
        """These options with the given ones replaced (None: keep), validated again."""
        names = option_names()
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise InvalidMemoryOptions(f"unknown memory option(s) {unknown}; known: {list(names)}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "MemoryOptions":
        """Options as stored: a field missing from `stored` (written before it existed) takes its `absent`
        value, else its default; names this version does not know (a newer writer) are ignored."""
        vals = {}
        for f in fields(cls):
            if f.name in stored:
                vals[f.name] = stored[f.name]
            elif "absent" in f.metadata:
                vals[f.name] = f.metadata["absent"]
        return cls(**vals)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> "MemoryOptions":
        try:
            stored = json.loads(text)
        except ValueError as exc:
            raise InvalidMemoryOptions(f"memory options are not JSON: {exc}") from None
        if not isinstance(stored, dict):
            raise InvalidMemoryOptions(f"memory options must be a JSON object, got {type(stored).__name__}")
        return cls.from_dict(stored)


def option_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(MemoryOptions))


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _checked(f, v):
    """The field's value, validated (an integer given for a float field made a float, a choice's value its enum
    member)."""
    kind = type(f.default)  # every option has a default of its own type
    name, meta = f.name, f.metadata
    if meta.get("choices") is not None:  # a str enum: its value, as a string
        if not isinstance(v, str):
            raise InvalidMemoryOptions(f"memory option {name} must be a string, got {v!r}")
        if v not in meta["choices"]:
            raise InvalidMemoryOptions(f"memory option {name} must be one of {[str(c) for c in meta['choices']]}, "
                                       f"got {v!r}")
        return kind(v)
    ok = (isinstance(v, bool) if kind is bool else
          isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
          isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
    if not ok:
        raise InvalidMemoryOptions(f"memory option {name} must be {_TYPE_NAMES[kind]}, got {v!r}")
    if kind is float:
        v = float(v)
        if not math.isfinite(v):
            raise InvalidMemoryOptions(f"memory option {name} must be finite, got {v!r}")
    lo, hi = meta.get("ge"), meta.get("le")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (
            f">= {lo}" if lo is not None else f"<= {hi}")
        raise InvalidMemoryOptions(f"memory option {name} must be {bounds}, got {v!r}")
    return v
