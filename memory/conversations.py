"""Multi-turn conversations about a stream: their turns in Redis (so any QA replica continues any conversation),
and which of them fit a prompt.

    {ns}:conv:{<id>}:meta     hash   stream (the stream it is about), created (unix s), turns (appended so far)
    {ns}:conv:{<id>}:turns    list   JSON {"q": question, "a": answer}, oldest first (the newest MAX_STORED kept)

Both keys expire `ttl_s` after the conversation's last use (every read and append restarts the clock).
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass


from encoders.base import Turn
from memory.errors import ConversationNotFound, clipped
from memory.store.client import Client

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STORED = 64  # turns kept per conversation: more than any prompt bound at the default settings reads
# KEYS: meta, turns (one hash slot); ARGV: turn JSON, turns kept, TTL ms. -1: the conversation is gone
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
local n = redis.call('HINCRBY', KEYS[1], 'turns', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
"""


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    stream_id: str
    turns: tuple[Turn, ...]  # oldest first
    created: float
    appended: int  # turns appended over its life (>= len(turns): the oldest beyond MAX_STORED are gone)


def recent_turns(turns: Sequence[Turn], max_tokens: int, count_tokens: Callable[[str], int]) -> tuple[Turn, ...]:
    """The newest turns whose questions and answers together take at most `max_tokens` tokens (`count_tokens`:
    the model's tokenizer), oldest first: the oldest are dropped first, and a turn never enters in part."""
    kept: list[Turn] = []
    used = 0
    for t in reversed(turns):
        used += count_tokens(t.question) + count_tokens(t.answer)
        if used > max_tokens:
            break
        kept.append(t)
    return tuple(reversed(kept))


class ConversationStore:
    def __init__(self, client: Client, namespace: str, ttl_s: float) -> None:
        self.r = client
        self.ns = namespace
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._append = client.register_script(_APPEND)

    def _k(self, cid: str, suffix: str) -> str:
        return f"{self.ns}:conv:{{{cid}}}:{suffix}"

    @staticmethod
    def check_id(cid: str) -> str:
        if not CONVERSATION_ID.match(cid):
            raise ValueError(f"conversation id {clipped(cid)} is not 1-64 letters, digits, '-' or '_'")
        return cid

    def create(self, stream_id: str) -> Conversation:
        cid = uuid.uuid4().hex
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k(cid, "meta"), mapping={"stream": stream_id, "created": json.dumps(now), "turns": 0})
        pipe.pexpire(self._k(cid, "meta"), self.ttl_ms)
        pipe.execute()
        return Conversation(cid, stream_id, (), now, 0)

    def get(self, cid: str) -> Conversation:
        """The conversation and its stored turns; its TTL restarts. ConversationNotFound when unknown or expired."""
        self.check_id(cid)
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(self._k(cid, "meta"))
        pipe.lrange(self._k(cid, "turns"), 0, -1)
        pipe.pexpire(self._k(cid, "meta"), self.ttl_ms)
        pipe.pexpire(self._k(cid, "turns"), self.ttl_ms)
        meta, rows, *_ = pipe.execute()
        if not meta:
            raise ConversationNotFound(f"no conversation {clipped(cid)}: unknown, or unused for longer than "
                                       f"{self.ttl_ms / 1000:g} s (VIGIL_CONVERSATION_TTL_S); start a new one")
        turns = tuple(Turn(d["q"], d["a"]) for d in map(json.loads, rows))
        return Conversation(cid, meta[b"stream"].decode(), turns, float(meta[b"created"]), int(meta[b"turns"]))

    def append(self, cid: str, turn: Turn) -> int:
        """Add a turn (the newest MAX_STORED are kept), atomically; returns the turns appended so far.
        ConversationNotFound when it expired meanwhile (it is not brought back)."""
        self.check_id(cid)
        n = self._append(keys=[self._k(cid, "meta"), self._k(cid, "turns")],
                         args=[json.dumps({"q": turn.question, "a": turn.answer}), MAX_STORED, self.ttl_ms])
        if n == -1:
            raise ConversationNotFound(f"conversation {clipped(cid)} expired before its turn was saved")
        return int(n)

    def delete(self, cid: str) -> None:
        self.r.delete(self._k(self.check_id(cid), "meta"), self._k(cid, "turns"))
