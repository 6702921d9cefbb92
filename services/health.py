"""Health that tells the truth: every served name is NOT_SERVING while the memory store (Redis) does not
answer, and SERVING again once it does."""
from __future__ import annotations

import asyncio
import logging

from concurrent.futures import Future, ThreadPoolExecutor

import redis
from grpc_health.v1 import health, health_pb2

from memory.store.client import STORE_DOWN, connect, is_cluster

log = logging.getLogger("vigil.health")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class StoreHealth:
    """Pings the store every `period_s` on its own connection and its own thread, and sets the health status of
    `names` ("" is the server as a whole) to match. The ping has a short socket timeout and no retries (redis-py
    retries a timed-out command three times by default: 6.5 s before a stall was seen), and it runs on a thread of
    its own, so neither busy control calls nor watchers on the shared pool can delay it: a stalled Redis turns
    health NOT_SERVING within about `period_s + timeout_s`."""

    def __init__(self, servicer: health.aio.HealthServicer, names: list[str], redis_url: str,
                 period_s: float = 0.5, timeout_s: float = 0.75, cluster: bool = False) -> None:
        self.servicer, self.names, self.period_s, self.timeout_s = servicer, names, period_s, timeout_s
        self._client = connect(redis_url, cluster=cluster, socket_timeout=timeout_s, connect_timeout=timeout_s,
                               retries=0)
        self._cluster = is_cluster(self._client)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vigil-health")
        self._pending: Future | None = None  # a ping still running (a stall longer than the socket timeout)
        self.serving: bool | None = None
        self._task: asyncio.Task | None = None

    def _ping(self) -> bool:
        try:
            if self._cluster:  # a ping reaches any live node; the cluster serves only while every slot has a master
                return self._client.cluster_info().get("cluster_state") == "ok"
            return bool(self._client.ping())
        except (redis.RedisError, *STORE_DOWN):  # unreachable, stalled, loading its data after a restart, electing
            return False

    async def _answers(self) -> bool:
        """Whether the store answered a ping within the timeout (a ping still hanging counts as no)."""
        if self._pending is None or self._pending.done():
            self._pending = self._thread.submit(self._ping)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._pending)), self.timeout_s + 0.25)
        except asyncio.TimeoutError:
            return False

    async def check(self) -> bool:
        ok = await self._answers()
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
        self._thread.shutdown(wait=False, cancel_futures=True)
        self._client.close()
