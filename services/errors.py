"""The one table from domain errors to gRPC status codes."""
from __future__ import annotations

import grpc
import redis

from encoders.loading import ModelUnavailable
from memory.errors import ChunksGone, ConversationNotFound, IncompatibleBlob, InvalidMemoryOptions, StreamNotFound
from memory.store import LeaseLost
from memory.store.client import STORE_DOWN
from streamer.errors import (CorruptVideo, NotAVideo, SourceNotFound, SourceTimeout, SourceUnavailable,
                             UnsupportedCodec)


class InvalidRequest(Exception):
    pass


class PathNotAllowed(Exception):
    pass


class HostNotAllowed(Exception):
    """A camera URL names a host outside VIGIL_CAMERA_HOSTS (services/cameras.py check_camera_host)."""


class LimitExceeded(Exception):
    pass


class Unauthenticated(Exception):
    pass


class NotReady(Exception):
    """The request is valid but the stream cannot serve it yet (e.g. nothing stored so far)."""


class NotServedHere(Exception):
    """This process does not run that service (role)."""


STATUS: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidMemoryOptions: grpc.StatusCode.INVALID_ARGUMENT,
    NotAVideo: grpc.StatusCode.INVALID_ARGUMENT,
    CorruptVideo: grpc.StatusCode.INVALID_ARGUMENT,
    UnsupportedCodec: grpc.StatusCode.INVALID_ARGUMENT,
    SourceNotFound: grpc.StatusCode.NOT_FOUND,
    SourceUnavailable: grpc.StatusCode.UNAVAILABLE,
    SourceTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    StreamNotFound: grpc.StatusCode.NOT_FOUND,
    ConversationNotFound: grpc.StatusCode.NOT_FOUND,  # unknown, or expired after its TTL
    PathNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    HostNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    IncompatibleBlob: grpc.StatusCode.FAILED_PRECONDITION,
    ModelUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    NotServedHere: grpc.StatusCode.UNIMPLEMENTED,
    NotReady: grpc.StatusCode.FAILED_PRECONDITION,
    ChunksGone: grpc.StatusCode.ABORTED,  # retention rewrote the stream three times during one question
    LeaseLost: grpc.StatusCode.ABORTED,  # another ingest server took the stream over meanwhile
    # Redis unreachable, stalled past the socket timeout, or still loading its data after a restart
    redis.ConnectionError: grpc.StatusCode.UNAVAILABLE,
    redis.TimeoutError: grpc.StatusCode.UNAVAILABLE,
    # a Redis Cluster slot whose master is being replaced by its replica (CLUSTERDOWN, TRYAGAIN, no node for it)
    redis.exceptions.ClusterError: grpc.StatusCode.UNAVAILABLE,
    redis.exceptions.TryAgainError: grpc.StatusCode.UNAVAILABLE,
    redis.exceptions.SlotNotCoveredError: grpc.StatusCode.UNAVAILABLE,
    redis.exceptions.RedisClusterUnreachableError: grpc.StatusCode.UNAVAILABLE,
    # Redis at its maxmemory with noeviction: nothing is evicted, writes are refused until room is made
    redis.exceptions.OutOfMemoryError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

STORE_UNAVAILABLE = ("the memory store (Redis) is not answering; the server keeps retrying and its health "
                     "check reports NOT_SERVING until it answers again: retry shortly")
STORE_FULL = ("the memory store (Redis) is full (its maxmemory, noeviction): nothing was evicted; streams wait "
              "until there is room: raise Redis's maxmemory (compose: VIGIL_REDIS_MAXMEMORY) or lower retention "
              "(VIGIL_MEMORY__MAX_BYTES / __MAX_AGE_S), or delete streams")


def public_message(exc: BaseException) -> str:
    """What the client is told: the domain error's own message; for a store outage a plain sentence (never the
    socket path or host of the store)."""
    if isinstance(exc, STORE_DOWN):
        return STORE_UNAVAILABLE
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return STORE_FULL
    return str(exc)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None
