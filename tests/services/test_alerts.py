"""Alerts: the pure rule evaluation (OCR-tolerant text, query scores, cut bursts, episodes), then every rule kind
firing on real footage through a real server and reaching a real MQTT subscriber (Mosquitto on 127.0.0.1:1883,
paho-mqtt) exactly once per firing, with the same alerts on WatchStream and on a real webhook (http.server):
rendered on-screen text and a query (captioned bikes.mp4), a burst of scene cuts (the test pattern), and a real
RTSP camera killed and restarted (feed down, then up)."""
from __future__ import annotations

import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from services.alerts import rules as R
from services.client import Client, state_name
from services.wire import ingest_pb2
from testkit import media, rtsp
from tests.conftest import Watcher, wait_done, wait_for

BROKER = ("127.0.0.1", 1883)
ALERT = ingest_pb2.StreamEvent.KIND_ALERT


# ---- pure rules ----------------------------------------------------------------------------------
def chunk(i: int, text: str = "", cuts: int = 0, length: float = 4.0, vectors=None) -> R.ChunkFacts:
    return R.ChunkFacts(chunk_id=i, start_s=i * length, end_s=(i + 1) * length, keyframe_s=i * length + 1,
                        text=text, cuts=cuts, vectors=vectors or {})


def run_rule(rule: R.Rule, facts, query=None) -> list[R.Firing]:
    state, fired = R.RuleState(), []
    for f in facts:
        state, firing = (R.evaluate_feed(rule, state, f) if isinstance(f, R.FeedFacts)
                         else R.evaluate_chunk(rule, state, f, query))
        if firing is not None:
            fired.append(firing)
    return fired


@pytest.mark.parametrize("read", ["TRUCK 22 ARRIVED", "TRUCK22ARRIVED", "truck 22 arrlved", "TRUCK 22 | ARRIVED",
                                  "DOCK 4 OPEN | TRUCK 22 ARRIVED 0:12", "TRUCK 22 ARRIVFD", "TRUCK 2 ARRIVED"])
def test_text_with_ocr_slips_matches(read):
    assert R.text_similarity("Truck 22 arrived", read) >= R.MIN_SIMILARITY


@pytest.mark.parametrize("read", ["GATE 7 CLOSED", "TRUCK", "ARRIVED", "AR", "", "TAXI", "TRUCK 99 DEPARTED",
                                  "T R U C K"])
def test_unrelated_or_partial_text_does_not_match(read):
    assert R.text_similarity("Truck 22 arrived", read) < R.MIN_SIMILARITY


def test_text_similarity_is_one_minus_the_needles_edit_distance():
    assert R.substring_distance("truck22", "xxtruck22yy") == 0
    assert R.substring_distance("truck22", "xxtrack22yy") == 1
    assert R.substring_distance("abc", "") == 3
    assert R.text_similarity("ABCDEFGHIJ", "zz abcdefghXj zz") == pytest.approx(0.9)


def test_text_rule_fires_once_per_episode_and_rearms_after_n_quiet_chunks():
    rule = R.Rule(name="truck", kind=R.RuleKind.ON_SCREEN_TEXT, text="TRUCK 22 ARRIVED", rearm_chunks=2)
    t = "TRUCK22ARRIVED"
    # an episode of 3 chunks with one OCR miss inside (one quiet chunk does not end it), 2 quiet, a new episode
    facts = [chunk(0), chunk(1, t), chunk(2, "TRUCK 22 ARRlVED"), chunk(3), chunk(4, t), chunk(5), chunk(6),
             chunk(7, "GATE 7 CLOSED"), chunk(8, t)]
    fired = run_rule(rule, facts)
    assert [f.chunk_id for f in fired] == [1, 8]
    assert fired[0].matched == t and fired[0].score == 1.0 and (fired[0].start_s, fired[0].end_s) == (4.0, 8.0)
    assert fired[0].keyframe_s == 5.0 and fired[0].dedupe_id != fired[1].dedupe_id
    once = R.Rule(name="t1", kind=R.RuleKind.ON_SCREEN_TEXT, text="TRUCK 22 ARRIVED", rearm_chunks=1)
    assert [f.chunk_id for f in run_rule(once, facts)] == [1, 4, 8]


