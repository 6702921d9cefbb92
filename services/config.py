"""One settings object, built once at the process edge from VIGIL_* variables and an optional TOML file.

Precedence: explicit arguments > environment (VIGIL_*, nested with "__", e.g. VIGIL_MODEL__NAME)
> the TOML file named by VIGIL_CONFIG > defaults.
"""
from __future__ import annotations

import json
import os
from enum import StrEnum
from typing import Annotated
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from encoders.describe import DescriberOptions
from encoders.speech import SpeechOptions
from encoders.options import DEFAULT_CACHE_DIR, ModelOptions
from memory.fusion import SearchOptions
from memory.options import MemoryOptions
from services.alerts import AlertSettings, MqttSettings
from services.cameras import CameraConfig, check_cameras
from streamer.live import LiveOptions


class Role(StrEnum):
    """What a server does: ingest and questions in one process, or one of the two."""
    ALL = "all"
    INGEST = "ingest"
    QA = "qa"

    @property
    def ingests(self) -> bool:
        return self in (Role.ALL, Role.INGEST)

    @property
    def answers(self) -> bool:
        return self in (Role.ALL, Role.QA)


class Reader(StrEnum):
    """What decodes files: PyAV (every frame), or decord (only the sampled ones)."""
    PYAV = "pyav"
    DECORD = "decord"


class DetectorSettings(BaseModel):
    """Keyframe / scene-cut detector; unset fields keep the detector's tuned defaults."""
    model_config = ConfigDict(frozen=True)

    cut_threshold: float | None = Field(None, description="score above which a frame starts a new scene")
    redundant_similarity: float | None = Field(None, description="similarity above which a frame is redundant")
    thumb_side: int | None = Field(None, ge=8, le=512, description="long side of the scoring thumbnail")

    def model_dump(self, **kw):  # only what was set, so DetectorConfig's defaults stay the one source
        return {k: v for k, v in super().model_dump(**kw).items() if v is not None}


def _readable_file(path: Path | None, what: str) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot be read ({exc.strerror})") from None
    if b"-----BEGIN " not in head:
        raise ValueError(f"{what} {path}: not a PEM file")
    return path.resolve()


