"""Build and run the gRPC server (grpc.aio) with health and reflection, in the foreground or a thread."""
from __future__ import annotations

import asyncio
import logging
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from encoders.loading import load_adapter
from services.alerts import AlertHub
from services.auth import OPEN_METHODS, AuthThrottle, TokenAuth  # noqa: F401 (OPEN_METHODS: read by tests)
from services.cameras import start_cameras
from services.config import Settings
from services.embedded_redis import EmbeddedRedis
from services.grpc_api import IngestServicer, QAServicer
from services.health import StoreHealth
from services.http import HttpLimits, HttpSide, build_app
from services.ingest import IngestManager
from services import logs
from services.runtime import Runtime
from services.work import WorkQueue
from services.wire import ingest_pb2, ingest_pb2_grpc, qa_pb2, qa_pb2_grpc

log = logging.getLogger("vigil.server")


def _check_fd_limit(max_connections: int) -> None:
    """Warn when the open-file limit is below what VIGIL_GRPC__MAX_CONNECTIONS needs (each connection is a file)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + 256:
        log.warning("the open-file limit (%d) is below VIGIL_GRPC__MAX_CONNECTIONS (%d) + room for the rest: raise "
                    "it (ulimit -n) or lower the cap, or a connection flood can leave no file for anything else",
                    soft, max_connections)


def _https(s: Settings) -> dict:
    """uvicorn's TLS arguments: gRPC's certificate and key, and its client CA (mutual TLS) when set."""
    if not s.tls.enabled:
        return {}
    import ssl

    ca = s.tls.client_ca_file
    extra = {"ssl_ca_certs": str(ca), "ssl_cert_reqs": ssl.CERT_REQUIRED} if ca else {}
    return {"ssl_certfile": str(s.tls.cert_file), "ssl_keyfile": str(s.tls.key_file), **extra}


async def _bounded(what: str, step, timeout_s: float) -> None:
    """Await one shutdown step for at most `timeout_s` (a client holding a connection open must not hold the
    server's stop); one that takes longer is left behind, logged."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except asyncio.TimeoutError:
        log.warning("shutdown: %s did not stop within %.0fs; going on without it", what, timeout_s)


class VigilServer:
    """One process: optional private Redis, the model, the runtime, and the gRPC server."""

    def __init__(self, settings: Settings, adapter=None, describer=None, transcriber=None) -> None:
        """`adapter`, `describer`, `transcriber`: already loaded models to share (None: load them from the settings)."""
        self._transcriber = transcriber
        self.settings = settings
        self._adapter = adapter
        self._describer = describer
        self.redis: EmbeddedRedis | None = None
        self.rt: Runtime | None = None
        self.ingest: IngestManager | None = None
        self.work: WorkQueue | None = None  # the questions' own threads and bounded queue
        self.port: int | None = None
        self.http: HttpSide | None = None  # the HTTP side (/metrics; services/http/), None when VIGIL_HTTP_PORT=0
        self.http_port: int | None = None  # the port it bound (VIGIL_HTTP_PORT=-1: any free one)
        self.mcp = None  # /mcp on the HTTP side (services/mcp_server.py)
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.health: StoreHealth | None = None
        self._ingest_api: IngestServicer | None = None
        self.cameras: dict[str, str] = {}  # camera name -> what happened at start (services.cameras.start_cameras)

    async def start_async(self) -> int:
        s = self.settings
        if s.http_port:  # bound first: a busy port fails before the model loads
            self.http = HttpSide.bind(s.host, s.http_port)
            self.http_port = self.http.port
        try:
            return await self._start()
        except BaseException:
            if self.http is not None:
                self.http.close()
            if self.mcp is not None:
                self.mcp.discard()
            raise

    async def _start(self) -> int:
        s = self.settings
        logs.install()  # the root's handlers mask URL credentials (idempotent; the CLI did it already)
        adapter = self._adapter or await asyncio.to_thread(load_adapter, s.model, s.cache_dir)
        url = s.redis_url
        if url is None:
            self.redis = EmbeddedRedis(data_dir=s.redis_dir, fsync=s.redis_fsync).start()
            self.redis.supervise()  # restarted (from its append-only file) if it dies
            url = self.redis.url
            log.info("started a private redis-server at %s", url)
        describer = self._describer if s.frames.enabled else None
        transcriber = self._transcriber if s.speech.enabled else None
        self.rt = await asyncio.to_thread(Runtime.create, s, adapter, url, describer, transcriber)
        self.rt.metrics.watch(self.rt.store, role=str(s.role), model=adapter.spec.name,
                              device=str(getattr(adapter, "device", "")))
        if s.role.ingests:  # the cameras' alert rules, before any worker (adopted or new) runs
            self.rt.alerts = await asyncio.to_thread(AlertHub.create, s, self.rt.store, self.rt.describer)
            self.rt.metrics.watch_alerts(self.rt.alerts)
        self.ingest = IngestManager(self.rt) if s.role.ingests else None
        self.throttle = AuthThrottle.from_settings(s)  # failed tokens and logins, gRPC and HTTP alike
        interceptors = [TokenAuth(s.auth_token.get_secret_value(), self.throttle)] if s.auth_token is not None else []
        opts = [("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),  # else a second server on the same port silently shares it
                *s.grpc.options()]  # handshake timeout, streams per connection, idle and keepalive limits
        _check_fd_limit(s.grpc.max_connections)
        server = grpc.aio.server(interceptors=interceptors, options=opts)
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        self._ingest_api = IngestServicer(self.rt, self.ingest)
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(self._ingest_api, server)
        names.append(ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name)
        if s.role.answers:
            self.work = WorkQueue(s.question_workers, s.max_queued_questions)
            qa_pb2_grpc.add_QAServiceServicer_to_server(QAServicer(self.rt, self.work), server)
            names.append(qa_pb2.DESCRIPTOR.services_by_name["QAService"].full_name)
        hs = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        self.health = StoreHealth(hs, ["", *names[2:]], url, cluster=s.redis_cluster)
        await self.health.start()
        reflection.enable_server_reflection(names, server)
        try:
            if s.tls.enabled:  # mutual TLS when a client CA is set (TlsSettings.server_credentials)
                self.port = server.add_secure_port(f"{s.host}:{s.port}", s.tls.server_credentials())
            else:
                self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError:  # grpc's "Failed to bind": in use, or an address this host does not have
            self.port = 0
        if self.port == 0:
            raise RuntimeError(f"cannot bind the gRPC port {s.host}:{s.port} (in use by another `vigil serve`?): "
                               "pick another with --port P (VIGIL_PORT)")
        if self.http is not None:  # /mcp's tools reach this gRPC server through a private unix socket
            from services.mcp_server import HttpEndpoint

            self.mcp = HttpEndpoint.attach(server, s.auth_token.get_secret_value() if s.auth_token else None, s.host)
        await server.start()
        self._server = server
        if self.http is not None:  # same token as gRPC; HTTPS with gRPC's certificate when TLS is on
            await self.http.start(build_app(self.rt.metrics, s.auth_token.get_secret_value() if s.auth_token else None,
                                            s.metrics_open, rt=self.rt, work=self.work, settings=s,
                                            throttle=self.throttle, mcp=self.mcp),
                                  limits=HttpLimits.from_settings(s), **_https(s))
        self._stopped = asyncio.Event()
        log.info("serving on %s:%d (role %s, model %s)", s.host, self.port, s.role, adapter.spec.name)
        if self.ingest is not None:  # streams a killed or stopped server left behind continue here
            resumed = await asyncio.to_thread(self.ingest.adopt_orphans)
            if resumed:
                log.info("resumed %d stream(s): %s", len(resumed), ", ".join(resumed))
            if s.cameras:  # after adoption: a camera whose stream was adopted is not started twice
                self.cameras = await asyncio.to_thread(start_cameras, self.rt, self.ingest, s.cameras)
        return self.port

    async def stop_async(self, grace_s: float = 2.0) -> None:
        if self.http:
            await _bounded("the HTTP side", self.http.stop(), 10.0)
        if self.mcp is not None:
            await _bounded("the MCP endpoint", self.mcp.aclose(), 10.0)
        if self.ingest:
            await asyncio.to_thread(self.ingest.shutdown)
        if self.rt is not None:  # after the workers: none of them waits for a clip any more
            await asyncio.to_thread(self.rt.encoder.close)
        if self.rt is not None and self.rt.alerts is not None:  # after the workers: their last alerts go out
            await asyncio.to_thread(self.rt.alerts.close)
        if self.health:
            await self.health.stop()
        if self._ingest_api is not None:  # the watchers' poller threads end at their next wake-up
            self._ingest_api.watchers.close()
        if self._server:
            await self._server.stop(grace_s)
        if self.work:  # after the server: its cancelled calls have dropped their queued questions
            await asyncio.to_thread(self.work.shutdown)
        if self.redis:
            self.redis.stop()
        if self._stopped:
            self._stopped.set()

    async def run_forever(self, on_ready=None, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (a signal handler sets it) or the gRPC server ends; then shut down in full
        (workers, alerts, health, gRPC, questions, the private Redis), uncancelled. `on_ready(self)` runs once
        both ports accept calls."""
        await self.start_async()
        if on_ready is not None:
            on_ready(self)
        waits = [asyncio.ensure_future(self._server.wait_for_termination())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # the termination waiter is left to finish with the server: cancelling it cancels grpc's own
            # shutdown future, and the server's stop() would then raise CancelledError half-way
            for w in waits[1:]:
                w.cancel()
            await asyncio.shield(self.stop_async())
            await asyncio.wait(waits[:1], timeout=5)

    # ---- run in a background thread (tests, `vigil demo`) ------------------------------
    def start_in_thread(self, timeout_s: float = 300.0) -> int:
        started = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self.start_async())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_until_complete(self._stopped.wait())

        self._thread = threading.Thread(target=main, name="vigil-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise RuntimeError(f"server did not start within {timeout_s}s")
        if errors:
            raise errors[0]
        return self.port

    def stop_thread(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.stop_async(), self._loop).result(120)
            self._thread.join(30)

