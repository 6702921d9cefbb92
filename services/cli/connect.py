"""A client command's connection: the Client its --server and TLS flags (and VIGIL_AUTH_TOKEN) describe."""
from __future__ import annotations

import os
import sys


def client(args):
    """The Client for `args` (services.client); a --tls-cert without --tls-key (or the reverse) exits 2, and a
    token about to cross a network in plaintext is warned about."""
    from services.client import Client, is_local, server_address

    args.server = server_address(args.server)  # "localhost" -> localhost:50051, as errors name it
    token = os.environ.get("VIGIL_AUTH_TOKEN") or None
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key (VIGIL_TLS_CERT, VIGIL_TLS_KEY) go together", file=sys.stderr)
        raise SystemExit(2)
    tls = args.tls or any((args.tls_ca, args.tls_cert, args.tls_server_name))
    if token and not tls and not is_local(args.server):
        print(f"warning: sending VIGIL_AUTH_TOKEN to {args.server} over a plaintext channel: anyone on the path "
              "can read it; use TLS (--tls-ca / --tls)", file=sys.stderr)
    return Client(args.server, token=token, tls=bool(args.tls), tls_ca=args.tls_ca or None,
                  tls_cert=args.tls_cert or None, tls_key=args.tls_key or None,
                  server_name=args.tls_server_name or None)
