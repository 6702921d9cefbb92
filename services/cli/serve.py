"""`vigil serve`: the settings from the environment and the command line, the ports checked before the model
loads, the server run until Ctrl-C / SIGTERM, and the banner that says where it listens once it does."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys


def settings(model: str | None = None, **overrides):
    """The process's one Settings, from the environment plus the command line's explicit flags."""
    from services.config import Settings

    s = Settings(**{k: v for k, v in overrides.items() if v is not None})
    return s.with_overrides(model=dataclasses.replace(s.model, name=model)) if model else s


def port_taken(host: str, port: int, what: str, flag: str) -> str | None:
    """Why `vigil serve` cannot have `port` (in use, or an address this host lacks), or None; checked before the
    model loads, so a busy port fails in a moment, not after it."""
    from services.http import port_free

    if port <= 0:
        return None
    try:
        if port_free(host, port):
            return None
    except OSError as exc:
        return f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}"
    return f"{what} port {port} on {host} is in use (another `vigil serve`?): pick another with {flag}"


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def banner(server) -> str:
    """Where `vigil serve` listens and with what: printed once both ports accept calls."""
    from streamer.redact import redact_url

    s, spec = server.settings, server.rt.adapter.spec
    tls = ("TLS, client certificates required (mutual TLS)" if s.tls.client_ca_file else "TLS") if s.tls.enabled \
        else "plaintext"
    auth = "bearer token required (VIGIL_AUTH_TOKEN)" if s.auth_token else "no auth: VIGIL_AUTH_TOKEN unset"
    if server.http is not None:
        guard = ("no auth" if not s.auth_token else "open to all: VIGIL_METRICS_OPEN" if s.metrics_open
                 else "bearer token required")
        http = f"{server.http.scheme}://{hostport(s.host, server.http_port)}/metrics  ({guard})"
    else:
        http = "off (VIGIL_HTTP_PORT=0)"
    roles = {"all": "all: streams and questions", "ingest": "ingest: streams only (questions: a server with role qa)",
             "qa": "qa: questions only (streams are started on a server with role ingest)"}
    from encoders.loading import runtime_summary

    model = (f"{spec.name} on {runtime_summary(server.rt.adapter, s.model.compile)}"
             + (" (random weights: answers are noise)" if spec.random_weights else "")
             + f"; clips of up to {s.encode_batch} streams batched")
    if s.redis_url is not None:
        store = redact_url(s.redis_url)
    elif server.redis is not None and server.redis.persistent:
        store = f"private redis-server, data kept in {server.redis.dir} (VIGIL_REDIS_DIR)"
    else:
        store = "private redis-server, memory lasts this run (VIGIL_REDIS_DIR keeps it)"
    config = os.environ.get("VIGIL_CONFIG")
    failed = [n for n, what in server.cameras.items() if what.startswith("failed")]
    lines = [f"config  {config or 'none (VIGIL_CONFIG names a TOML file)'}",
             f"gRPC    {hostport(s.host, server.port)}  ({tls}; {auth})", f"HTTP    {http}",
             f"role    {roles.get(s.role, s.role)}", f"model   {model}",
             f"media   {', '.join(map(str, s.media_roots))}  ({media_origin(config)})",
             f"redis   {store}, namespace {s.namespace!r}", *camera_lines(s, server.cameras),
             f"mqtt    {mqtt_line(s)}",
             "ready   (Ctrl-C or SIGTERM stops it)" if not failed else
             f"ready   but {len(failed)} of {len(s.cameras)} camera(s) did not start: {', '.join(failed)} (see "
             "above; Ctrl-C or SIGTERM stops it)"]
    return "\n".join(f"vigil serve: {line}" for line in lines)


def media_origin(config: str | None) -> str:
    """Where the media roots came from: the environment, the config file, or the default."""
    if os.environ.get("VIGIL_MEDIA_ROOTS"):
        return "VIGIL_MEDIA_ROOTS"
    if config:
        from services.config import read_config_file

        if "media_roots" in read_config_file(config):
            return f"media_roots in {config}"
    return "the working directory: set media_roots in the config file or VIGIL_MEDIA_ROOTS"


def camera_lines(s, started: dict[str, str]) -> list[str]:
    """One banner line per configured camera: its source and what happened at start."""
    from streamer.redact import redact_url

    if not s.cameras:
        return ["cameras none"]
    out = []
    for cam in s.cameras:
        what = started.get(cam.name, "not started (this server does not ingest)" if not s.role.ingests
                           else "not started")
        rules = f", {len(cam.alerts)} alert rule(s)" if cam.alerts else ""
        out.append(f"camera  {cam.name}: {redact_url(cam.source)}{rules}: {what.replace('failed:', 'FAILED:', 1)}")
    return out


def mqtt_line(s) -> str:
    from streamer.redact import redact_url

    if not s.mqtt.url:
        return "off (alerts go to the streams' events" + (" and the webhook)" if s.alerts.webhook_url else ")") + \
            "; VIGIL_MQTT__URL or [mqtt] url sets a broker"
    return (f"{redact_url(s.mqtt.url)}, topic {s.mqtt.topic_prefix}/<camera>/alert (QoS {s.mqtt.qos}; the log says "
            "when it connects)")


def cmd_serve(args) -> int:
    s = settings(model=args.model, host=args.host, port=args.port, role=args.role, http_port=args.http_port)
    # settings (and camera/TLS/token checks) fail above before torch is imported: a bad config answers at once
    from services.server import VigilServer

    for why in (port_taken(s.host, s.port, "gRPC", "--port P (VIGIL_PORT)"),
                port_taken(s.host, s.http_port, "HTTP", "--http-port P (VIGIL_HTTP_PORT; 0 turns it off)")):
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    logging.getLogger("vigil").setLevel(logging.DEBUG if args.verbose else logging.INFO)  # the server's story
    print(f"vigil serve: loading model {s.model.name!r} (device {s.model.device}) ...", file=sys.stderr, flush=True)

    def ready(server) -> None:
        print(banner(server), flush=True)

    async def main() -> None:
        server = VigilServer(s)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly: streams released, private Redis shut down
            loop.add_signal_handler(sig, stop.set)
        await server.run_forever(on_ready=ready, stop=stop)

    asyncio.run(main())
    return 0
