"""Waiting on a stream (tests and benchmarks)."""
from __future__ import annotations

import time


def wait_done(client, stream_id: str, timeout_s: float = 300.0):
    from services.client import state_name

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.describe(stream_id)
        if state_name(info.state) in ("finished", "stopped", "failed"):
            return info
        time.sleep(0.1)
    raise AssertionError(f"stream {stream_id} did not finish in {timeout_s}s")
