"""MemoryOptions: defaults in one place, validation, JSON and Redis round trips, records from before the
single `memory` field, the wire mapping both ways, settings from VIGIL_MEMORY__*, and the CLI flags."""
from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, fields

import grpc
import pytest
import redis
from pydantic import ValidationError

from memory.errors import InvalidMemoryOptions
from memory.layout import KVLayout
from memory.options import MemoryOptions, option_names
from memory.retention import Retention
from memory.store import MemoryStore, StreamRecord
from services import memory_wire
from services.errors import status_for
from services.wire import ingest_pb2

SERVER_DEFAULTS = dict(working_tokens=2048, chunk_tokens=32, policy="attention", prototypes=True, novelty_weight=1.0,
                       redundancy_weight=0.25, redundancy_window=256, chunk_format="kv", kv_int8=False, max_bytes=0,
                       max_age_s=0.0, retention_mode="consolidate", retrieval_keys=64, frame_index=True)
CUSTOM = MemoryOptions(working_tokens=64, chunk_tokens=8, policy="recency", prototypes=False, novelty_weight=2.5,
                       redundancy_weight=0.5, redundancy_window=0, chunk_format="features", kv_int8=False,
                       max_bytes=12345, max_age_s=60.0, retention_mode="delete", retrieval_keys=0, frame_index=False)


@pytest.fixture
def no_memory_env(monkeypatch):
    import os

    for k in [k for k in os.environ if k.startswith("VIGIL_MEMORY") or k == "VIGIL_CONFIG"]:
        monkeypatch.delenv(k)
    return monkeypatch


def test_the_defaults_are_the_server_defaults_and_live_in_one_place(no_memory_env):
    from services.config import Settings

    assert MemoryOptions().to_dict() == SERVER_DEFAULTS
    assert Settings().memory == MemoryOptions()  # the settings hold the type itself: no copied field list
    assert Settings.model_fields["memory"].annotation is MemoryOptions
    assert StreamRecord(stream_id="s", source="x").memory == MemoryOptions()
    assert set(memory_wire.WIRE) == set(option_names()) == set(SERVER_DEFAULTS)


def test_options_are_frozen_and_overrides_revalidate():
    o = MemoryOptions()
    with pytest.raises(FrozenInstanceError):
        o.chunk_tokens = 3
    assert o.with_overrides(chunk_tokens=None, kv_int8=None) is o  # None: keep
    p = o.with_overrides(chunk_tokens=16, redundancy_weight=0.0)
    assert (p.chunk_tokens, p.redundancy_weight, o.chunk_tokens) == (16, 0.0, 32)
    with pytest.raises(InvalidMemoryOptions, match="chunk_tokens"):
        o.with_overrides(chunk_tokens=0)
    with pytest.raises(InvalidMemoryOptions, match="unknown memory option"):
        o.with_overrides(chunk_tokenz=16)
    assert o.with_overrides(chunk_format="features").with_overrides(kv_int8=None).chunk_format == "features"