class TlsSettings(BaseModel):
    """gRPC over TLS (VIGIL_TLS__*): a certificate chain and its key; a client CA turns on mutual TLS.

    Only the paths are held; the files are read when the port is bound, and the key is never logged."""
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    cert_file: Path | None = Field(None, description="PEM certificate chain the server presents")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    client_ca_file: Path | None = Field(None, description="PEM CA bundle; set: every client must present a "
                                        "certificate it signed (mutual TLS), health checks included")

    @field_validator("cert_file")
    @classmethod
    def _cert(cls, v):
        return _readable_file(v, "certificate")

    @field_validator("key_file")
    @classmethod
    def _key(cls, v):
        return _readable_file(v, "private key")

    @field_validator("client_ca_file")
    @classmethod
    def _client_ca(cls, v):
        return _readable_file(v, "client CA")

    @model_validator(mode="after")
    def _pair(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS needs both VIGIL_TLS__CERT_FILE and VIGIL_TLS__KEY_FILE")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("VIGIL_TLS__CLIENT_CA_FILE (mutual TLS) needs VIGIL_TLS__CERT_FILE and __KEY_FILE")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    def server_credentials(self):
        """grpc.ServerCredentials from the files (read now), requiring client certificates when a client CA is set."""
        import grpc

        ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials([(self.key_file.read_bytes(), self.cert_file.read_bytes())],
                                           root_certificates=ca, require_client_auth=ca is not None)


MIN_TOKEN_CHARS = 16  # shorter tokens are accepted with a warning at start (services/server.py TokenAuth)


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected value (a token with a stray newline) is never echoed in the error
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_nested_delimiter="__", frozen=True, extra="ignore",
                                      hide_input_in_errors=True)

    host: str = Field("127.0.0.1", description="address the gRPC and HTTP ports listen on")
    port: int = Field(50051, description="gRPC port (streams and questions)")
    http_port: int = Field(8080, ge=-1, le=65535, description="the HTTP side (/metrics; services/http/) on `host`: "
                           "0 turns it off, -1 takes any free port (VigilServer.http_port says which)")
    metrics_open: bool = Field(False, description="serve /metrics without the bearer token even when "
                               "VIGIL_AUTH_TOKEN is set (a scraper on a trusted network)")
    role: Role = Field(Role.ALL, description="all: ingest and questions in one process; ingest: streams only; qa: "
                       "questions only")
    redis_url: str | None = Field(None, description="unset: start a private redis-server for this process")
    redis_dir: Path | None = Field(None, description="private redis-server only: keep its data here (append-only "
                                   "file) so a restarted server resumes its streams; unset: memory lasts one run")
    namespace: str = Field("vigil", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="prefix of every Redis key; "
                           "servers of one namespace share its streams")
    media_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        default_factory=lambda: (Path.cwd(),),
        description='folders files may be read from: a JSON list, or paths joined with ":"')
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, description="the tokenizer cache and the demo's video")
    auth_token: SecretStr | None = Field(None, description="unset: no auth; set: every call but health and "
                                         "reflection needs `authorization: Bearer <token>`")
    tls: TlsSettings = TlsSettings()

    fps: float = Field(1.0, gt=0, le=30, description="frames sampled per second of video (a stream may set its own)")
    clip_frames: int = Field(8, ge=2, le=64, description="sampled frames per clip, i.e. per stored chunk (a scene cut "
                             "may close a clip earlier)")
    frame_max_side: int = Field(448, ge=32, le=4096, description="decoder downscale before the model's own resize")
    top_k: int = Field(4, ge=1, le=64, description="chunks retrieved per question when the request names none")
    max_top_k: int = Field(64, description="most chunks one question may ask for")
    max_new_tokens: int = Field(48, ge=1, description="answer length in tokens when the request names none")
    max_new_tokens_cap: int = Field(512, description="most answer tokens one request may ask for")
    max_question_chars: int = Field(2000, ge=1, description="longer questions are refused")
    max_question_tokens: int = Field(256, ge=1, description="longest question Ask accepts, in the model's own "
                                     "tokens (checked after max_question_chars, before any model work)")
    question_workers: int = Field(2, ge=1, le=64, description="threads that run questions (services/work.py), "
                                  "apart from the pool control calls (describe, list, watch) use")
    max_queued_questions: int = Field(32, ge=0, le=10_000, description="questions waiting for a question worker; "
                                      "one more is refused with RESOURCE_EXHAUSTED")
    max_example_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest example image Ask accepts")
    max_conversation_tokens: int = Field(512, ge=0, le=32_768, description="earlier questions and answers of a "
                                         "conversation that go into the prompt, in the model's tokens; the oldest "
                                         "turns are dropped first (0: none)")
    conversation_ttl_s: float = Field(3600.0, gt=0, le=30 * 24 * 3600, description="a conversation unused this long "
                                      "is forgotten (kept in Redis; every use restarts the clock)")
    summary_segments: int = Field(4, ge=1, le=64, description="segments a summary aims for when the request "
                                  "names no detail")
    max_summary_segments: int = Field(16, ge=1, le=256, description="most segments one summary may ask for")
    summary_chunks: int = Field(8, ge=1, le=64, description="chunks the model reads per summary segment (evenly "
                                "spread over the segment's chunks)")
    max_example_decoded_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024, description="largest example "
                                           "image once decoded (width x height x bytes per pixel of its mode, "
                                           "read from the header before decoding)")
    max_file_bytes: int = Field(8 * 1024**3, description="largest file a stream may be started on")
    max_source_duration_s: float = Field(24 * 3600.0, description="longest file a stream may be started on")
    max_streams: int = Field(16, ge=1, description="concurrent running streams per process")
    encode_batch: int = Field(8, ge=1, le=64, description="most streams whose ready clips are encoded together in "
                              "one batch (services/scheduler.py); 1: one clip at a time")
    max_message_bytes: int = Field(8 * 1024 * 1024, description="largest gRPC message the server sends or receives")
    working_snapshot_chunks: int = Field(64, ge=1, le=100_000, description="the working memory is stored as a "
                                         "snapshot every this many chunks (1: with every chunk); a stream resumed "
                                         "after a crash re-steps what came after it (files: decoded and encoded "
                                         "again, exactly; live streams and pushes: the stored chunks merged in)")
    working_deltas: bool = Field(False, description="also store what each chunk changed in the working memory "
                                 "(the tokens that entered): exact resume for every source and QA replicas "
                                 "current to the newest chunk, at about one clip's KV per chunk")
    index_max_bytes: int = Field(2 * 1024**3, ge=0, description="search indexes kept in RAM (all streams); the "
                                 "least recently searched are dropped past this and rebuilt from Redis when asked "
                                 "(0: no limit)")
    resident_max_bytes: int = Field(4 * 1024**3, ge=0, description="working memories and prefixes kept on the "
                                    "model's device for questions (streams ingested here always stay); the least "
                                    "recently asked are dropped past this and read again from Redis when asked")

    reader: Reader = Field(Reader.PYAV, description="file reader; decord reads only sampled frames")
    queue_frames: int = Field(32, ge=2, le=4096, description="sampled frames buffered between decode and encode")
    min_clip_frames: int = Field(2, ge=1, description="a scene cut closes a clip only once it holds this many frames")
    lease_ttl_s: float = Field(10.0, gt=0.5, le=600, description="a stream whose worker is silent this long is resumed")
    push_buffer_bytes: int = Field(8 * 1024 * 1024, ge=65536, description="pushed bytes buffered before the sender waits")
    push_idle_timeout_s: float = Field(60.0, gt=0, le=24 * 3600, description="a push that sends nothing this long "
                                       "ends (failed, truncated by the client) and frees its stream slot")
    redis_timeout_s: float = Field(5.0, gt=0, le=120, description="Redis socket timeout; a stall longer than this "
                                   "is an outage: workers wait and resend, RPCs answer UNAVAILABLE")

    model: ModelOptions = ModelOptions()  # the model to load (VIGIL_MODEL__*: encoders.options)
    live: LiveOptions = LiveOptions()  # RTSP timeouts and reconnect backoff (VIGIL_LIVE__*: streamer.live)
    detector: DetectorSettings = DetectorSettings()
    # every stream's memory defaults (VIGIL_MEMORY__*): the fields, bounds and defaults of memory.options;
    # StartStream / PushConfig override them per stream
    memory: MemoryOptions = MemoryOptions()
    frames: DescriberOptions = DescriberOptions()  # the frame index's describer (VIGIL_FRAMES__*)
    retrieval: SearchOptions = SearchOptions()  # how questions search: fusion weights, floors (VIGIL_RETRIEVAL__*)
    timezone: str | None = Field(None, description="IANA zone wall-clock words in questions are read in "
                                 "(\"after 14:05\"); unset: the server's local zone")
    # named cameras started with `vigil serve`, and their alert rules ([[cameras]] in the VIGIL_CONFIG file;
    # schema and start-up: services/cameras.py); where alerts go (VIGIL_MQTT__*, VIGIL_ALERTS__*: services/alerts)
    cameras: tuple[CameraConfig, ...] = Field((), description="named cameras `vigil serve` starts, with their alert "
                                              "rules; usually [[cameras]] tables in the VIGIL_CONFIG file")
    mqtt: MqttSettings = MqttSettings()
    alerts: AlertSettings = AlertSettings()
    speech: SpeechOptions = SpeechOptions()  # the audio track transcribed (VIGIL_SPEECH__*: encoders.speech)

    @field_validator("auth_token")
    @classmethod
    def _token(cls, v):
        if v is None:
            return v
        t = v.get_secret_value()
        if not t.strip():
            raise ValueError("VIGIL_AUTH_TOKEN is set but empty: unset it to run without auth, or set a random "
                             f"secret of at least {MIN_TOKEN_CHARS} characters")
        if t != t.strip():
            raise ValueError("VIGIL_AUTH_TOKEN has leading or trailing whitespace (a stray newline?): "
                             "clients could never match it")
        if not all(" " <= c <= "~" for c in t):
            raise ValueError("VIGIL_AUTH_TOKEN must be printable ASCII (it travels as a gRPC metadata value)")
        return v

    @field_validator("cameras", mode="before")
    @classmethod
    def _cameras(cls, v):  # one line per problem, naming the camera, the rule and the field
        return check_cameras(v)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v):
        if v:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {v!r}: {exc}") from None
        return v

    @field_validator("media_roots", mode="before")
    @classmethod
    def _roots(cls, v):
        if isinstance(v, str):
            v = json.loads(v) if v.lstrip().startswith("[") else [p for p in v.split(os.pathsep) if p]
        if isinstance(v, Path):
            v = [v]
        return tuple(Path(p).expanduser().resolve() for p in v)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path := os.environ.get("VIGIL_CONFIG"):
            if not Path(path).is_file():
                raise FileNotFoundError(f"VIGIL_CONFIG={path}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def with_overrides(self, **changes) -> "Settings":
        """These settings with `changes` (whole fields: `model=dataclasses.replace(s.model, name=...)`) applied
        and everything validated again, as at start (`model_copy(update=)` would skip the validation)."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        return type(self).model_validate({**dict(self), **changes})
