"""Named cameras from the config file: their schema (`[[cameras]]` with `[[cameras.alerts]]` in the TOML file named
by VIGIL_CONFIG), and starting them when `vigil serve` starts.

    [[cameras]]
    name = "gate"                      # letters, digits, "_", "-", "."; used wherever a stream id is
    source = "rtsp://cam/stream1"      # an rtsp:// URL or a file under the media roots
    fps = 1                            # optional: the server's defaults otherwise
    clip_frames = 8
    memory = { max_age_s = 86400 }     # optional: memory options (memory/options.py), as in StartStream

    [[cameras.alerts]]
    name = "truck"                     # exactly one condition per rule:
    on_screen_text = "TRUCK 22 ARRIVED"     # [min_similarity = 0.8]
    # query = "a red truck" + [min_score = 0.5] | cuts_per_minute = 6 + [window_s = 60] | feed = "down" / "up"
    # | spoken = "dock four" + [min_similarity = 0.8] (words heard on the audio track)
    # optional for chunk rules: rearm_chunks = 2, cooldown_s = 0; any rule: webhook = "https://..."

A bad file fails the settings (so `vigil serve` exits 2) with one line naming the camera, the rule and the field.

At start-up (after adoption) each camera is started unless the stream its name maps to (`{ns}:names` in Redis)
is active (running here after adoption, or on another ingest server) or finished (a file camera watched to its
end); a stopped, failed or deleted one is started again as a new stream, and the name moves to it. A camera that
cannot start (its camera is offline, its file is missing) is logged; the others start all the same.
"""
from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memory.errors import InvalidMemoryOptions
from memory.options import MemoryOptions
from services.alerts import rules as R

log = logging.getLogger("vigil.cameras")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # one MQTT topic level; no wildcards or "/"
STREAM_ID_LIKE = r"^[0-9a-f]{12}$"  # what a generated stream id looks like: never a camera's name
NAME_LOCK_TTL_MS = 60_000
CONDITIONS = ("on_screen_text", "query", "cuts_per_minute", "feed", "spoken")
# option -> the condition it belongs to ("chunk": any condition but feed)
QUALIFIERS = {"min_similarity": "on_screen_text", "min_score": "query", "window_s": "cuts_per_minute",
              "rearm_chunks": "chunk", "cooldown_s": "chunk"}
KIND_OF = {"on_screen_text": R.RuleKind.ON_SCREEN_TEXT, "query": R.RuleKind.QUERY, "cuts_per_minute": R.RuleKind.CUTS,
           "feed": R.RuleKind.FEED, "spoken": R.RuleKind.SPOKEN}  # condition field -> the rule's kind


def push_name(name: str, cameras=()) -> str | None:
    """The name a push (`vigil push --name`) is known by in every call that takes a stream id, as a camera's is, or
    None when `name` could not be a camera's name (then it is only a label in the stream's source). A configured
    camera's name is refused (InvalidRequest): a push never takes a camera's name away from it."""
    import re

    from services.errors import InvalidRequest

    if not re.match(NAME_PATTERN, name) or re.match(STREAM_ID_LIKE, name):
        return None
    if any(c.name == name for c in cameras):
        raise InvalidRequest(f"push name {name!r} is a configured camera's name: pick another")
    return name


def _url(v: str | None, what: str) -> str | None:
    if v is not None and not v.lower().startswith(("http://", "https://")):
        raise ValueError(f"{what} must be an http:// or https:// URL")
    return v