def test_cooldown_holds_a_new_episode_back():
    rule = R.Rule(name="c", kind=R.RuleKind.ON_SCREEN_TEXT, text="LOT B FULL", rearm_chunks=1, cooldown_s=20.0)
    t = "LOT B FULL"
    facts = [chunk(0, t), chunk(1), chunk(2, t), chunk(3), chunk(4, t), chunk(5), chunk(6, t)]
    # firings at chunk ends 4 s, then not before 24 s: chunk 6 (ends 28 s)
    assert [f.chunk_id for f in run_rule(rule, facts)] == [0, 6]


def test_cut_bursts_fire_when_the_windowed_rate_is_reached():
    rule = R.Rule(name="cuts", kind=R.RuleKind.CUTS, cuts_per_minute=6, window_s=30.0)  # 3 cuts within 30 s
    calm = [chunk(i, cuts=int(i % 4 == 0)) for i in range(12)]  # 1 cut every 16 s: at most 2 in any 30 s
    assert run_rule(rule, calm) == []
    burst = calm + [chunk(12 + i, cuts=1) for i in range(4)] + [chunk(16 + i) for i in range(10)] + \
        [chunk(26 + i, cuts=2) for i in range(2)]
    fired = run_rule(rule, burst)
    # 13: the cuts of chunks 8, 12 and 13 lie within 30 s; the episode lasts while 3 stay in the window (to chunk
    # 20), ends after two chunks below; 27: the second burst (26 alone has 2 cuts in its window)
    assert [f.chunk_id for f in fired] == [13, 27]
    assert fired[0].score == pytest.approx(6.0) and fired[0].matched == "3 cuts in 30 s"


def test_query_rule_scores_the_best_shared_signal():
    q = {"ocr": np.array([1.0, 0.0], np.float32), "labels": np.array([0.0, 1.0], np.float32)}
    near = {"ocr": np.array([0.8, 0.6], np.float32)}
    far = {"labels": np.array([0.6, -0.8], np.float32)}
    assert R.query_score(q, near) == (pytest.approx(0.8), "ocr")
    assert R.query_score(q, {}) == (0.0, None)
    merged = {"labels": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)}  # a merged chunk: several rows
    assert R.query_score(q, merged) == (pytest.approx(1.0), "labels")
    rule = R.Rule(name="q", kind=R.RuleKind.QUERY, query="truck", min_score=0.7)
    fired = run_rule(rule, [chunk(0, vectors=far), chunk(1, "X", vectors=near), chunk(2, vectors=near)], q)
    assert [(f.chunk_id, f.signal) for f in fired] == [(1, "ocr")]
    assert run_rule(rule, [chunk(0, vectors=near)], None) == []  # no query embedding: never fires


def test_feed_rules_fire_once_per_transition():
    down = R.Rule(name="down", kind=R.RuleKind.FEED, feed="down")
    up = R.Rule(name="up", kind=R.RuleKind.FEED, feed="up")
    facts = [R.FeedFacts(True, 0.0, 100.0), R.FeedFacts(False, 9.5, 110.0, "end of stream"),
             R.FeedFacts(False, 9.5, 111.0, "again"), R.FeedFacts(True, 9.5, 115.0), R.FeedFacts(True, 9.5, 116.0),
             R.FeedFacts(False, 20.0, 130.0, "read timeout"), R.FeedFacts(True, 20.0, 140.0)]
    d, u = run_rule(down, facts), run_rule(up, facts)
    assert [(f.start_s, f.matched) for f in d] == [(9.5, "down: end of stream"), (20.0, "down: read timeout")]
    assert [f.wall_start for f in u] == [115.0, 140.0]  # the first connection is no comeback
    assert len({f.dedupe_id for f in d + u}) == 4
    assert run_rule(down, [chunk(0, "x")]) == []
    assert run_rule(R.Rule("t", R.RuleKind.ON_SCREEN_TEXT, text="x"), facts) == []


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="kind"):
        R.Rule(name="x", kind="smell")
    with pytest.raises(ValueError, match="letters or digits"):
        R.Rule(name="x", kind=R.RuleKind.ON_SCREEN_TEXT, text=" !! ")
    with pytest.raises(ValueError, match="down' or 'up"):
        R.Rule(name="x", kind=R.RuleKind.FEED, feed="sideways")


