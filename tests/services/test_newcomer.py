"""What a newcomer and an operator meet (issue 25): config file mistakes in one line before the model loads, with
the nearest known key suggested; --fps 0 and --since -5 refused in plain words; camera and push names in
`vigil streams --json` and as a /metrics label, a push name usable wherever a stream id is; `vigil push
--realtime` keeping the file's timing; alert metrics counting fired, published and dropped alerts. Real
subprocesses of the console script, real gRPC servers, real Redis, a real HTTP server as the webhook."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.client import Client, state_name
from testkit import media
from tests.services.test_cli import VIGIL, _free_port, env_for, run

# ---- config file mistakes ---------------------------------------------------------------------------------------
MISTAKES = {  # file bytes -> (line, col, what the line says)
    "syntax": (b'media_roots = ["/tmp"]\nnamespace = "unterminated\n', 2, 13, "invalid TOML: a string is not closed"),
    "duplicate": (b'namespace = "a"\nport = 1\nnamespace = "b"\n', 3, 1, "invalid TOML: a key is set twice"),
    "not_utf8": (b'namespace = "caf\xe9"\n', 1, 17, "not UTF-8 text (byte 0xe9)"),
    "unknown": (b'media_root = ["/tmp"]\n', 1, 1, "unknown setting 'media_root': did you mean media_roots?"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_config_file_mistake_is_one_line_exit_2_before_the_model_loads(tmp_path, cache_dir, mistake):
    data, line, col, what = MISTAKES[mistake]
    path = tmp_path / "vigil.toml"
    path.write_bytes(data)
    env = env_for(cache_dir, VIGIL_CONFIG=str(path))
    t0 = time.monotonic()
    proc = subprocess.run([VIGIL, "serve", "--port", str(_free_port()), "--http-port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: config file {path}:{line}:{col}: {what}"), lines[0]
    assert "loading model" not in proc.stderr + proc.stdout  # refused before the model loads
    assert elapsed < 60, elapsed  # seconds of imports at most, on a loaded machine


def test_unknown_keys_at_any_level_are_refused_with_the_nearest_known_one(tmp_path):
    from services.config import ConfigFileError, read_config_file

    cases = [
        ('[mqtt]\nulr = "mqtt://127.0.0.1"\n', 2, "unknown setting 'mqtt.ulr': did you mean url?"),
        ('[model]\nnmae = "tiny"\n', 2, "unknown setting 'model.nmae': did you mean name?"),
        ('[[cameras]]\nname = "gate"\nsource = "rtsp://cam/1"\nfsp = 2\n', 4,
         "unknown setting 'cameras[0].fsp' of camera 'gate': did you mean fps?"),
        ('[[cameras]]\nname = "gate"\nsource = "x.mp4"\n[[cameras.alerts]]\nname = "r"\nfeed = "down"\n'
         'cooldown = 3\n', 7, "unknown setting 'cameras[0].alerts[0].cooldown' of camera 'gate', alert rule 'r': "
         "did you mean cooldown_s?"),
        ('[[cameras]]\nname = "gate"\nsource = "x.mp4"\nmemory = { max_age = 60 }\n', 4,
         "unknown setting 'cameras[0].memory.max_age' of camera 'gate': did you mean max_age_s?"),
        ('zebra = 1\n', 1, "unknown setting 'zebra'"),
    ]
    for text, line, what in cases:
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigFileError) as err:
            read_config_file(path)
        assert str(err.value).startswith(f"config file {path}:{line}:") and str(err.value).endswith(what), err.value
    good = tmp_path / "good.toml"
    good.write_text('media_roots = ["/tmp"]\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[[cameras]]\nname = "gate"\n'
                    'source = "rtsp://cam/1"\nfps = 2\nmemory = { max_age_s = 60 }\n[[cameras.alerts]]\n'
                    'name = "lost"\nfeed = "down"\n')
    assert read_config_file(good)["cameras"][0]["fps"] == 2


def test_a_frame_rate_of_zero_and_a_negative_time_are_refused_in_plain_words(cache_dir):
    env = env_for(cache_dir)
    proc = run(["ingest", "x.mp4", "--fps", "0"], env)
    assert proc.returncode == 2 and "frames per second must be more than 0" in proc.stderr
    proc = run(["push", "x.mp4", "--fps", "-1"], env)
    assert proc.returncode == 2 and "frames per second must be more than 0" in proc.stderr
    proc = run(["ask", "x", "what?", "--since", "-5"], env)
    assert proc.returncode == 2 and "a time is 0 or more seconds" in proc.stderr
    assert "after a colon" not in proc.stderr  # the clause about mm:ss is for mm:ss mistakes only


# ---- names, push --realtime -------------------------------------------------------------------------------------
def scrape(port: int) -> list:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return [s for fam in text_string_to_metric_families(resp.read().decode()) for s in fam.samples]


@pytest.mark.timeout(300)
def test_names_in_streams_and_metrics_and_a_realtime_push_by_name(make_server, cache_dir, pattern_video, bikes):
    cam = f"yard-{os.urandom(3).hex()}"
    srv, addr = make_server(http_port=-1, cameras=[{"name": cam, "source": str(pattern_video), "fps": 2}])
    env = env_for(cache_dir)
    push_name = f"{cam}-push"
    t0 = time.monotonic()
    pushed = run(["push", str(bikes), "--name", push_name, "--realtime", "--fps", "2", "--json",
                  "--server", addr], env)
    elapsed = time.monotonic() - t0
    assert pushed.returncode == 0, pushed.stderr
    info = json.loads(pushed.stdout)
    # the file's timing kept (bikes.mp4: 10 s of H.264 at 25 fps): sent over about its own duration, every
    # sampled frame kept; unpaced, the same push takes a fraction of it
    assert info["state"] == "finished" and info["name"] == push_name
    assert elapsed >= 0.8 * 10.0, elapsed
    assert info["updated_unix"] - info["created_unix"] >= 0.8 * 10.0
    assert info["frames"] >= 19 and info["duration_s"] == pytest.approx(10.0, abs=1.0)
    # the push's name works wherever a stream id does, as a camera's does
    asked = run(["ask", push_name, "what colour is the screen?", "--json", "--server", addr], env)
    assert asked.returncode == 0, asked.stderr
    with Client(addr) as c:
        cam_id = c.describe(cam).stream_id
        from testkit.waits import wait_done

        wait_done(c, cam_id)
        assert c.describe(push_name).stream_id == info["stream_id"]
        with pytest.raises(Exception, match="INVALID_ARGUMENT.*fps"):
            c.start(str(pattern_video), fps=-1.0)
    listed = run(["streams", "--json", "--server", addr], env)
    names = {s["stream_id"]: s["name"] for s in json.loads(listed.stdout)}
    assert names[cam_id] == cam and names[info["stream_id"]] == push_name
    table = run(["streams", "--server", addr], env).stdout.splitlines()
    assert table[0].split()[:3] == ["STREAM", "NAME", "STATE"]
    assert any(row.split()[:2] == [cam_id, cam] for row in table[1:])
    samples = scrape(srv.http_port)
    chunks = {(s.labels["stream"], s.labels["name"]) for s in samples if s.name == "vigil_stream_chunks"}
    assert (cam_id, cam) in chunks and (info["stream_id"], push_name) in chunks


def test_a_push_may_not_take_a_cameras_name(make_server, pattern_video, bikes_ts):
    _, addr = make_server(cameras=[{"name": "gate-taken", "source": str(pattern_video)}])
    from streamer.remux import file_blocks

    with Client(addr) as c:
        with pytest.raises(Exception, match="INVALID_ARGUMENT.*camera's name"):
            c.push(file_blocks(bikes_ts), name="gate-taken")


# ---- alert metrics ----------------------------------------------------------------------------------------------
class SlowWebhook:
    """A real HTTP server whose first POST waits until `release` is set (so the sink's queue fills behind it)."""

    def __init__(self) -> None:
        self.got_first, self.release, self.posts = threading.Event(), threading.Event(), []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.posts.append(json.loads(body))
                hook.got_first.set()
                hook.release.wait(30)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_alert_metrics_count_fired_published_and_dropped(redis_url, namespace, tiny_adapter, caplog):
    import logging

    import redis as redis_lib
    from prometheus_client import generate_latest

    from memory.store import MemoryStore
    from services.alerts import AlertHub, StreamAlerts
    from services.alerts import rules as R
    from services.alerts.publish import AlertPublisher
    from services.metrics import Metrics

    caplog.set_level(logging.INFO, logger="vigil")
    hook = SlowWebhook()
    store = MemoryStore(redis_lib.Redis.from_url(redis_url), namespace, tiny_adapter.spec.layout,
                        tiny_adapter.spec.fingerprint)
    lost = R.Rule(name="lost", kind=R.RuleKind.FEED, feed=R.FeedChange.DOWN)
    publisher = AlertPublisher(webhook_url=hook.url, queue_size=1)
    hub = AlertHub(store, publisher, {"gate": (lost,)}, {})
    metrics = Metrics()
    metrics.watch_alerts(hub)

    def counts() -> dict:
        text = generate_latest(metrics.registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith("vigil_al")}

    before = counts()
    assert before[("vigil_alerts_fired_total", (("camera", "gate"), ("rule", "lost")))] == 0
    assert before[("vigil_alerts_dropped_total", (("sink", "webhook"),))] == 0
    try:
        alerts = StreamAlerts(hub, "s1", "gate", (lost,), lambda fn, *a, **k: fn(*a, **k))
        alerts.on_feed(False, "camera unplugged", media_s=1.0)  # fired: the sink's thread takes it and waits
        assert hook.got_first.wait(30)
        alerts.on_feed(True, media_s=2.0)
        alerts.on_feed(False, "camera unplugged again", media_s=3.0)  # fired: waits in the queue (size 1)
        alerts.on_feed(True, media_s=4.0)
        alerts.on_feed(False, "and again", media_s=5.0)  # fired: the queue is full, dropped
        mid = counts()
        assert mid[("vigil_alerts_fired_total", (("camera", "gate"), ("rule", "lost")))] == 3
        assert mid[("vigil_alerts_dropped_total", (("sink", "webhook"),))] == 1
        assert mid[("vigil_alerts_published_total", (("sink", "webhook"),))] == 0
        hook.release.set()
        publisher.close(timeout_s=10)
        after = counts()
        assert after[("vigil_alerts_published_total", (("sink", "webhook"),))] == 2 == len(hook.posts)
        assert after[("vigil_alerts_failed_total", (("sink", "webhook"),))] == 0
    finally:
        hook.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "vigil.alerts"]
    assert sum("fired" in ln for ln in lines) == 3
    assert sum("dropped for webhook" in ln for ln in lines) == 1
    assert sum("published to webhook" in ln for ln in lines) == 2
    assert all("http://127.0.0.1" in ln for ln in lines if "published" in ln)