class AlertRuleConfig(BaseModel):
    """`[[cameras.alerts]]`: one standing rule; unset options take `services.alerts.rules`' defaults."""
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=NAME_PATTERN)
    on_screen_text: str | None = Field(None, min_length=1, max_length=200)
    min_similarity: float | None = Field(None, gt=0, le=1, description="1 - edit distance / length (OCR slips)")
    query: str | None = Field(None, min_length=1, max_length=500)
    min_score: float | None = Field(None, ge=-1, le=1, description="cosine the query must reach")
    cuts_per_minute: float | None = Field(None, gt=0, le=10_000)
    window_s: float | None = Field(None, gt=0, le=24 * 3600, description="the cut rate's sliding window")
    feed: R.FeedChange | None = None
    rearm_chunks: int | None = Field(None, ge=1, le=100_000, description="chunks without a match that end an episode")
    cooldown_s: float | None = Field(None, ge=0, description="media seconds after a firing in which it fires no more")
    webhook: str | None = Field(None, max_length=2048)
    spoken: str | None = Field(None, min_length=1, max_length=200, description="words heard on the audio track")

    @field_validator("webhook")
    @classmethod
    def _hook(cls, v):
        return _url(v, "webhook")

    @model_validator(mode="after")
    def _one_condition(self):
        given = [c for c in CONDITIONS if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(CONDITIONS)} (got {', '.join(given) or 'none'})")
        cond = given[0]
        for opt, owner in QUALIFIERS.items():
            if (getattr(self, opt) is not None and owner != cond and not (owner == "chunk" and cond != "feed")
                    and not (opt == "min_similarity" and cond == "spoken")):  # spoken words: the same tolerance
                raise ValueError(f"{opt} does not apply to a {cond} rule"
                                 + (f" (it goes with {owner})" if owner != "chunk" else " (feed rules fire once per "
                                    "transition)"))
        if cond in ("on_screen_text", "spoken") and not R.normalise(getattr(self, cond)):
            raise ValueError(f"{cond} has no letters or digits")
        return self

    @property
    def condition(self) -> str:
        return next(c for c in CONDITIONS if getattr(self, c) is not None)

    def rule(self) -> R.Rule:
        """The typed rule record evaluation uses (defaults filled in by `Rule`)."""
        cond = self.condition
        fields: dict[str, Any] = {"name": self.name, "kind": KIND_OF[cond], "webhook": self.webhook}
        fields.update({"on_screen_text": {"text": self.on_screen_text}, "query": {"query": self.query},
                       "cuts_per_minute": {"cuts_per_minute": self.cuts_per_minute}, "feed": {"feed": self.feed},
                       "spoken": {"text": self.spoken}}[cond])
        for opt in QUALIFIERS:
            if getattr(self, opt) is not None:
                fields[opt] = getattr(self, opt)
        return R.Rule(**fields)


class CameraConfig(BaseModel):
    """`[[cameras]]`: a named source started with the server, and its alert rules."""
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(min_length=1, max_length=4096, description="an rtsp:// URL or a file under the media roots")
    fps: float | None = Field(None, gt=0, le=30)
    clip_frames: int | None = Field(None, ge=2, le=64)
    memory: dict[str, Any] = Field(default_factory=dict, description="memory options, as StartStream's")
    alerts: tuple[AlertRuleConfig, ...] = ()

    @field_validator("name")
    @classmethod
    def _not_an_id(cls, v):
        import re

        if re.match(STREAM_ID_LIKE, v):
            raise ValueError("a camera name must not look like a stream id (12 hex digits)")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v):
        try:
            MemoryOptions().with_overrides(**v)
        except InvalidMemoryOptions as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _rules(self):
        seen = set()
        for r in self.alerts:
            if r.name in seen:
                raise ValueError(f"two alert rules are named {r.name!r}")
            seen.add(r.name)
        needs_index = [r.name for r in self.alerts if KIND_OF[r.condition].frame_index]
        if needs_index and self.memory.get("frame_index") is False:
            raise ValueError(f"alert rule(s) {', '.join(needs_index)} read the frame index, which memory."
                             "frame_index = false turns off")
        return self

    def rules(self) -> tuple[R.Rule, ...]:
        return tuple(a.rule() for a in self.alerts)


_PHRASES = {"extra_forbidden": "unknown field", "missing": "required field missing"}


def _describe(e: dict, raw: Any, i: int) -> str:
    """One pydantic error of camera `i` as "camera 'gate' (cameras[0]), alert rule 'x' (alerts[1]), field 'y': why"."""
    def name_of(entry, fallback):
        n = entry.get("name") if isinstance(entry, dict) else None
        return f"{n!r} ({fallback})" if isinstance(n, str) and n else fallback

    loc = list(e.get("loc", ()))
    parts = [f"camera {name_of(raw, f'cameras[{i}]')}"]
    if len(loc) >= 2 and loc[0] == "alerts" and isinstance(loc[1], int):
        rules = raw.get("alerts") if isinstance(raw, dict) else None
        entry = rules[loc[1]] if isinstance(rules, (list, tuple)) and loc[1] < len(rules) else None
        parts.append(f"alert rule {name_of(entry, f'alerts[{loc[1]}]')}")
        loc = loc[2:]
    if loc:
        parts.append(f"field {'.'.join(str(p) for p in loc)!r}")
    msg = e.get("msg", "invalid").removeprefix("Value error, ")
    return ", ".join(parts) + ": " + _PHRASES.get(e.get("type", ""), msg)


