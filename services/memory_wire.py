"""The one mapping between the wire `vigil.v1.MemoryOptions` message and `memory.options.MemoryOptions`.

`WIRE` names, for every option, its proto field (and enum, for string options). Scalar fields are proto3
`optional` (unset: the server default); an enum's value 0 (`*_UNSPECIFIED`) is unset and its other values
are the option's choices, upper-cased behind the enum's prefix (`CHUNK_FORMAT_KV` <-> "kv"). Import fails
when an option has no wire field or an enum and the option's choices disagree, so the two cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from memory.errors import InvalidMemoryOptions
from memory.options import MemoryOptions, option_names
from services.wire import ingest_pb2


@dataclass(frozen=True)
class Wire:
    field: str  # the proto MemoryOptions field
    enum: Any = None  # the proto enum of a string option


WIRE: dict[str, Wire] = {
    "working_tokens": Wire("working_tokens"),
    "chunk_tokens": Wire("chunk_tokens"),
    "policy": Wire("policy", ingest_pb2.ScoringPolicy),
    "prototypes": Wire("prototypes"),
    "novelty_weight": Wire("novelty_weight"),
    "redundancy_weight": Wire("redundancy_weight"),
    "redundancy_window": Wire("redundancy_window"),
    "chunk_format": Wire("chunk_format", ingest_pb2.ChunkFormat),
    "kv_int8": Wire("kv_int8"),
    "max_bytes": Wire("max_bytes"),
    "max_age_s": Wire("max_age_s"),
    "retention_mode": Wire("retention", ingest_pb2.RetentionMode),
    "retrieval_keys": Wire("retrieval_keys"),
    "frame_index": Wire("frame_index"),
}


def _prefix(enum) -> str:
    return enum.Name(0).removesuffix("UNSPECIFIED")


def _enum_values(enum) -> dict[int, str]:
    """Enum number -> option value, for every value but the unset one."""
    return {num: name.removeprefix(_prefix(enum)).lower() for name, num in enum.items() if num}


def _check_table() -> None:
    if set(WIRE) != set(option_names()):
        raise RuntimeError(f"services.memory_wire.WIRE must map every memory option: missing "
                           f"{sorted(set(option_names()) - set(WIRE))}, unknown {sorted(set(WIRE) - set(option_names()))}")
    proto_fields = set(ingest_pb2.MemoryOptions.DESCRIPTOR.fields_by_name)
    choices = {f.name: f.metadata.get("choices") for f in fields(MemoryOptions)}
    for name, w in WIRE.items():
        if w.field not in proto_fields:
            raise RuntimeError(f"memory option {name}: the proto MemoryOptions has no field {w.field!r}")
        if w.enum is not None and set(_enum_values(w.enum).values()) != set(choices[name] or ()):
            raise RuntimeError(f"memory option {name}: proto enum values {sorted(_enum_values(w.enum).values())} "
                               f"differ from the option's choices {choices[name]}")


_check_table()


def overrides_from_proto(msg: ingest_pb2.MemoryOptions) -> dict[str, Any]:
    """The options a message sets, by option name (unset fields are left out)."""
    out: dict[str, Any] = {}
    for name, w in WIRE.items():
        if w.enum is not None:
            num = getattr(msg, w.field)
            if num:
                values = _enum_values(w.enum)
                if num not in values:
                    raise InvalidMemoryOptions(f"memory option {name}: unknown {w.enum.DESCRIPTOR.name} value {num}")
                out[name] = values[num]
        elif msg.HasField(w.field):
            out[name] = getattr(msg, w.field)
    return out


def from_proto(msg: ingest_pb2.MemoryOptions, defaults: MemoryOptions) -> MemoryOptions:
    """`defaults` with what the message sets, validated."""
    return defaults.with_overrides(**overrides_from_proto(msg))


def overrides_to_proto(**overrides: Any) -> ingest_pb2.MemoryOptions:
    """A message setting only the given options (None: left unset, the server's default)."""
    unknown = sorted(set(overrides) - set(WIRE))
    if unknown:
        raise InvalidMemoryOptions(f"unknown memory option(s) {unknown}; known: {list(WIRE)}")
    msg = ingest_pb2.MemoryOptions()
    for name, value in overrides.items():
        if value is None:
            continue
        w = WIRE[name]
        try:
            setattr(msg, w.field, w.enum.Value(_prefix(w.enum) + str(value).upper()) if w.enum else value)
        except (TypeError, ValueError) as exc:
            raise InvalidMemoryOptions(f"memory option {name}: {value!r} cannot be sent ({exc})") from None
    return msg


def to_proto(options: MemoryOptions) -> ingest_pb2.MemoryOptions:
    """A message with every option set."""
    return overrides_to_proto(**options.to_dict())
