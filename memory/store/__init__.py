"""Redis store: stream metadata, the stream prefix, and chunks (KV blob, retrieval vector, keyframe).

Keys are hash-tagged by stream so Redis Cluster keeps a stream on one slot:

    {ns}:streams                       sorted set  stream id -> created (unix s)
    {ns}:s:{<id>}:meta                 hash        StreamRecord fields, JSON each (`memory`: one object)
    {ns}:s:{<id>}:prefix               string      KV blob of the prompt prefix
    {ns}:s:{<id>}:chunks               sorted set  chunk id -> start_s
    {ns}:s:{<id>}:c:<n>                hash        meta (JSON), kv (chunk blob: KV or features), vec (mean key, float32),
                                                   keys (representative keys, .npy float16 [C, m, D]), jpeg,
                                                   d:<signal> (frame-index vectors, .npy float32 [n, d]: d:ocr,
                                                   d:labels, d:image; n > 1 once retention merged chunks)
    {ns}:s:{<id>}:wm                   string      working-memory snapshot (vigil.tokens; meta wm_snapshot_version)
    {ns}:s:{<id>}:wmlog                list        working-memory deltas after the snapshot (vigil.delta), one per
                                                   chunk in chunk order; snapshot + deltas = the memory at
                                                   meta wm_version (the newest chunk)
    {ns}:s:{<id>}:ckpt                 hash        json (where ingest resumes), detector (bytes), next_clip (the
                                                   chunk id after the newest stored one: resent writes are no-ops)
    {ns}:s:{<id>}:gaps                 list        JSON gaps, oldest first
    {ns}:s:{<id>}:gapz                 sorted set  the same gaps by end time (a question reads its window's)
    {ns}:s:{<id>}:events               stream      state changes, progress, gaps (capped), for WatchStream
    {ns}:s:{<id>}:lease                string      the owning worker's fencing token "<owner>:<n>" (expires)
    {ns}:s:{<id>}:fence                counter     claims of the stream so far (the n of the newest token)
    {ns}:s:{<id>}:source               string      the source with its credentials, when the record shows it redacted
    {ns}:active                        set         ids of streams in an active state (what adoption scans): a
                                                   superset, read against each record's state (streams.py)
    {ns}:names                         hash        camera name -> stream id (services/cameras.py); :lock:<name>, start-up

On a Redis Cluster (memory/store/client.py) each stream's keys share one slot, so every script and transaction
stays on one node; the three namespace keys above are written with single-key commands only, never together
with a stream's keys. Reads of many streams (paging, adoption scans) are pipelines the cluster client fans out
per node.

Split by concern: `records` (the types), `streams` (records, states, paging, deletion), `chunks` (memory,
chunks, checkpoint, retention), `events` (the event log and gaps), `leases` (ownership and fencing), `scripts`
(the Lua that makes fenced writes atomic). Every write an ingest worker makes to a stream carries its lease
token and is refused (LeaseLost) once the lease is another's.

Redis is the one source of truth; the search indexes (`memory.index`) are derived from the `vec`, `keys`
and `d:*` fields.
"""
from __future__ import annotations


from memory.layout import KVLayout
from memory.store.client import Client
from memory.store.chunks import Chunks
from memory.store.events import Events
from memory.store.keys import EVENTS_MAXLEN, STREAM_ID
from memory.store.leases import LeaseLost, Leases
from memory.store.chunks import ChunkGap, ChunkWrite
from memory.store.records import (ACTIVE, TERMINAL, Checkpoint, ChunkEncoding, ChunkRecord, Gap, IndexRow,
                                  IngestProgress, SourceKind, StreamRecord, StreamState, WorkingLoad)
from memory.store.streams import Streams

__all__ = ["ACTIVE", "TERMINAL", "EVENTS_MAXLEN", "STREAM_ID", "Checkpoint", "ChunkEncoding", "ChunkGap", "ChunkRecord", "ChunkWrite",
           "Gap", "IndexRow", "IngestProgress", "LeaseLost", "MemoryStore", "SourceKind", "StreamRecord", "StreamState",
           "WorkingLoad"]


class MemoryStore(Streams, Chunks, Events, Leases):
    """The Redis store of every stream (see the module docstring for its keys)."""

    def __init__(self, client: Client, namespace: str, layout: KVLayout, fingerprint: str, *,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        """`client`: memory.store.client.connect's (one Redis or a Redis Cluster). `wait_replicas` > 0: each
        chunk write returns once that many replicas have it (Redis WAIT, up to `wait_timeout_ms`)."""
        super().__init__(client, namespace, layout, fingerprint)
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self._init_streams()
        self._init_chunks()
        self._init_leases()
