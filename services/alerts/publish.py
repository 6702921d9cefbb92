"""Where fired alerts go besides the stream's event log: an MQTT broker (paho-mqtt, QoS 1) and webhooks (HTTP POST
of the same JSON). Ingest never waits for them: `AlertPublisher.publish` puts the alert on a bounded queue per
destination and returns; one background thread per destination sends. A full queue drops the alert (counted,
logged); a failed send is logged and counted, never raised.

Exactly once: each alert carries an `id` that is the same for every delivery of one firing (`Firing.dedupe_id`
with the stream id), and is handed to each destination once. MQTT QoS 1 is at-least-once across a broker
reconnect (paho resends what was not acknowledged); a subscriber that must never see a repeat drops ids it saw.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote, urlsplit

from services.alerts.alert import Alert
from streamer.redact import redact_text, redact_url

log = logging.getLogger("vigil.alerts")

MQTT_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}  # scheme -> TLS
TOPIC_SUFFIX = "alert"


def topic_for(prefix: str, camera: str) -> str:
    """`<prefix>/<camera>/alert` (camera names are checked to be one topic level: services/cameras.py)."""
    return f"{prefix}/{camera}/{TOPIC_SUFFIX}"


@dataclass
class Counters:
    queued: int = 0
    sent: int = 0  # handed to the broker / answered 2xx
    failed: int = 0
    dropped: int = 0  # the queue was full

    def as_dict(self) -> dict[str, int]:
        return dict(queued=self.queued, sent=self.sent, failed=self.failed, dropped=self.dropped)


class _Sink:
    """A bounded queue and the one thread that drains it through `send` (which may raise: counted, logged)."""

    def __init__(self, name: str, size: int, send: Callable[[object], None]) -> None:
        self.name, self._send = name, send
        self.counters = Counters()
        self._q: queue.Queue = queue.Queue(maxsize=size)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"alerts-{name}", daemon=True)
        self._thread.start()

    def submit(self, item, label: str = "") -> bool:
        """Queue `item` for sending; `label` (the alert's id) names it in the log lines."""
        try:
            self._q.put_nowait((item, label))
        except queue.Full:
            with self._lock:
                self.counters.dropped += 1
            log.warning("alerts: alert %s dropped for %s: its queue is full (%d waiting)", label or "?", self.name,
                        self._q.maxsize)
            return False
        with self._lock:
            self.counters.queued += 1
        return True

    def _run(self) -> None:
        while True:
            got = self._q.get()
            if got is None:
                return
            item, label = got
            try:
                self._send(item)
                with self._lock:
                    self.counters.sent += 1
                log.info("alerts: alert %s published to %s %s", label or "?", self.name, redact_text(str(item[0])))
            except Exception as exc:  # never fatal: logged and counted
                with self._lock:
                    self.counters.failed += 1
                log.warning("alerts: alert %s: %s delivery failed: %s", label or "?", self.name,
                            redact_text(f"{exc.__class__.__name__}: {exc}"))

    def close(self, timeout_s: float) -> None:
        """Send what is queued (for up to `timeout_s`), then stop the thread."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._q.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    return  # daemon thread: dies with the process
        self._thread.join(max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_mqtt_url(url: str) -> MqttTarget:
    """`mqtt://[user[:password]@]host[:port]` (TLS: `mqtts://`); ValueError naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in MQTT_SCHEMES:
        raise ValueError(f"MQTT URL scheme must be one of {', '.join(MQTT_SCHEMES)}, got {scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("the MQTT URL has no host")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("the MQTT URL takes no path or query (the topic is vigil/<camera>/alert)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the MQTT URL's port is not a number in 1-65535") from None
    tls = MQTT_SCHEMES[scheme]
    return MqttTarget(parts.hostname, port or (8883 if tls else 1883), tls,
                      unquote(parts.username) if parts.username else None,
                      unquote(parts.password) if parts.password else None)


class MqttSink:
    """One paho-mqtt client for the process, connected in its own network thread (reconnecting with backoff);
    QoS 1 publishes made while it is down are kept by paho (up to the queue size) and sent on reconnect."""

    def __init__(self, url: str, *, username: str | None, password: str | None, ca_file=None, tls: bool | None = None,
                 client_id: str | None = None, qos: int = 1, keepalive_s: int = 30, queue_size: int = 1000) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        t = parse_mqtt_url(url)
        self.where = redact_url(url)
        self.qos = qos
        self._acked = threading.Condition()
        self.published = self.acked = 0  # QoS 1: handed to paho / acknowledged by the broker
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"vigil-{uuid.uuid4().hex[:12]}",
                        protocol=mqtt.MQTTv311, clean_session=True)
        user = username if username is not None else t.username
        if user is not None:
            c.username_pw_set(user, password if password is not None else t.password)
        if tls if tls is not None else t.tls:
            c.tls_set(ca_certs=str(ca_file) if ca_file else None)
        c.max_queued_messages_set(queue_size)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._connected_once = self.connected = False
        self.client = c
        c.connect_async(t.host, t.port, keepalive=keepalive_s)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("alerts: MQTT broker %s refused the connection: %s", self.where, reason_code)
            return
        log.info("alerts: %s to the MQTT broker %s", "reconnected" if self._connected_once else "connected", self.where)
        self._connected_once = self.connected = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        if reason_code != 0:
            log.warning("alerts: lost the MQTT broker %s (%s); reconnecting", self.where, reason_code)
        else:
            log.info("alerts: disconnected from the MQTT broker %s", self.where)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked:  # never held while calling into paho (its network thread holds its own locks here)
            self.acked += 1
            self._acked.notify_all()

    def send(self, item: tuple[str, bytes]) -> None:
        topic, payload = item
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            raise RuntimeError(f"paho's outgoing queue is full; not published to {topic}")
        if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: sent on reconnect
            raise RuntimeError(f"publish to {topic}: {self._mqtt.error_string(info.rc)}")
        with self._acked:
            self.published += 1

    def close(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) for the broker to acknowledge what was published, then disconnect."""
        deadline = time.monotonic() + timeout_s
        with self._acked:
            while self.qos > 0 and self.acked < self.published and time.monotonic() < deadline:
                self._acked.wait(max(0.01, deadline - time.monotonic()))
            left = self.published - self.acked if self.qos > 0 else 0
        if left > 0:
            log.warning("alerts: %d MQTT alert(s) not acknowledged by %s at shutdown", left, self.where)
        self.client.disconnect()
        self.client.loop_stop()


def post_json(url: str, body: bytes, timeout_s: float) -> None:
    """POST `body` (JSON) to `url`; raises on a transport error or a non-2xx answer."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "vigil-alerts"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read(65536)
            if not 200 <= resp.status < 300:
                raise RuntimeError(f"webhook {redact_url(url)} answered {resp.status}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"webhook {redact_url(url)} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"webhook {redact_url(url)}: {getattr(exc, 'reason', exc)}") from None


class AlertPublisher:
    """MQTT (when `mqtt_url` is set) and webhooks, each behind its own bounded queue and thread."""

    def __init__(self, *, mqtt_url: str | None = None, mqtt_username: str | None = None,
                 mqtt_password: str | None = None, mqtt_ca_file=None, mqtt_tls: bool | None = None,
                 mqtt_client_id: str | None = None, mqtt_qos: int = 1, topic_prefix: str = "vigil",
                 webhook_url: str | None = None, webhook_timeout_s: float = 2.0, queue_size: int = 1000) -> None:
        self.topic_prefix = topic_prefix
        self.webhook_url = webhook_url
        self.mqtt: MqttSink | None = None
        self._mqtt_q: _Sink | None = None
        if mqtt_url:
            self.mqtt = MqttSink(mqtt_url, username=mqtt_username, password=mqtt_password, ca_file=mqtt_ca_file,
                                 tls=mqtt_tls, client_id=mqtt_client_id, qos=mqtt_qos, queue_size=queue_size)
            self._mqtt_q = _Sink("mqtt", queue_size, self.mqtt.send)
        self._hooks = _Sink("webhook", queue_size, lambda item: post_json(item[0], item[1], webhook_timeout_s))

    def publish(self, alert: Alert, webhooks: tuple[str, ...] = ()) -> None:
        """Queue `alert` (its stored JSON form, compact; `camera` names the topic) for MQTT and for each webhook
        (the rule's and the global one, once each). Never blocks, never raises."""
        try:
            body = alert.to_json(compact=True).encode()
            if self._mqtt_q is not None:
                self._mqtt_q.submit((topic_for(self.topic_prefix, alert.camera), body), alert.id)
            for url in dict.fromkeys(u for u in (*webhooks, self.webhook_url) if u):
                self._hooks.submit((url, body), alert.id)
        except Exception:  # nothing here may stop ingest
            log.exception("alerts: could not queue an alert")

    def stats(self) -> dict[str, dict[str, int]]:
        out = {"webhook": self._hooks.counters.as_dict()}
        if self._mqtt_q is not None:
            out["mqtt"] = {**self._mqtt_q.counters.as_dict(), "acked": self.mqtt.acked}
        return out

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within `timeout_s`, then disconnect."""
        deadline = time.monotonic() + timeout_s
        if self._mqtt_q is not None:
            self._mqtt_q.close(timeout_s)
            self.mqtt.close(max(0.1, deadline - time.monotonic()))
        self._hooks.close(max(0.1, deadline - time.monotonic()))