# ---- vigil serve: the banner and the log tell the story ---------------------------------------------------------
@pytest.mark.timeout(300)
def test_serve_names_its_config_cameras_and_broker_and_says_when_a_camera_did_not_start(tmp_path, cache_dir,
                                                                                       media_dir, pattern_video):
    from tests.services.test_cli_ux import Lines

    config = tmp_path / "vigil.toml"
    config.write_text(f'media_roots = ["{media_dir}"]\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
                      f'[[cameras]]\nname = "dock"\nsource = "{pattern_video}"\nfps = 2\n'
                      f'[[cameras]]\nname = "gone"\nsource = "{media_dir}/no-such-file.mp4"\n')
    env = env_for(cache_dir, VIGIL_CONFIG=str(config))
    env.pop("VIGIL_REDIS_URL", None)  # a private redis-server: Ctrl-C must not reach it before the server stops
    # its own process group, as a shell gives a foreground command: Ctrl-C is SIGINT to the whole group
    proc = subprocess.Popen([VIGIL, "serve", "--port", str(_free_port()), "--http-port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        banner = out.until("ready", 240)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal
        proc.wait(60)
    text = "\n".join(banner)
    log = "\n".join(err.rest())
    assert f"vigil serve: config  {config}" in text
    assert f"vigil serve: media   {media_dir}  (media_roots in {config})" in text
    assert f"vigil serve: camera  dock: {pattern_video}: started " in text
    assert "vigil serve: camera  gone: " in text and ": FAILED: " in text
    assert "vigil serve: mqtt    mqtt://127.0.0.1:1883, topic vigil/<camera>/alert" in text
    assert banner[-1].startswith("vigil serve: ready   but 1 of 2 camera(s) did not start: gone")
    # the log, at INFO without -v: the cameras, the streams, the broker; nothing about Redis at Ctrl-C
    assert "camera 'dock': starting" in log and "camera 'gone' could not start" in log
    assert "('dock') started:" in log and "alerts: connected to the MQTT broker mqtt://127.0.0.1:1883" in log
    assert "NOT_SERVING" not in log and "does not answer" not in log and "redis-server exited" not in log, log
    assert proc.returncode == 0, log


def test_a_long_ingest_says_where_it_is_in_one_line():
    from services.cli.streams import progress_line
    from services.wire import ingest_pb2

    info = ingest_pb2.StreamInfo(stream_id="abc", duration_s=90.0, source_duration_s=360.0, frames=180, chunks=22)
    assert progress_line(info) == "ingest abc: 1:30 of 6:00 (25%), 180 frames, 22 chunks"
    live = ingest_pb2.StreamInfo(stream_id="cam", duration_s=61.0, frames=61, chunks=8)
    assert progress_line(live) == "ingest cam: 1:01, 61 frames, 8 chunks"
