"""WatchStream subscribers for tests and benchmarks: `n` calls spread over a few connections, each read by a
thread of its own, their events and errors kept."""
from __future__ import annotations

import threading
import time

import grpc

from services.wire import ingest_pb2, ingest_pb2_grpc


def channel(addr: str) -> grpc.Channel:
    """A channel on a connection of its own (grpc shares connections between like channels by default)."""
    return grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])


class Watchers:
    """`n` WatchStream calls on `channels` connections, each read by its own thread until its stream ends (or
    `timeout_s`, None: no deadline)."""

    def __init__(self, addr: str, sid: str, n: int, channels: int = 4, timeout_s: float | None = 120) -> None:
        self.chans = [channel(addr) for _ in range(channels)]
        stubs = [ingest_pb2_grpc.IngestServiceStub(ch) for ch in self.chans]
        self.calls = [stubs[i % channels].WatchStream(ingest_pb2.WatchStreamRequest(stream_id=sid), timeout=timeout_s)
                      for i in range(n)]
        self.events: list[list] = [[] for _ in range(n)]
        self.errors: list[grpc.StatusCode | None] = [None] * n
        self.threads = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _read(self, i: int) -> None:
        try:
            for ev in self.calls[i]:
                self.events[i].append(ev)
        except grpc.RpcError as err:
            self.errors[i] = err.code()

    def snapshots(self) -> int:
        """Watchers whose first event (the snapshot WatchStream opens with) has come."""
        return sum(1 for evs in self.events if evs and evs[0].kind == ingest_pb2.StreamEvent.KIND_SNAPSHOT)

    def wait_open(self, n: int, timeout_s: float = 120) -> None:
        """Until `n` watchers have their snapshot; RuntimeError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.snapshots() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.snapshots()} of {n} watchers got their snapshot in {timeout_s}s")
            time.sleep(0.05)

    def close(self) -> None:
        for c in self.calls:
            c.cancel()
        for t in self.threads:
            t.join(10)
        for ch in self.chans:
            ch.close()
