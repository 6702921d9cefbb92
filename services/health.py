"""Health that tells the truth: every served name is NOT_SERVING while the memory store (Redis) does not
answer, and SERVING again once it does."""
from __future__ import annotations

import asyncio
import logging

import redis
from grpc_health.v1 import health, health_pb2

from memory.store.client import connect

log = logging.getLogger("vigil.health")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class StoreHealth:
    """Pings the store every `period_s` on its own short-timeout connection (so a stalled Redis is seen within
    about `timeout_s`, not after the data connections' longer socket timeout) and sets the health status of
    `names` ("" is the server as a whole) to match."""

    def __init__(self, servicer: health.aio.HealthServicer, names: list[str], redis_url: str,
                 period_s: float = 1.0, timeout_s: float = 1.0, cluster: bool = False) -> None:
        self.servicer, self.names, self.period_s = servicer, names, period_s
        self._client = connect(redis_url, cluster=cluster, socket_timeout=timeout_s, connect_timeout=timeout_s)
        self.serving: bool | None = None
        self._task: asyncio.Task | None = None

    def _ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:  # unreachable, stalled, loading its data after a restart
            return False

    async def check(self) -> bool:
        ok = await asyncio.to_thread(self._ping)
        if ok != self.serving:
            if self.serving is not None:
                (log.info if ok else log.warning)("the memory store (Redis) %s: health %s",
                                                  "answers again" if ok else "does not answer",
                                                  "SERVING" if ok else "NOT_SERVING")
            self.serving = ok
            for name in self.names:
                await self.servicer.set(name, SERVING if ok else NOT_SERVING)
        return ok

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # nothing may end the health loop
                log.exception("health check failed")
            await asyncio.sleep(self.period_s)

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._client.close()
