"""One settings object, built once at the process edge from VIGIL_* variables and an optional TOML file.

Precedence: explicit arguments > environment (VIGIL_*, nested with "__", e.g. VIGIL_MODEL__NAME)
> the TOML file named by VIGIL_CONFIG > defaults.
"""
from __future__ import annotations

import json
import os
import re
from enum import StrEnum
from typing import Annotated, Any, Literal
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


def _name_list(v) -> tuple[str, ...]:
    """A setting holding a list of names or patterns: a JSON list, or names joined with "," (blanks dropped)."""
    if isinstance(v, str):
        v = json.loads(v) if v.lstrip().startswith("[") else v.split(",")
    return tuple(str(x).strip() for x in v if str(x).strip())


class GrpcLimits(BaseModel):
    """VIGIL_GRPC__*: what one gRPC connection may hold and for how long (services/server.py hands these to the
    grpc.aio server as its channel arguments)."""
    model_config = ConfigDict(frozen=True)

    handshake_timeout_s: float = Field(10.0, gt=0, le=300, description="a connection that has not finished its "
                                       "handshake (TLS, and the client's HTTP/2 preface and settings) this long "
                                       "after it opened is closed")
    max_concurrent_streams: int = Field(100, ge=1, le=10_000, description="calls one connection may have open at "
                                        "once (HTTP/2 streams); more wait on the client's side")
    max_connections: int = Field(4096, ge=1, le=1_000_000, description="open connections to the gRPC port (all "
                                 "clients); one more is closed at once. Keep it well under the process's open-file "
                                 "limit (`ulimit -n`) so that the HTTP side, Redis and files still get theirs")
    max_metadata_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024, description="largest header block "
                                    "(metadata) of one call")
    max_connection_idle_s: float = Field(600.0, ge=0, le=30 * 24 * 3600, description="a connection with no call "
                                         "open this long is closed (GOAWAY; clients reconnect by themselves); 0: "
                                         "never")
    max_connection_age_s: float = Field(0.0, ge=0, le=365 * 24 * 3600, description="a connection older than this "
                                        "is asked to go away (its open calls get `max_connection_age_grace_s` to "
                                        "finish); 0: no limit (long WatchStream and PushStream calls are normal)")
    max_connection_age_grace_s: float = Field(300.0, ge=0, le=30 * 24 * 3600, description="time the calls of a "
                                              "connection past its age limit get to finish")
    keepalive_time_s: float = Field(120.0, ge=1, le=24 * 3600, description="the server pings a connection that "
                                    "has been quiet this long")
    keepalive_timeout_s: float = Field(20.0, ge=1, le=3600, description="a ping not answered within this closes "
                                       "the connection")
    min_ping_interval_s: float = Field(30.0, ge=1, le=24 * 3600, description="clients that ping more often than "
                                       "this (without data in between) are told to go away after two such pings")

    def options(self) -> list[tuple[str, int]]:
        """The channel arguments of the grpc.aio server (milliseconds where grpc counts them)."""
        ms = lambda s: int(s * 1000)  # noqa: E731
        never = 2**31 - 1  # grpc's INT_MAX: off
        return [
            ("grpc.server_handshake_timeout_ms", ms(self.handshake_timeout_s)),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_s) if self.max_connection_idle_s else never),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s) if self.max_connection_age_s else never),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_s)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.keepalive_permit_without_calls", 0),  # a client's pings on a connection with no call are strikes
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", 2),
        ]


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


