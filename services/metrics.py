"""Prometheus metrics of one server process, each server with its own registry (tests run several in one process).

Measured where the work happens, around the calls (the tensor code itself stays free of it):

- `vigil_encode_seconds`: one batch of clips through the model (`adapter.ingest_clips`: vision encoder + LM prefill
  behind each stream's memory + the proxy pass), `vigil_encode_batch_clips`: the clips in it (streams batched
  together; `services/scheduler.py`); `vigil_memory_step_seconds`: the working-memory step after each clip (scoring,
  pruning to the budget; `services/pipeline.py`).
- `vigil_alerts_fired_total{camera,rule}`, `vigil_alerts_published_total{sink}`, `vigil_alerts_failed_total{sink}`,
  `vigil_alerts_dropped_total{sink}`: the alert hub's counts (`AlertCollector`, read at scrape time).
- `vigil_question_seconds{outcome}`: one question as the server sees it, queue wait included (`services/grpc_api.py`).
- `vigil_redis_errors_total{where}`: the store not answering: `ingest` counts each wait of a stream worker for it
  (it then sends the same write again), `api` each RPC answered UNAVAILABLE, `metrics` a scrape that could not read it.

Per-stream figures (labelled `stream` and `name`, the camera's or the push's name, "" for none: frames, chunks,
dropped frames, lag, reconnects, state, memory bytes) are read from the store at scrape time by `StreamCollector`:
they are the stream's own record, shared by every server of a namespace, so each of them reports the same values
(aggregate with `max by (stream)`, or scrape one).
"""
from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from memory.store.client import STORE_DOWN as STORE_UNAVAILABLE

STORE_DOWN = STORE_UNAVAILABLE  # unreachable, stalled, loading, a cluster slot failing over
ENCODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
QUESTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STATES = ("starting", "running", "reconnecting", "finished", "stopped", "failed")


class Metrics:
    """The registry and the instruments the pipeline and the servicers record into (cheap, thread-safe)."""

    def encode_batch(self, clips: int, seconds: float) -> None:
        """One batch of the encode scheduler ran."""
        self.encode_seconds.observe(seconds)
        self.encode_batch_clips.observe(clips)

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.streams = StreamCollector(self)  # first: a store error it meets is counted in the same scrape
        r.register(self.streams)
        self.encode_seconds = Histogram(
            "vigil_encode_seconds", "Seconds to encode one batch of clips, one clip per stream in it "
            "(vigil_encode_batch_clips counts them): vision encoder + language-model prefill behind each stream's "
            "memory + proxy pass (adapter.ingest_clips); one observation per batch, not per clip",
            buckets=ENCODE_BUCKETS, registry=r)
        self.encode_batch_clips = Histogram(
            "vigil_encode_batch_clips", "Clips (one per stream) encoded together in one batch",
            buckets=BATCH_BUCKETS, registry=r)
        self.memory_step_seconds = Histogram(
            "vigil_memory_step_seconds", "Seconds of one working-memory step: scoring old memory and the new clip "
            "and pruning them to the budget (memory.working.step)", buckets=STEP_BUCKETS, registry=r)
        self.question_seconds = Histogram(
            "vigil_question_seconds", "Seconds to answer one question, queue wait included; outcome ok, error or "
            "cancelled (the client went away)",
            ["outcome"], buckets=QUESTION_BUCKETS, registry=r)
        self.redis_errors = Counter(
            "vigil_redis_errors", "Times the memory store (Redis) did not answer: where=ingest (a stream worker "
            "waited and resent), api (an RPC answered UNAVAILABLE), metrics (a scrape could not read it)",
            ["where"], registry=r)
        for where in ("ingest", "api", "metrics"):
            self.redis_errors.labels(where)  # present at 0 from the start: rate() needs the first sample
        for outcome in ("ok", "error", "cancelled"):
            self.question_seconds.labels(outcome)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    @contextmanager
    def question(self):
        """Time one question: `with metrics.question(): ...` (an exception counts as outcome="error"; the client
        going away mid-question, i.e. the handler cancelled or its stream closed, as outcome="cancelled")."""
        t0 = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self.question_seconds.labels(outcome).observe(time.perf_counter() - t0)

    def store_error(self, where: str) -> None:
        self.redis_errors.labels(where).inc()

    def watch_alerts(self, hub) -> None:
        """Report `hub`'s alerts (services.alerts.AlertHub) at every scrape: fired per camera and rule; published,
        failed and dropped per sink."""
        self.registry.register(AlertCollector(hub))

    def watch(self, store, *, role: str, model: str, device: str) -> None:
        """Report `store`'s streams at every scrape, and this server's role, model and device."""
        self.streams.store, self.streams.info = store, {"role": role, "model": model, "device": device}


