"""The one place a Redis client is made: one Redis (`redis://`, `rediss://`, `unix://`) or a Redis Cluster
(`redis+cluster://host:port`, `rediss+cluster://...`, or any URL with `cluster=True`), whose client follows the
cluster's slots (MOVED/ASK, a promoted replica) by itself.

Every store script and transaction touches one stream's keys only (one hash slot, `{<stream id>}`); what spans
streams (the stream list, the active set, camera names) is written with single-key commands next to them (see
memory/store/streams.py), so the same code runs on both.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (AskError, ClusterDownError, ClusterError, RedisClusterUnreachableError,
                              SlotNotCoveredError, TryAgainError)
from redis.retry import Retry

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# The store does not answer now, but will: unreachable, stalled, loading, or (a cluster) a slot with no master
# while a replica is promoted. Workers wait and resend; RPCs say UNAVAILABLE.
STORE_DOWN = (redis.ConnectionError, redis.TimeoutError, ClusterError, ClusterDownError, TryAgainError,
              SlotNotCoveredError, RedisClusterUnreachableError)

# A node's own reply while a slot changes hands (MOVED, ASK: a promoted replica, a migration; CLUSTERDOWN; TRYAGAIN):
# what a command sent straight to one node (not through the cluster client, which follows these) gets
SLOT_MOVING = (AskError, ClusterDownError, TryAgainError)

Client = redis.Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect(url: str, *, cluster: bool = False, socket_timeout: float | None = None,
            connect_timeout: float | None = None, health_check_interval: int = 0, retries: int | None = None) -> Client:
    """A client for `url`: a RedisCluster when the URL's scheme says so or `cluster` is set, else one Redis.
    Timeouts as redis-py's (None: none). `retries` 0: a command that times out fails at once (redis-py's default
    retries it three times; a health check must see a stall within its timeout)."""
    parts = urlsplit(url)
    kw = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
              health_check_interval=health_check_interval)
    if parts.scheme in CLUSTER_SCHEMES or cluster:
        scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"a Redis Cluster is reached over TCP (redis+cluster://host:port), not {scheme}://")
        # a cluster has only database 0: drop a path such as /0
        plain = urlunsplit((scheme, parts.netloc, "", parts.query, ""))
        # failover: a killed master's slots answer after its replica is promoted (about the node timeout); the
        # client re-reads the slot map on MOVED and on a failed connection, and the callers wait and resend
        return RedisCluster.from_url(plain, **kw)
    if retries is not None:
        kw.update(retry=Retry(NoBackoff(), retries), retry_on_timeout=retries > 0)
    return redis.Redis.from_url(url, **kw)


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)
