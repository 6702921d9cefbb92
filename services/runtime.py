"""Everything one process serves with: settings, the model, the store, the indexes, the ingest workers."""
from __future__ import annotations

from dataclasses import dataclass, field

from encoders.base import VideoLM
from encoders.describe import FrameDescriber, load_describer
from encoders.speech import Transcriber, load_transcriber
from memory.index import IndexRegistry
from memory.resident import ResidentMemory
from memory.store import MemoryStore
from memory.store.client import connect
from services.alerts import AlertHub
from services.config import Settings
from services.metrics import Metrics
from services.scheduler import EncodeScheduler, ModelGate


@dataclass
class Runtime:
    settings: Settings
    adapter: VideoLM
    store: MemoryStore
    indexes: IndexRegistry
    model_lock: ModelGate  # the model, one user at a time; questions first (services/scheduler.py)
    describer: FrameDescriber | None = None  # the frame index (None: its packages are missing, or it is off)
    metrics: Metrics = field(default_factory=Metrics)  # this process's own registry (services/metrics.py)
    alerts: AlertHub | None = None  # named cameras' alert rules and publishers (ingest roles; services/alerts)
    encoder: EncodeScheduler | None = None  # every stream's clips, batched across streams on the model
    resident: ResidentMemory | None = None  # prefixes and working memories on the model's device (memory/resident.py)
    transcriber: Transcriber | None = None  # the audio track's recognizer (None: speech off or its packages missing)

    def __post_init__(self) -> None:
        if self.resident is None:
            self.resident = ResidentMemory(self.store, self.adapter.device, self.settings.resident_max_bytes)
        if self.encoder is None:
            self.encoder = EncodeScheduler(self.adapter, self.model_lock, self.settings.encode_batch,
                                           observe=self.metrics.encode_batch)

    @classmethod
    def create(cls, settings: Settings, adapter: VideoLM, redis_url: str,
               describer: FrameDescriber | None = None, transcriber: Transcriber | None = None) -> "Runtime":
        """`describer`, `transcriber`: already loaded models to share (None: load them from the settings)."""
        # a stall longer than the socket timeout is an outage (workers wait and resend; RPCs say UNAVAILABLE)
        client = connect(redis_url, cluster=settings.redis_cluster, socket_timeout=settings.redis_timeout_s,
                         connect_timeout=min(2.0, settings.redis_timeout_s), health_check_interval=30)
        client.ping()
        spec = adapter.spec
        store = MemoryStore(client, settings.namespace, spec.layout, spec.fingerprint,
                            wait_replicas=settings.redis_wait_replicas, wait_timeout_ms=settings.redis_wait_timeout_ms)
        indexes = IndexRegistry(store, len(spec.retrieval_layers), settings.retrieval.exact_max_rows,
                                settings.index_max_bytes)
        describer = describer if describer is not None else load_describer(settings.frames)
        if transcriber is None:  # the frame index's sentence embedder is shared when there is one
            transcriber = load_transcriber(settings.speech, describer.text_embedder if describer else None)
        if transcriber is not None and hasattr(adapter, "speech_tokens"):
            adapter.speech_tokens = settings.speech.context_tokens  # a clip's transcript in the model's context
        return cls(settings, adapter, store, indexes, ModelGate(), describer, transcriber=transcriber)