def check_cameras(value: Any) -> tuple[CameraConfig, ...]:
    """The `cameras` setting, validated: ValueError with one line per problem (joined with "; ") naming the camera,
    the rule and the field."""
    if value is None:
        return ()
    if isinstance(value, dict) or not isinstance(value, (list, tuple)):
        raise ValueError("cameras must be a list of [[cameras]] tables")
    out, problems, names = [], [], {}
    for i, raw in enumerate(value):
        name = raw.name if isinstance(raw, CameraConfig) else raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name in names:
            problems.append(f"camera {name!r} (cameras[{i}]): the name is already used by cameras[{names[name]}]")
            continue
        if isinstance(name, str):
            names[name] = i
        if isinstance(raw, CameraConfig):
            out.append(raw)
            continue
        try:
            out.append(CameraConfig.model_validate(raw))
        except ValidationError as exc:
            problems += [_describe(e, raw, i) for e in exc.errors(include_url=False, include_input=False)]
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(out)


# ---- the allow-list of camera hosts (VIGIL_CAMERA_HOSTS) ---------------------------------------
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}


def _split_host(text: str) -> tuple[str, str | None]:
    """"host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address -> (host, port or None)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, (rest[1:] if rest.startswith(":") else None) if rest else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    return text, None


def host_pattern(pattern: str) -> str:
    """One VIGIL_CAMERA_HOSTS entry, checked and lower-cased: an fnmatch pattern of a host name or address, with
    an optional port (digits, or *)."""
    p = str(pattern).strip().lower()
    host, port = _split_host(p)
    if not host or any(c.isspace() or c in "/@?#" for c in p) or len(p) > 300:
        raise ValueError(f"camera host pattern {pattern!r}: give a host name or address, optionally with :port "
                         "(fnmatch wildcards allowed)")
    if port is not None and port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"camera host pattern {pattern!r}: the port must be a number (1-65535) or *")
    return p


def check_camera_host(source: str, patterns: tuple[str, ...]) -> None:
    """Refuse an rtsp:// or rtsps:// `source` whose host (and port) no pattern allows (no patterns: any host).
    Runs before anything connects, and says the same whatever the host is, so the refusal tells nothing of what
    listens there. Files and other sources pass: this list is about where the server connects to."""
    from fnmatch import fnmatchcase
    from urllib.parse import urlsplit

    from services.errors import HostNotAllowed

    if not patterns or "://" not in source:
        return
    scheme = source.split("://", 1)[0].lower()
    if scheme not in DEFAULT_PORTS:
        return
    refused = HostNotAllowed("the camera's host is not in the allow-list of camera hosts (VIGIL_CAMERA_HOSTS)")
    try:
        url = urlsplit(source)
        host, port = (url.hostname or "").lower(), url.port or DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is no number, a bracket left open
        raise refused from None
    if not host:
        raise refused
    for p in patterns:
        phost, pport = _split_host(p)
        if fnmatchcase(host, phost) and (pport is None or pport == "*" or int(pport) == port):
            return
    raise refused


# ---- start-up --------------------------------------------------------------------------------
def start_cameras(rt, manager, cameras: tuple[CameraConfig, ...]) -> dict[str, str]:
    """Start each camera whose stream is not already active or finished (see the module docstring). Returns
    camera name -> what happened ("started <id>", "running <id>", "finished <id>", "starting elsewhere",
    "failed: <why>")."""
    from memory.errors import StreamNotFound
    from memory.store import StreamState
    from services.errors import public_message
    from streamer.redact import redact_text, redact_url

    store, out = rt.store, {}
    for cam in cameras:
        if not store.lock_name(cam.name, manager.owner, NAME_LOCK_TTL_MS):  # another server is starting it now
            out[cam.name] = "starting elsewhere"
            continue
        try:
            sid = store.stream_for_name(cam.name)
            rec = None
            if sid is not None:
                try:
                    rec = store.get_stream(sid)
                except StreamNotFound:
                    rec = None
            if rec is not None and (rec.state.active or rec.state == StreamState.FINISHED):
                out[cam.name] = f"{'running' if rec.state.active else 'finished'} {sid}"
                log.info("camera %r: stream %s is %s; not started again", cam.name, sid, rec.state)
                continue
            log.info("camera %r: starting (%s)", cam.name, redact_url(cam.source))
            started = manager.start(cam.source, cam.fps or 0.0, cam.clip_frames or 0, cam.memory or None,
                                    name=cam.name)
            out[cam.name] = f"started {started.stream_id}"
        except Exception as exc:  # one camera's trouble never keeps the server or the other cameras from starting
            why = redact_text(public_message(exc))
            out[cam.name] = f"failed: {why}"
            log.error("camera %r could not start: %s", cam.name, why)
        finally:
            store.unlock_name(cam.name, manager.owner)
    return out
