"""Alerts: standing rules of named cameras, evaluated at ingest on every new chunk and on the feed going down or
coming back (`services.pipeline.StreamWorker` calls `on_chunk` / `on_feed`), and their publishers.

A firing becomes an `Alert` (`alert.py`: the record and its stored JSON form), which is (a) an event in the
stream's log (kind "alert", shown by WatchStream as KIND_ALERT with an `Alert` message) and (b) one message on MQTT
topic `vigil/<camera>/alert` and a POST to the rule's and the global webhook, queued and sent in the background
(`publish.py`). Rules are pure (`rules.py`); settings: VIGIL_MQTT__*, VIGIL_ALERTS__*; the cameras and their
rules: services/cameras.py.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from services.alerts import rules as R
from services.alerts.alert import Alert
from services.alerts.publish import AlertPublisher, parse_mqtt_url

log = logging.getLogger("vigil.alerts")
EVENT_KIND = "alert"

__all__ = ["Alert", "AlertHub", "AlertSettings", "MqttSettings", "StreamAlerts", "for_stream"]


class MqttSettings(BaseModel):
    """VIGIL_MQTT__*: the broker alerts are published to (unset url: no MQTT)."""
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    url: str | None = Field(None, description="mqtt://host[:port] (TLS: mqtts://); user:password@ allowed")
    username: str | None = Field(None, description="broker login")
    password: SecretStr | None = Field(None, description="broker password (a secret: never logged)")
    tls: bool | None = Field(None, description="unset: from the URL's scheme (mqtts://)")
    ca_file: Path | None = Field(None, description="PEM CA bundle the broker's certificate is checked against "
                                 "(unset: the system's)")
    client_id: str | None = Field(None, max_length=128, description="MQTT client id (unset: vigil-<random>)")
    qos: int = Field(1, ge=0, le=2, description="1: at least once (with the payload's id to drop repeats)")
    topic_prefix: str = Field("vigil", pattern=r"^[^#+\s]{1,64}$", description="alerts are published on topic "
                              "<prefix>/<camera>/alert")

    @field_validator("url")
    @classmethod
    def _url(cls, v):
        if v:
            parse_mqtt_url(v)
        return v or None

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v):
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"MQTT CA file {v}: no such file")
        return Path(v).expanduser().resolve() if v is not None else None


class AlertSettings(BaseModel):
    """VIGIL_ALERTS__*: delivery of fired alerts."""
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    webhook_url: str | None = Field(None, max_length=2048, description="every alert is POSTed here as JSON too")
    webhook_timeout_s: float = Field(2.0, gt=0, le=60, description="timeout of each POST")
    queue_size: int = Field(1000, ge=1, le=1_000_000, description="alerts waiting per destination; more are dropped")

    @field_validator("webhook_url")
    @classmethod
    def _hook(cls, v):
        if v and not v.lower().startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return v or None


class StreamAlerts:
    """One stream's rules and their state, owned by its ingest worker (one thread: no locks)."""

    def __init__(self, hub: "AlertHub | None", sid: str, camera: str | None, rules: tuple[R.Rule, ...],
                 durable: Callable, down: bool = False) -> None:
        """`down`: the feed is down already (a stream adopted while reconnecting: its comeback fires "up")."""
        self.hub, self.sid, self.camera, self.rules, self._durable = hub, sid, camera, rules, durable
        self.states = tuple(R.RuleState(down=down) for _ in rules)
        self.fired: deque[Alert] = deque(maxlen=100)  # this worker's latest firings (newest last), for inspection
        self._last_media_s = 0.0

    def on_chunk(self, record, vectors: Mapping | None = None) -> None:
        """After a chunk is stored: `record` (memory.store.ChunkRecord), `vectors` its frame-index vectors."""
        if not self.rules:
            return
        facts = R.ChunkFacts(chunk_id=record.chunk_id, start_s=record.start_s, end_s=record.end_s,
                             keyframe_s=record.keyframe_s, text=record.text, cuts=record.cuts,
                             wall_start=record.wall_start, wall_end=record.wall_end, vectors=dict(vectors or {}),
                             speech=record.said)
        self._last_media_s = record.end_s
        self._apply(facts)

    def on_feed(self, up: bool, reason: str = "", media_s: float | None = None, wall_s: float | None = None) -> None:
        """A live source connected (`up`) or dropped."""
        if not self.rules:
            return
        if media_s is not None:
            self._last_media_s = media_s
        self._apply(R.FeedFacts(up=up, media_s=self._last_media_s, wall_s=wall_s, reason=reason))

    def _apply(self, facts) -> None:
        try:
            self.states, fired = R.evaluate(self.rules, self.states, facts, self.hub.query_vectors(self.camera))
        except Exception:  # a rule's bug never stops ingest
            log.exception("stream %s: alert rules failed on %s", self.sid, type(facts).__name__)
            return
        for f in fired:
            self._emit(f)

    def _emit(self, f: R.Firing) -> None:
        alert = Alert.of(f, self.sid, self.camera, time.time())
        log.info("stream %s (camera %s): alert %r (%s) fired at %.1f-%.1fs: %s", self.sid, alert.camera,
                 f.rule.name, f.rule.kind, f.start_s, f.end_s, f.matched[:120])
        self.fired.append(alert)
        self.hub.count_fired(alert.camera, f.rule.name)
        summary = f"{f.rule.name} ({f.rule.kind}): {f.matched[:200]}"
        # the worker's store call: through an outage it waits and resends (Released / LeaseLost propagate)
        self._durable(self.hub.store.event, self.sid, EVENT_KIND, alert=alert.to_json(), message=summary)
        self.hub.publisher.publish(alert, (f.rule.webhook,) if f.rule.webhook else ())