class StreamCollector:
    """Per-stream figures read from the store at scrape time (one pipelined read of every stream's record)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.store = None  # until Metrics.watch
        self.info: dict[str, str] = {}

    def describe(self):  # collect() reads Redis: never at registration
        return []

    def collect(self):
        if self.store is None:
            return
        info = GaugeMetricFamily("vigil_server_info", "This server: role, model and device (always 1)",
                                 labels=list(self.info))
        info.add_metric(list(self.info.values()), 1)
        yield info
        up = GaugeMetricFamily("vigil_store_up", "1 when the memory store (Redis) answered this scrape, else 0")
        try:
            records = self.store.list_streams()
            names = {sid: n for n, sid in self.store.names().items()}  # camera / push name -> stream id
        except STORE_DOWN:
            self.metrics.store_error("metrics")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        lab = ["stream", "name"]  # name: the camera's (or the push's) name, "" if none
        frames = CounterMetricFamily("vigil_stream_frames", "Sampled frames ingested", labels=lab)
        dropped = CounterMetricFamily("vigil_stream_dropped_frames", "Frames dropped because ingest was behind "
                                      "(live sources)", labels=lab)
        reconnects = CounterMetricFamily("vigil_stream_reconnects", "Times a live source came back", labels=lab)
        chunks = GaugeMetricFamily("vigil_stream_chunks", "Chunks stored now (retention may merge or delete)",
                                   labels=lab)
        media = GaugeMetricFamily("vigil_stream_media_seconds", "Media time covered by the stored chunks",
                                  labels=lab)
        lag = GaugeMetricFamily("vigil_stream_lag_seconds", "How far a live stream's last chunk is behind the "
                                "wall clock", labels=lab)
        mem = GaugeMetricFamily("vigil_stream_memory_bytes", "Bytes stored for the stream (chunks + working "
                                "memory + prefix)", labels=lab)
        chunk_bytes = GaugeMetricFamily("vigil_stream_chunk_bytes", "Bytes of the chunks stored now", labels=lab)
        working = GaugeMetricFamily("vigil_stream_working_memory_bytes", "Bytes of the working memory", labels=lab)
        state = GaugeMetricFamily("vigil_stream_state", "1 for the stream's current state, 0 for the others",
                                  labels=["stream", "name", "state"])
        per_state = GaugeMetricFamily("vigil_streams", "Streams by state", labels=["state"])
        counts = dict.fromkeys(STATES, 0)
        for rec in records:
            sid = [rec.stream_id, names.get(rec.stream_id, "")]
            frames.add_metric(sid, rec.frames)
            dropped.add_metric(sid, rec.dropped)
            reconnects.add_metric(sid, rec.reconnects)
            chunks.add_metric(sid, rec.chunks)
            media.add_metric(sid, rec.media_end_s)
            lag.add_metric(sid, rec.lag_s)
            mem.add_metric(sid, rec.bytes)
            chunk_bytes.add_metric(sid, rec.chunk_bytes)
            working.add_metric(sid, rec.working_bytes)
            current = str(rec.state)
            counts[current] = counts.get(current, 0) + 1
            for name in STATES:
                state.add_metric([*sid, name], 1 if name == current else 0)
        for name, n in counts.items():
            per_state.add_metric([name], n)
        yield from (frames, dropped, reconnects, chunks, media, lag, mem, chunk_bytes, working, state,
                    per_state)


class AlertCollector:
    """Alert counts at scrape time: fired per camera and rule (`AlertHub.fired_counts`), and per sink (mqtt, webhook)
    published (handed to the broker / answered 2xx), failed (the send raised) and dropped (its queue was full)."""

    def __init__(self, hub) -> None:
        self.hub = hub

    def describe(self):
        return []

    def collect(self):
        fired = CounterMetricFamily("vigil_alerts_fired", "Alerts fired by this process's streams (each also "
                                    "goes to the stream's events and to every sink)", labels=["camera", "rule"])
        for (camera, rule), n in sorted(self.hub.fired_counts().items()):
            fired.add_metric([camera, rule], n)
        sinks = self.hub.publisher.stats()
        published = CounterMetricFamily("vigil_alerts_published", "Alerts delivered, per sink: handed to the MQTT "
                                        "broker, or a webhook answered 2xx", labels=["sink"])
        failed = CounterMetricFamily("vigil_alerts_failed", "Alert deliveries that failed, per sink (logged)",
                                     labels=["sink"])
        dropped = CounterMetricFamily("vigil_alerts_dropped", "Alerts dropped because the sink's queue was full "
                                      "(VIGIL_ALERTS__QUEUE_SIZE), per sink", labels=["sink"])
        for sink, c in sorted(sinks.items()):
            published.add_metric([sink], c["sent"])
            failed.add_metric([sink], c["failed"])
            dropped.add_metric([sink], c["dropped"])
        yield from (fired, published, failed, dropped)
