"""`vigil mcp`: an MCP server on stdin/stdout for an agent (services/mcp_server.py), whose tools call the vigil
server named by --server with the same token (VIGIL_AUTH_TOKEN) and TLS flags as the other client commands."""
from __future__ import annotations

from services.cli.connect import client


def cmd_mcp(args) -> int:
    from services.mcp_server import run_stdio

    with client(args) as c:  # stdout is the protocol's: nothing else is printed there
        run_stdio(c)
    return 0