class AlertHub:
    """The process's cameras' rules (query embeddings computed once) and its publisher."""

    def __init__(self, store, publisher: AlertPublisher, rules: Mapping[str, tuple[R.Rule, ...]],
                 query_vectors: Mapping[str, Mapping[str, Mapping]]) -> None:
        self.store, self.publisher = store, publisher
        self.rules = dict(rules)
        self._queries = {k: dict(v) for k, v in query_vectors.items()}
        self._fired: dict[tuple[str, str], int] = {}  # (camera, rule) -> firings in this process (metrics)
        self._fired_lock = threading.Lock()

    def count_fired(self, camera: str, rule: str) -> None:
        with self._fired_lock:
            self._fired[(camera, rule)] = self._fired.get((camera, rule), 0) + 1

    def fired_counts(self) -> dict[tuple[str, str], int]:
        """(camera, rule) -> alerts fired by this process's workers; every configured rule is present (0 until
        it fires)."""
        with self._fired_lock:
            counts = dict(self._fired)
        for cam, rs in self.rules.items():
            for r in rs:
                counts.setdefault((cam, r.name), 0)
        return counts

    @classmethod
    def create(cls, settings, store, describer) -> "AlertHub":
        """From the settings' cameras and VIGIL_MQTT__* / VIGIL_ALERTS__*; `describer` embeds the query rules."""
        rules = {cam.name: cam.rules() for cam in settings.cameras}
        queries: dict[str, dict] = {}
        for cam, rs in rules.items():
            for r in rs:
                if r.kind != R.RuleKind.QUERY:
                    continue
                if describer is None:
                    log.warning("camera %r: alert rule %r needs the frame index, which this process has not: it "
                                "will not fire", cam, r.name)
                    continue
                queries.setdefault(cam, {})[r.name] = describer.embed_query(r.query)
        m, a = settings.mqtt, settings.alerts
        publisher = AlertPublisher(
            mqtt_url=m.url, mqtt_username=m.username, mqtt_password=m.password.get_secret_value() if m.password else None,
            mqtt_ca_file=m.ca_file, mqtt_tls=m.tls, mqtt_client_id=m.client_id, mqtt_qos=m.qos,
            topic_prefix=m.topic_prefix, webhook_url=a.webhook_url, webhook_timeout_s=a.webhook_timeout_s,
            queue_size=a.queue_size)
        return cls(store, publisher, rules, queries)

    def query_vectors(self, camera: str | None) -> Mapping[str, Mapping]:
        return self._queries.get(camera or "", {})

    def for_stream(self, rec, durable: Callable) -> StreamAlerts:
        from memory.store import StreamState

        sid = rec.stream_id
        camera = self.store.name_of(sid) if self.rules else None
        return StreamAlerts(self, sid, camera, self.rules.get(camera, ()) if camera else (), durable,
                            down=rec.state == StreamState.RECONNECTING)

    def close(self, timeout_s: float = 5.0) -> None:
        self.publisher.close(timeout_s)


def for_stream(rt, rec, durable: Callable) -> StreamAlerts:
    """The alerts of the stream `rec` an ingest worker runs (none when the runtime has no alert hub or the stream
    is no named camera with rules). `durable`: the worker's retrying store call."""
    hub = getattr(rt, "alerts", None)
    if hub is None:
        return StreamAlerts(None, rec.stream_id, None, (), durable)
    return hub.for_stream(rec, durable)