@pytest.mark.parametrize("bad,needle", [
    (dict(chunk_tokens=0), "chunk_tokens must be in [1, 65536]"),
    (dict(chunk_tokens=1 << 17), "chunk_tokens"),
    (dict(working_tokens=-1), "working_tokens must be in [0, 1048576]"),
    (dict(working_tokens=1 << 21), "working_tokens"),
    (dict(policy="random"), "policy must be one of ['attention', 'recency', 'uniform']"),
    (dict(chunk_format="pixels"), "chunk_format must be one of"),
    (dict(retention_mode="keep"), "retention_mode must be one of"),
    (dict(redundancy_weight=1.5), "redundancy_weight must be in [0, 1]"),
    (dict(redundancy_weight=-0.1), "redundancy_weight"),
    (dict(novelty_weight=101.0), "novelty_weight must be in [0, 100]"),
    (dict(redundancy_window=-1), "redundancy_window"),
    (dict(max_bytes=-1), "max_bytes must be >= 0"),
    (dict(max_age_s=-1.0), "max_age_s must be >= 0"),
    (dict(max_age_s=math.nan), "max_age_s must be finite"),
    (dict(max_age_s=math.inf), "max_age_s must be finite"),
    (dict(working_tokens="64"), "working_tokens must be an integer"),
    (dict(working_tokens=True), "working_tokens must be an integer"),
    (dict(chunk_tokens=8.0), "chunk_tokens must be an integer"),
    (dict(prototypes=1), "prototypes must be a boolean"),
    (dict(policy=None), "policy must be a string"),
    (dict(kv_int8=True, chunk_format="features"), "kv_int8 applies to KV chunks"),
])
def test_every_bad_option_is_refused_with_its_name(bad, needle):
    with pytest.raises(InvalidMemoryOptions) as err:
        MemoryOptions(**bad)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)
    assert status_for(err.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_an_integer_for_a_float_option_becomes_a_float():
    o = MemoryOptions(max_age_s=5, novelty_weight=0)
    assert type(o.max_age_s) is float and type(o.novelty_weight) is float and o == MemoryOptions(max_age_s=5.0,
                                                                                                  novelty_weight=0.0)


def test_retention_limits_come_from_the_options():
    assert Retention.of(CUSTOM) == Retention(max_bytes=12345, max_age_s=60.0, mode="delete")
    assert not Retention.of(MemoryOptions()).limited


def test_json_round_trip_and_stored_forms():
    for o in (MemoryOptions(), CUSTOM):
        text = o.to_json()
        assert json.loads(text) == o.to_dict()
        assert MemoryOptions.from_json(text) == o
        assert MemoryOptions.from_json(text.encode()) == o
    # a field missing from a stored form takes the behaviour before it existed (no redundancy term),
    # the others their defaults; a name a newer writer added is ignored
    old = MemoryOptions.from_dict({"working_tokens": 64, "chunk_tokens": 8, "from_the_future": 1})
    assert (old.working_tokens, old.chunk_tokens, old.redundancy_weight, old.prototypes) == (64, 8, 0.0, True)
    for bad in ("not json", "[1, 2]"):
        with pytest.raises(InvalidMemoryOptions):
            MemoryOptions.from_json(bad)
    with pytest.raises(InvalidMemoryOptions, match="chunk_tokens"):
        MemoryOptions.from_json(json.dumps({**SERVER_DEFAULTS, "chunk_tokens": 0}))


@pytest.fixture
def store(redis_url, namespace):
    layout = KVLayout(num_layers=2, num_kv_heads=2, head_dim=4, position_dims=3, dtype="float32", feature_dim=6)
    return MemoryStore(redis.Redis.from_url(redis_url), namespace, layout, "fp-1")


def test_a_record_keeps_its_options_in_one_redis_field(store):
    rec = StreamRecord(stream_id="opts1", source="x.mp4", memory=CUSTOM)
    store.create_stream(rec)
    h = store.r.hgetall(store._k("opts1", "meta"))
    assert MemoryOptions.from_json(h[b"memory"]) == CUSTOM
    assert not {k.decode() for k in h} & set(option_names())  # no flat copies
    store.set_state("opts1", "running")
    assert store.get_stream("opts1").memory == CUSTOM
    assert [r.memory for r in store.list_streams()] == [CUSTOM]


def test_a_record_written_by_the_older_code_still_loads(store):
    """Flat memory fields and no `memory` field; the oldest of them also lack the scoring fields."""
    base = {k: v for k, v in StreamRecord(stream_id="x", source="x").to_hash().items() if k != "memory"}
    flat = {"policy": "uniform", "working_tokens": 64, "chunk_tokens": 8, "chunk_format": "kv", "kv_int8": True,
            "max_bytes": 1000, "max_age_s": 30.0, "retention_mode": "delete"}
    scoring = {"prototypes": False, "novelty_weight": 0.5, "redundancy_weight": 0.75, "redundancy_window": 64}
    for sid, fields_ in (("legacy1", flat), ("legacy2", {**flat, **scoring})):
        mapping = {**base, "stream_id": json.dumps(sid), **{k: json.dumps(v) for k, v in fields_.items()}}
        store.r.hset(store._k(sid, "meta"), mapping=mapping)
        store.r.zadd(f"{store.ns}:streams", {sid: 1.0})
    before, after = store.get_stream("legacy1").memory, store.get_stream("legacy2").memory
    # absent then: no redundancy term, no frame index (the record's chunks have none)
    assert before == MemoryOptions(**flat, prototypes=True, novelty_weight=1.0, redundancy_weight=0.0,
                                   redundancy_window=256, frame_index=False)
    assert after == MemoryOptions(**flat, **scoring, frame_index=False)
    assert Retention.of(before) == Retention(max_bytes=1000, max_age_s=30.0, mode="delete")
    store.set_state("legacy1", "running")  # later writes leave the old layout readable
    assert store.get_stream("legacy1").memory == before
    assert sorted(r.stream_id for r in store.list_streams()) == ["legacy1", "legacy2"]


def test_wire_round_trip_sets_every_field():
    for o in (MemoryOptions(), CUSTOM):
        msg = memory_wire.to_proto(o)
        for w in memory_wire.WIRE.values():  # StreamInfo.memory: all fields set
            assert getattr(msg, w.field) != 0 if w.enum else msg.HasField(w.field)
        assert memory_wire.overrides_from_proto(msg) == o.to_dict()
        assert memory_wire.from_proto(msg, MemoryOptions()) == o
        back = ingest_pb2.MemoryOptions.FromString(msg.SerializeToString())
        assert memory_wire.from_proto(back, CUSTOM if o == MemoryOptions() else MemoryOptions()) == o
    assert memory_wire.overrides_from_proto(ingest_pb2.MemoryOptions()) == {}  # unset: server defaults
    assert memory_wire.from_proto(ingest_pb2.MemoryOptions(), CUSTOM) == CUSTOM
    some = memory_wire.overrides_to_proto(redundancy_weight=0.0, policy="uniform", chunk_tokens=None)
    assert some.HasField("redundancy_weight") and not some.HasField("chunk_tokens")
    assert some.policy == ingest_pb2.SCORING_POLICY_UNIFORM
    assert memory_wire.from_proto(some, MemoryOptions()) == MemoryOptions(redundancy_weight=0.0, policy="uniform")


def test_bad_wire_values_are_invalid_memory_options():
    with pytest.raises(InvalidMemoryOptions, match="chunk_format"):
        memory_wire.overrides_from_proto(ingest_pb2.MemoryOptions(chunk_format=9))
    with pytest.raises(InvalidMemoryOptions, match="working_tokens"):
        memory_wire.from_proto(ingest_pb2.MemoryOptions(working_tokens=1 << 21), MemoryOptions())
    with pytest.raises(InvalidMemoryOptions, match="kv_int8"):
        memory_wire.from_proto(ingest_pb2.MemoryOptions(kv_int8=True, chunk_format=ingest_pb2.CHUNK_FORMAT_FEATURES),
                               MemoryOptions())
    with pytest.raises(InvalidMemoryOptions, match="working_tokens"):
        memory_wire.overrides_to_proto(working_tokens=-1)
    with pytest.raises(InvalidMemoryOptions, match="policy"):
        memory_wire.overrides_to_proto(policy="random")
    with pytest.raises(InvalidMemoryOptions, match="unknown"):
        memory_wire.overrides_to_proto(budget=3)


def test_settings_from_the_environment(no_memory_env):
    from services.config import Settings

    no_memory_env.setenv("VIGIL_MEMORY__REDUNDANCY_WEIGHT", "0.5")
    no_memory_env.setenv("VIGIL_MEMORY__PROTOTYPES", "false")
    no_memory_env.setenv("VIGIL_MEMORY__WORKING_TOKENS", "64")
    no_memory_env.setenv("VIGIL_MEMORY__RETENTION_MODE", "delete")
    m = Settings().memory
    assert isinstance(m, MemoryOptions)
    assert m == MemoryOptions(redundancy_weight=0.5, prototypes=False, working_tokens=64, retention_mode="delete")
    for name, value in (("REDUNDANCY_WEIGHT", "1.5"), ("REDUNDANCY_WEIGHT", "lots"), ("POLICY", "random"),
                        ("CHUNK_TOKENS", "0")):
        no_memory_env.setenv(f"VIGIL_MEMORY__{name}", value)
        with pytest.raises(ValidationError) as err:
            Settings()
        assert name.lower() in str(err.value)
        no_memory_env.delenv(f"VIGIL_MEMORY__{name}")
    no_memory_env.setenv("VIGIL_MEMORY__KV_INT8", "true")
    no_memory_env.setenv("VIGIL_MEMORY__CHUNK_FORMAT", "features")
    with pytest.raises(ValidationError, match="kv_int8 applies to KV chunks"):
        Settings()


def test_settings_from_a_toml_file(no_memory_env, tmp_path):
    from services.config import Settings

    cfg = tmp_path / "vigil.toml"
    cfg.write_text("[memory]\nchunk_tokens = 16\nredundancy_weight = 0.0\nmax_age_s = 30\n")
    no_memory_env.setenv("VIGIL_CONFIG", str(cfg))
    assert Settings().memory == MemoryOptions(chunk_tokens=16, redundancy_weight=0.0, max_age_s=30.0)


def test_the_cli_has_one_flag_per_option_and_sends_only_what_was_given():
    from services.cli.parser import build_parser, memory_options

    parser = build_parser()
    for cmd, src in (("ingest", "x.mp4"), ("push", "x.ts")):
        args = parser.parse_args([cmd, src])
        assert {f.name for f in fields(MemoryOptions)} <= set(vars(args))
        assert memory_options(args) == ingest_pb2.MemoryOptions()  # nothing given: the server decides
    args = parser.parse_args(["push", "x.ts", "--int8", "--retention", "delete", "--policy", "recency",
                              "--no-prototypes", "--novelty-weight", "0.5", "--redundancy-weight", "0",
                              "--redundancy-window", "64", "--chunk-tokens", "16", "--max-age-s", "30"])
    assert memory_wire.from_proto(memory_options(args), MemoryOptions()) == MemoryOptions(
        kv_int8=True, retention_mode="delete", policy="recency", prototypes=False, novelty_weight=0.5,
        redundancy_weight=0.0, redundancy_window=64, chunk_tokens=16, max_age_s=30.0)