def test_an_alert_is_one_record_with_its_stored_form_unchanged():
    from services.alerts import Alert

    stored = {"id": "s1:truck:c3", "stream_id": "s1", "camera": "gate", "rule": "truck", "kind": "on_screen_text",
              "start_s": 12.0, "end_s": 16.0, "wall_start": None, "wall_end": None, "matched_text": "TRUCK 22",
              "score": 1.0, "signal": "", "keyframe": {"chunk_id": 3, "keyframe_s": 13.0}, "fired_unix": 100.0}
    a = Alert.from_json(json.dumps(stored))
    assert a.to_json() == json.dumps(stored) and a.to_json(compact=True) == json.dumps(stored, separators=(",", ":"))
    assert (a.kind, a.chunk_id, a.keyframe_s, a.signal) == (R.RuleKind.ON_SCREEN_TEXT, 3, 13.0, None)
    rule = R.Rule(name="q", kind=R.RuleKind.QUERY, query="truck", min_score=0.7)
    q = {"ocr": np.array([1.0, 0.0], np.float32)}
    (f,) = run_rule(rule, [chunk(3, "TRUCK 22", vectors={"ocr": np.array([0.8, 0.6], np.float32)})], q)
    made = Alert.of(f, "s1", None, 100.0)  # a stream that is no named camera: its id names the topic
    assert made.to_dict() == {**stored, "rule": "q", "id": "s1:q:c3", "camera": "s1", "kind": "query",
                              "score": f.score, "signal": "ocr"}
    assert Alert.from_dict(made.to_dict()) == made
    down = R.Rule(name="lost", kind=R.RuleKind.FEED, feed="down")
    (g,) = run_rule(down, [R.FeedFacts(True, 0.0, 100.0), R.FeedFacts(False, 9.5, 110.0, "end of stream")])
    feed = Alert.of(g, "s1", "gate", 111.0)
    assert feed.to_dict()["keyframe"] is None and Alert.from_json(feed.to_json()) == feed


# ---- a real MQTT subscriber and a real webhook ---------------------------------------------------------
def broker_answers() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=1):
            return True
    except OSError:
        return False


class Subscriber:
    """A paho-mqtt client subscribed to vigil/# (QoS 1) before anything is published; keeps what arrives."""

    def __init__(self, topic: str = "vigil/#") -> None:
        import paho.mqtt.client as mqtt

        if not broker_answers():  # scripts/test.sh starts Mosquitto where none answers: a missing one is a failure
            pytest.fail(f"no MQTT broker answers on {BROKER[0]}:{BROKER[1]} (scripts/test.sh starts mosquitto)")
        self.messages: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vigil-test-{uuid.uuid4().hex[:8]}")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(*BROKER)
        self.c.loop_start()
        assert self._subscribed.wait(10), "the broker did not confirm the subscription"

    def _on_message(self, client, userdata, msg) -> None:
        body = json.loads(msg.payload) if msg.topic.endswith("/alert") else {"sentinel": msg.payload.decode()}
        with self._cond:
            self.messages.append((msg.topic, body))
            self._cond.notify_all()

    def barrier(self, camera: str, timeout_s: float = 30) -> None:
        """Publish a sentinel under the camera's topic and wait for it: what the server's publisher had handed to
        the broker (acknowledged) before this call has been delivered here by then (Mosquitto keeps the order)."""
        token = uuid.uuid4().hex
        self.c.publish(f"vigil/{camera}/sentinel", token, qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: any(b.get("sentinel") == token for _, b in self.messages), timeout_s)

    def alerts(self, camera: str) -> list[dict]:
        with self._cond:
            return [b for t, b in self.messages if t == f"vigil/{camera}/alert"]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def subscriber():
    s = Subscriber()
    yield s
    s.close()


