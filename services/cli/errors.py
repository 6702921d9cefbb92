"""What went wrong, in one `error: ...` line that says what to change: a call no server answered, a refused call,
a bad VIGIL_* setting."""
from __future__ import annotations

import os

import grpc

from services.cli.parser import DEFAULT_SERVER

QA_COMMANDS = ("ask", "chat", "summarize")  # the commands a QA server (role qa or all) answers


def connect_hint(exc: grpc.RpcError, args) -> str | None:
    """A plain sentence for a call that reached no server (refused, no such host, TLS mismatch), else None."""
    details = exc.details() or ""
    client_side = ("failed to connect to all addresses", "DNS resolution failed", "Socket closed",
                   "Connection reset", "connections to all backends failing", "Broken pipe")
    if exc.code() != grpc.StatusCode.UNAVAILABLE or not any(s in details for s in client_side):
        return None
    addr = getattr(args, "server", DEFAULT_SERVER)
    speaks_tls = bool(getattr(args, "tls", False) or getattr(args, "tls_ca", None) or getattr(args, "tls_cert", None))
    tls = ""
    if speaks_tls:  # a refused handshake looks like a closed socket: the server may want a client certificate
        tls = ("; over TLS: the server may require a client certificate (--tls-cert/--tls-key), or --tls-ca / "
               "--tls-server-name do not match its certificate")
    elif any(w in details.lower() for w in ("ssl", "handshake", "tls")):
        tls = "; TLS: the server and --tls / --tls-ca must agree"
    cause = details.rsplit(": ", 1)[-1].strip()[:160]
    return (f"error: UNAVAILABLE: no vigil server answered at {addr}: is `vigil serve` running at {addr}? "
            f"(--server HOST:PORT or VIGIL_SERVER names another{tls}; {cause})")


def rpc_message(exc: grpc.RpcError, args) -> str:
    """The line for a failed call: no server there, a role that does not serve the command, a wrong or missing
    token, or the server's status and message as they are."""
    code, details = exc.code(), exc.details() or ""
    if hint := connect_hint(exc, args):
        return hint
    if code == grpc.StatusCode.UNIMPLEMENTED and details in ("Method not found!", ""):  # the service is not here
        if args.cmd in QA_COMMANDS:
            return ("error: this server does not serve questions (role ingest); ask a server with role qa or all "
                    f"(--server; this one is {args.server})")
        return f"error: this server does not serve `vigil {args.cmd}` (role qa, or an older vigil?): {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        given = "VIGIL_AUTH_TOKEN is not the server's token" if os.environ.get("VIGIL_AUTH_TOKEN") else \
            "set VIGIL_AUTH_TOKEN to the server's token"
        return f"error: UNAUTHENTICATED: {details} ({given})"
    return f"error: {code.name}: {details}"


def setting_messages(exc) -> list[str]:
    """A pydantic ValidationError of the settings: one line per bad VIGIL_* setting, naming the variable, its value
    never echoed."""
    lines = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = "VIGIL_" + "__".join(str(p) for p in e["loc"]).upper() if e["loc"] else exc.title
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"error: {msg}" if loc in msg else f"error: {loc}: {msg}")
    return lines