MIN_TOKEN_CHARS = 16  # shorter tokens are refused at start (Settings._token)


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
    resend_chunks: int = Field(16, ge=0, le=1024, description="chunk writes a worker keeps (serialized, on the host) "
                               "to send again when the store lost chunks it had acknowledged (a Redis restarted from "
                               "an older snapshot, a replica promoted before it had them); loss beyond them fails the "
                               "stream. Costs about a chunk's bytes each (2 MB at the 7B layout), plus a working-memory "
                               "snapshot when one is among them; 0: none kept")
    redis_fsync: Literal["always", "everysec"] = Field(
        "always", description="private redis-server only: its append-only file's fsync policy. always: a chunk "
        "is on disk before Redis acknowledges it; everysec: faster, and a Redis killed while an fsync is slow loses "
        "the last second or two of acknowledged writes (the worker sends its last VIGIL_RESEND_CHUNKS again; older ones fail "
        "the stream)")
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
    # limits of the gRPC side (issue 21): connections (VIGIL_GRPC__*), watchers, and where cameras may be
    grpc: GrpcLimits = GrpcLimits()
    max_watchers_per_stream: int = Field(256, ge=1, le=100_000, description="WatchStream calls open on one stream "
                                         "at once; one more is refused with RESOURCE_EXHAUSTED")
    max_watchers_per_client: int = Field(128, ge=1, le=100_000, description="WatchStream calls open from one client "
                                         "address at once (all streams); one more is refused with RESOURCE_EXHAUSTED")
    camera_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description='hosts rtsp:// sources (StartStream, [[cameras]]) may name: patterns such as '
        '"cam-*.lan", "10.0.0.*:554" (fnmatch, case-insensitive; a pattern without a port allows any port), a JSON '
        'list or joined with ","; empty: any host. Checked before any connection is made')

    # the HTTP side's limits and browser safety (services/http/limits.py, services/http/guard.py; docs/operations.md)
    http_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description='Host header names the HTTP side answers (a JSON list, or names joined with ","; "*": any); '
        "empty: loopback names only (localhost, 127.0.0.1, [::1]) when no token is set, any name when one is")
    http_max_login_bytes: int = Field(4096, ge=256, le=1024 * 1024, description="largest /login and /logout "
                                      "request body; larger is 413, refused before it is read")
    http_max_body_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest request body "
                                     "of every other route (the JSON API); larger is 413, refused before it is read")
    http_max_header_bytes: int = Field(16 * 1024, ge=4096, le=1024 * 1024, description="largest request line plus "
                                       "headers; larger is 400 and the connection closes")
    http_header_timeout_s: float = Field(10.0, gt=0, le=600, description="a connection's request header must be "
                                         "complete this long after it opens (or after the keep-alive of the "
                                         "previous response); else it is closed")
    http_body_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request's body must arrive in full "
                                       "within this long of its header (408)")
    http_keep_alive_s: float = Field(5.0, gt=0, le=600, description="an idle keep-alive connection is closed "
                                     "after this long")
    http_max_connections: int = Field(1000, ge=1, le=1_000_000, description="open HTTP connections per server; "
                                      "one more is closed at once, unread")
    http_max_connections_per_client: int = Field(64, ge=1, le=1_000_000, description="open HTTP connections per "
                                                 "client address; one more is closed at once, unread")
    auth_fail_delay_s: float = Field(0.25, ge=0, le=60, description="after a failed token or login, the next "
                                     "attempt from that client address waits this long, doubling with every "
                                     "further failure (HTTP and gRPC alike)")
    auth_fail_max_delay_s: float = Field(15.0, ge=0, le=3600, description="the longest such wait")
    auth_fail_forget_s: float = Field(600.0, gt=0, le=86_400, description="a client address with no failed "
                                      "attempt for this long starts again with no delay")
    session_ttl_s: float = Field(12 * 3600.0, ge=60, le=30 * 86_400, description="a browser sign-in lasts this "
                                 "long (a random session id in the cookie, kept in Redis under the namespace; "
                                 "signing out deletes it)")

    @field_validator("http_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, v):
        return tuple(h.lower() for h in _name_list(v))

    # past one machine (issue 22; docs/operations.md "Redis Cluster"): the store on a Redis Cluster with replicas
    redis_cluster: bool = Field(False, description="VIGIL_REDIS_URL is a Redis Cluster (any one node's address); "
                                "the same as giving the URL the redis+cluster:// (or rediss+cluster://) scheme")
    redis_wait_replicas: int = Field(0, ge=0, le=16, description="after each chunk write, wait until this many "
                                     "replicas have it (Redis WAIT) before the chunk counts as stored: a master "
                                     "killed right after its reply then loses no acknowledged chunk to its "
                                     "promoted replica (0: no wait; replication is asynchronous)")
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=60_000, description="longest wait for those replicas; a "
                                       "chunk fewer replicas took in time stays stored on the master, and is "
                                       "logged and counted (a replica is down or far behind)")

    # questions across cameras (services/search.py, services/report.py): camera groups ([camera_groups] in the
    # VIGIL_CONFIG file: group = ["camera", ...]) and the fan-out's bounds
    camera_groups: dict[str, tuple[str, ...]] = Field({}, description="named groups of cameras a search, answer or "
                                                      "report can cover: [camera_groups] gate_side = [\"gate\", "
                                                      "\"yard\"] in the VIGIL_CONFIG file")
    search_workers: int = Field(4, ge=1, le=64, description="streams one search across cameras reads at once")
    max_search_streams: int = Field(256, ge=1, le=10_000, description="most streams one search across cameras covers")
    across_cameras: int = Field(2, ge=1, le=16, description="cameras an answer across cameras is generated on (the "
                                "best found first), unless the request says")
    max_across_cameras: int = Field(4, ge=1, le=64, description="most cameras one answer across cameras reads")
    max_report_cameras: int = Field(64, ge=1, le=10_000, description="most cameras one report covers")

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
        if len(t) < MIN_TOKEN_CHARS:
            raise ValueError(f"VIGIL_AUTH_TOKEN has {len(t)} characters: use a random secret of at least "
                             f"{MIN_TOKEN_CHARS} (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
        return v

    @field_validator("cameras", mode="before")
    @classmethod
    def _cameras(cls, v):  # one line per problem, naming the camera, the rule and the field
        return check_cameras(v)

    @field_validator("camera_hosts", mode="before")
    @classmethod
    def _camera_hosts(cls, v):
        from services.cameras import host_pattern

        return tuple(host_pattern(p) for p in _name_list(v))

    @model_validator(mode="after")
    def _cameras_allowed(self):  # a configured camera outside VIGIL_CAMERA_HOSTS is refused at start
        from services.cameras import check_camera_host

        for cam in self.cameras:
            try:
                check_camera_host(cam.source, self.camera_hosts)
            except Exception as exc:
                raise ValueError(f"camera {cam.name!r}: {exc}") from None
        return self

    @field_validator("camera_groups")
    @classmethod
    def _groups(cls, v):
        import re

        from services.cameras import NAME_PATTERN

        for group, members in v.items():
            if not re.match(NAME_PATTERN, group):
                raise ValueError(f"camera group {group!r}: a name is 1-64 letters, digits, '_', '-' or '.'")
            if not members:
                raise ValueError(f"camera group {group!r} names no camera")
        return v

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
            sources.append(CheckedTomlSource(settings_cls, toml_file=path))
        return tuple(sources)

    def with_overrides(self, **changes) -> "Settings":
        """These settings with `changes` (whole fields: `model=dataclasses.replace(s.model, name=...)`) applied
        and everything validated again, as at start (`model_copy(update=)` would skip the validation)."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        return type(self).model_validate({**dict(self), **changes})


# ---- the VIGIL_CONFIG file: read, checked, and its mistakes as one line each --------------------------------------
class ConfigFileError(ValueError):
    """A mistake in the VIGIL_CONFIG file, said in one line: "FILE:LINE:COL: what" (line and column when known).
    `vigil` prints it as `error: ...` and exits 2 before any model loads."""

    def __init__(self, path: Path | str, what: str, line: int | None = None, col: int | None = None) -> None:
        self.path, self.what, self.line, self.col = str(path), what, line, col
        where = self.path + (f":{line}" if line else "") + (f":{col}" if line and col else "")
        super().__init__(f"config file {where}: {what}")


_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$", re.S)
_TOML_PLAIN = {"Cannot overwrite a value": "a key is set twice (duplicate key)",
               "Cannot declare": "a table is declared twice",
               "Illegal character '\\n'": "a string is not closed before the end of the line"}


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The TOML file at `path` as a dict, with every key known to Settings; else ConfigFileError naming the file,
    the line and the column: not UTF-8, a syntax error, a duplicate key, an unknown key (with the nearest known one
    suggested)."""
    import tomllib

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigFileError(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}): save it as UTF-8",
                              line, col) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_POS.match(str(exc))
        msg, line, col = (m["msg"], int(m["line"]), int(m["col"])) if m else (str(exc), None, None)
        plain = next((v for k, v in _TOML_PLAIN.items() if msg.startswith(k)), None)
        text_line = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
        if msg.startswith(("Cannot overwrite", "Cannot declare")) and line:  # tomllib points past the value: the key
            col = len(text_line) - len(text_line.lstrip()) + 1
        elif msg.startswith("Illegal character '\\n'") and line:  # the line's end: where the string opens
            m = re.search(r"""=\s*(["'])""", text_line)
            col = m.start(1) + 1 if m else col
        raise ConfigFileError(path, f"invalid TOML: {plain or msg}", line, col) from None
    if problem := unknown_key(data, Settings):
        dotted, suggestion, owners = problem
        line, col = _key_position(text, dotted[-1])
        hint = f": did you mean {suggestion}?" if suggestion else ""
        of = f" of {', '.join(owners)}" if owners else ""
        raise ConfigFileError(path, f"unknown setting {'.'.join(dotted)!r}{of}{hint}", line, col)
    return data