class Webhook:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        posts = self.posts = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                posts.append((self.path, self.headers.get("Content-Type"), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    w = Webhook()
    yield w
    w.close()


def test_a_dead_broker_and_webhook_never_block_or_raise_and_are_counted():
    from services.alerts import Alert
    from services.alerts.publish import AlertPublisher, parse_mqtt_url

    dead = rtsp.free_port()  # nothing listens: connections are refused
    p = AlertPublisher(mqtt_url=f"mqtt://127.0.0.1:{dead}", webhook_url=f"http://127.0.0.1:{dead}/hook",
                       queue_size=2)
    alert = Alert(id="s:r:c1", stream_id="s", camera="gate", rule="r", kind=R.RuleKind.CUTS, start_s=0.0, end_s=4.0)
    for _ in range(10):
        p.publish(alert)  # returns at once: a full queue drops, a failed send is counted
    p.close(timeout_s=2)
    st = p.stats()
    hook, mqtt = st["webhook"], st["mqtt"]
    assert hook["queued"] + hook["dropped"] == 10 and hook["sent"] == 0 and hook["failed"] == hook["queued"] >= 1
    assert mqtt["queued"] + mqtt["dropped"] == 10 and mqtt["acked"] == 0
    assert mqtt["sent"] + mqtt["failed"] == mqtt["queued"] and mqtt["sent"] <= 2  # paho keeps at most queue_size
    assert parse_mqtt_url("mqtts://u:p%40ss@broker").port == 8883 and parse_mqtt_url("mqtts://u:p%40ss@b").password == "p@ss"
    for bad, why in [("http://b", "scheme"), ("mqtt://", "no host"), ("mqtt://b/topic", "no path"),
                     ("mqtt://b:99999", "port")]:
        with pytest.raises(ValueError, match=why):
            parse_mqtt_url(bad)


def scrape_alerts(port: int) -> dict:
    """The vigil_alerts_* samples of a server's /metrics as {(name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith("vigil_alerts")}


def mqtt_settings() -> dict:
    return {"url": f"mqtt://{BROKER[0]}:{BROKER[1]}"}


def overlaps(a: dict, lo: float, hi: float) -> bool:
    return a["end_s"] > lo and a["start_s"] < hi


def check_exactly_once(sub_alerts: list[dict], watched, rule: str) -> list[dict]:
    """The rule's MQTT alerts: each id once, the same ids (and fields) as the WatchStream events, in order."""
    got = [a for a in sub_alerts if a["rule"] == rule]
    ids = [a["id"] for a in got]
    assert len(ids) == len(set(ids)), f"{rule}: a firing was delivered twice: {ids}"
    seen = [w for w in watched if w.rule == rule]
    assert [w.id for w in seen] == ids, (rule, [w.id for w in seen], ids)
    for w, a in zip(seen, got):
        assert (w.kind, w.camera, w.matched_text) == (a["kind"], a["camera"], a["matched_text"])
        assert (w.start_s, w.end_s) == pytest.approx((a["start_s"], a["end_s"]))
    return got


# ---- end to end --------------------------------------------------------------------------------------------
TRUCK = (10.0, 16.0)
TRUCK_AGAIN = (32.0, 38.0)
CAPTIONS = [(*TRUCK, "TRUCK 22 ARRIVED"), (20.0, 26.0, "GATE 7 CLOSED"), (*TRUCK_AGAIN, "TRUCK 22 ARRIVED")]


@pytest.fixture(scope="module")
def dock_footage():
    """Real footage (bikes.mp4, which shows a "TAXI" sign) with "TRUCK 22 ARRIVED" on screen twice."""
    return media.captioned_footage("bikes.mp4", CAPTIONS, seconds=44, fps=5, size=(480, 204))


@pytest.fixture(scope="module")
def cut_burst(media_dir):
    """The test pattern: 10 scenes in 40 s (a cut every 4 s, 15 a minute)."""
    return media.shared_synthetic_video(media_dir / "pattern-40s-10scenes.mp4", seconds=40, fps=10, scenes=10)


@pytest.mark.timeout(420)
def test_text_query_and_cut_alerts_reach_mqtt_watch_and_webhook_exactly_once(make_server, subscriber, webhook,
                                                                          dock_footage, cut_burst):
    tag = uuid.uuid4().hex[:6]
    dock, yard = f"dock-{tag}", f"yard-{tag}"
    cameras = [
        {"name": dock, "source": str(dock_footage), "fps": 1, "clip_frames": 4, "alerts": [
            {"name": "truck", "on_screen_text": "Truck 22 arrived.", "webhook": webhook.url + "/truck"},
            {"name": "truck-query", "query": "a truck arrived at the dock", "min_score": 0.45},
            {"name": "never-text", "on_screen_text": "DOCK 9 OPEN"},
            {"name": "never-query", "query": "a parking lot is full", "min_score": 0.5},
            {"name": "calm", "cuts_per_minute": 30},
        ]},
        {"name": yard, "source": str(cut_burst), "fps": 2, "clip_frames": 4, "memory": {"frame_index": False},
         "alerts": [{"name": "burst", "cuts_per_minute": 8},  # the 8th cut (32 s): seconds after WatchStream began
                    {"name": "storm", "cuts_per_minute": 30}]},  # 15 a minute at most: never
    ]
    srv, addr = make_server(frame_index=True, cameras=cameras, mqtt=mqtt_settings())  # starts both cameras
    with Client(addr) as c:
        watch = {cam: Watcher(c, cam) for cam in (dock, yard)}  # by name; the first alerts come chunks later
        infos = {cam: wait_done(c, cam) for cam in (dock, yard)}
        for w in watch.values():
            w.wait_ended()
    srv.stop_thread()  # the publisher delivers what is queued and waits for the broker's acknowledgements
    for cam in (dock, yard):
        assert state_name(infos[cam].state) == "finished"
        subscriber.barrier(cam)

    got, watched = subscriber.alerts(dock), watch[dock].alerts()
    truck = check_exactly_once(got, watched, "truck")
    assert [(overlaps(a, *TRUCK), overlaps(a, *TRUCK_AGAIN)) for a in truck] == [(True, False), (False, True)]
    for a in truck:
        assert R.normalise(a["matched_text"]).find("truck22arrived") >= 0 and a["score"] >= R.MIN_SIMILARITY
        assert a["stream_id"] == infos[dock].stream_id and a["camera"] == dock and a["kind"] == "on_screen_text"
        assert a["keyframe"]["chunk_id"] >= 0 and a["start_s"] <= a["keyframe"]["keyframe_s"] < a["end_s"]
        assert a["wall_start"] is None  # a file has no wall clock
    query = check_exactly_once(got, watched, "truck-query")
    assert [(overlaps(a, *TRUCK), overlaps(a, *TRUCK_AGAIN)) for a in query] == [(True, False), (False, True)]
    assert all(a["signal"] == "ocr" and a["score"] >= 0.45 and a["kind"] == "query" for a in query)
    assert {a["rule"] for a in got} == {"truck", "truck-query"}  # the other rules never matched
    assert len(got) == 4 and len(watched) == 4

    # the rule's webhook got each firing once, as JSON
    assert [(p, ct, b["id"]) for p, ct, b in webhook.posts] == [("/truck", "application/json", a["id"]) for a in truck]

    burst = check_exactly_once(subscriber.alerts(yard), watch[yard].alerts(), "burst")
    assert len(burst) == 1 and len(subscriber.alerts(yard)) == 1  # "storm" never fired
    (b,) = burst
    assert b["kind"] == "cuts" and b["score"] >= 8 and b["keyframe"] is not None and b["start_s"] >= 28
    assert infos[yard].scene_cuts >= 8


@pytest.mark.timeout(300)
def test_a_killed_camera_fires_feed_down_then_up_once_each(make_server, subscriber, caplog):
    """... and the server log tells the story, one INFO line per step; the alert metrics count both firings."""
    import logging

    if (why := rtsp.gstreamer_rtsp_available()) is not None:
        pytest.fail(why)
    caplog.set_level(logging.INFO, logger="vigil")
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    live = {"open_timeout_s": 3.0, "read_timeout_s": 2.0, "backoff_initial_s": 0.2, "backoff_cap_s": 1.0}
    with rtsp.RtspServer(rtsp.long_bikes()) as cam:
        cameras = [{"name": gate, "source": cam.url, "fps": 2, "clip_frames": 4, "memory": {"frame_index": False},
                    "alerts": [{"name": "lost", "feed": "down"}, {"name": "back", "feed": "up"}]}]
        srv, addr = make_server(cameras=cameras, mqtt=mqtt_settings(), live=live, http_port=-1)
        with Client(addr) as c:
            watch = Watcher(c, gate)
            wait_for(lambda: c.describe(gate).chunks >= 2, 60, "chunks from the camera")
            cam.kill()
            wait_for(lambda: state_name(c.describe(gate).state) == "reconnecting", 15, "reconnecting after a kill")
            wait_for(lambda: [a.rule for a in watch.alerts()] == ["lost"], 15, "the feed-down alert on WatchStream")
            cam.restart()
            wait_for(lambda: state_name(c.describe(gate).state) == "running", 30, "running after the restart")
            wait_for(lambda: [a.rule for a in watch.alerts()] == ["lost", "back"], 15, "the feed-up alert")
            info = c.stop(gate)
            watch.wait_ended()
        wait_for(lambda: srv.rt.alerts.publisher.stats()["mqtt"]["sent"] == 2, 15, "both alerts handed to MQTT")
        metrics = scrape_alerts(srv.http_port)
        srv.stop_thread()
    assert metrics[("vigil_alerts_fired_total", (("camera", gate), ("rule", "lost")))] == 1
    assert metrics[("vigil_alerts_fired_total", (("camera", gate), ("rule", "back")))] == 1
    assert metrics[("vigil_alerts_published_total", (("sink", "mqtt"),))] == 2
    assert metrics[("vigil_alerts_dropped_total", (("sink", "mqtt"),))] == 0
    sid = info.stream_id
    story = [r.getMessage() for r in caplog.records if r.name.startswith("vigil") and r.levelno == logging.INFO]
    steps = [f"camera {gate!r}: starting (rtsp://", f"stream {sid} ({gate!r}) started: rtsp://",
             f"stream {sid} (camera {gate!r}): connected", f"stream {sid} (camera {gate!r}): outage, reconnecting",
             f"stream {sid} (camera {gate!r}): reconnected (reconnect 1)", f"stream {sid} (camera {gate!r}): stopped"]
    at = [next((i for i, line in enumerate(story) if line.startswith(step)), None) for step in steps]
    assert None not in at and at == sorted(at), (steps, at, story)
    assert sum(line.startswith(step) for line in story for step in steps) == len(steps), story  # one line each
    assert sum(f"(camera {gate}): alert" in line and "fired" in line for line in story) == 2, story
    assert sum("published to mqtt vigil/" + gate in line for line in story) == 2, story
    assert any(line.startswith("alerts: connected to the MQTT broker mqtt://127.0.0.1:1883") for line in story), story
    subscriber.barrier(gate)
    got = subscriber.alerts(gate)
    lost = check_exactly_once(got, watch.alerts(), "lost")
    back = check_exactly_once(got, watch.alerts(), "back")
    assert len(lost) == len(back) == 1 and len(got) == 2
    assert lost[0]["kind"] == back[0]["kind"] == "feed" and lost[0]["keyframe"] is None
    assert lost[0]["matched_text"].startswith("down") and back[0]["matched_text"] == "up"
    assert lost[0]["wall_start"] < back[0]["wall_start"]
    assert info.reconnects == 1 and len(info.gaps) == 1
    assert info.gaps[0].start_s == pytest.approx(lost[0]["start_s"], abs=1.0)  # the last frame before the outage
    # the feed-up alert carries the media time the feed resumed at: the outage's end, not its start (issue 21)
    assert back[0]["start_s"] == back[0]["end_s"] == pytest.approx(info.gaps[0].end_s, abs=0.01)
    assert back[0]["start_s"] > lost[0]["start_s"]