def _fields_of(tp) -> dict[str, Any] | None:
    """Field name -> annotation of a pydantic model or a dataclass; None for anything else (a leaf)."""
    import dataclasses
    import typing

    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {k: f.annotation for k, f in tp.model_fields.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        try:
            hints = typing.get_type_hints(tp)
        except Exception:  # an annotation that does not resolve: names only, no deeper check
            hints = {}
        return {f.name: hints.get(f.name) for f in dataclasses.fields(tp)}
    return None


def _inner(tp):
    """`X` of `X | None`, `Annotated[X, ...]`, `tuple[X, ...]`, `list[X]`; and whether it was a sequence."""
    import typing

    seq = False
    for _ in range(4):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (tuple, list) and args:
            tp, seq = args[0], True
        elif args and type(None) in args and len(args) == 2:
            tp = next(a for a in args if a is not type(None))
        else:
            break
    return tp, seq


def _nested_dicts():  # dict-typed fields whose keys are another record's fields
    return {(CameraConfig, "memory"): MemoryOptions}


_OWNER = {"cameras": "camera", "alerts": "alert rule"}  # an array of named tables -> what one is called


def unknown_key(data: Any, tp, where: tuple[str, ...] = (), owners: tuple[str, ...] = ()
                ) -> tuple[tuple[str, ...], str | None, tuple[str, ...]] | None:
    """The first key of `data` (a TOML table) that `tp` does not have, as (dotted path, nearest known key or None,
    the named tables it is in: "camera 'gate'", "alert rule 'truck'"), or None when every key is known; nested
    tables and arrays of tables are checked against their types."""
    import difflib

    fields = _fields_of(tp)
    if fields is None or not isinstance(data, dict):
        return None
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            return (*where, key), (near[0] if near else None), owners
        sub, seq = _inner(fields[key])
        sub = _nested_dicts().get((tp, key), sub)
        items = value if seq and isinstance(value, list) else [value]
        for i, item in enumerate(items):
            name = item.get("name") if seq and isinstance(item, dict) else None
            owner = (f"{_OWNER.get(key, key)} {name!r}",) if isinstance(name, str) else ()
            if found := unknown_key(item, sub, (*where, f"{key}[{i}]" if seq else key), (*owners, *owner)):
                return found
    return None


def _key_position(text: str, key: str) -> tuple[int | None, int | None]:
    """Line and column (1-based) of the first place `key` is set in `text` (bare or quoted), or (None, None)."""
    pattern = re.compile(rf"""(^|[{{,]\s*|\.)(?P<k>{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*[=.]""")
    for n, line in enumerate(text.splitlines(), 1):
        if m := pattern.search(line.split("#", 1)[0]):
            return n, m.start("k") + 1
    return None, None


class CheckedTomlSource(TomlConfigSettingsSource):
    """The VIGIL_CONFIG file read by `read_config_file`: its mistakes are one line each (ConfigFileError)."""

    def _read_file(self, file_path) -> dict[str, Any]:
        return read_config_file(file_path)
