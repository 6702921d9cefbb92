"""Server-side (Lua) compare-and-write scripts: each proves, in the same atomic step as its write, that the
writer still holds the stream's lease (its fencing token), so a worker paused past its lease can never write
after another one adopted the stream. Chunk writes are also idempotent (a chunk id below the checkpoint's
`next_clip` is already stored), so a write whose reply was lost to a Redis fault can simply be sent again.

Each script starts with a shebang (Redis 7): without one, Redis checks its maxmemory only when a script's first
command writes, and PUT_CHUNK's first command reads, so chunks were stored past maxmemory. `#!lua` is refused
(OOM) while Redis is full, which the worker waits out; the small lease and state writes carry `allow-oom`, so
a full store can still be handed over, stopped and failed."""

ALLOW_OOM = "#!lua flags=allow-oom\n"  # a few bytes: allowed even when Redis is at its maxmemory
DENY_OOM = "#!lua\n"  # grows the store: refused while Redis is at its maxmemory

# KEYS[1] lease, KEYS[2] fence counter, KEYS[3] stream meta. ARGV[1] owner, ARGV[2] ttl ms.
# A new token "<owner>:<n>" (n counts every claim of the stream), or nil when someone holds the lease or the
# stream is gone.
CLAIM = ALLOW_OOM + """
if redis.call('exists', KEYS[1]) == 1 or redis.call('exists', KEYS[3]) == 0 then return false end
local tok = ARGV[1] .. ':' .. redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], tok, 'px', ARGV[2])
return tok
"""

# KEYS[1] lease, KEYS[2] stream meta. ARGV[1] token, ARGV[2] ttl ms. 1: renewed; 2: it had expired with no
# other taker and is taken back with the same token (nobody else can have written meanwhile: any other
# writer needs its own, newer token); 0: someone else holds it, or the stream was deleted.
RENEW = ALLOW_OOM + """
local cur = redis.call('get', KEYS[1])
if cur == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if not cur and redis.call('exists', KEYS[2]) == 1 then redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return 2 end
return 0
"""

RELEASE = ALLOW_OOM + "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

# Change a stream's state (and other meta fields) and publish the change. The active set is another slot's key
# on a Redis Cluster: Streams.set_state keeps it in step around this script (see memory/store/streams.py).
# KEYS: 1 meta, 2 events, 3 lease. ARGV: 1 token ("" = unfenced: an operator's stop, an owner-less stream),
# 2 new state (JSON string), 3 events maxlen, 4 now (JSON), 5 message, 6 n, then n field/value pairs.
# -1: the lease is not the writer's; -2: the stream is gone (deleted); else 1.
SET_STATE = ALLOW_OOM + """
if ARGV[1] ~= '' and redis.call('get', KEYS[3]) ~= ARGV[1] then return -1 end
if redis.call('exists', KEYS[1]) == 0 then return -2 end
local prev = redis.call('hget', KEYS[1], 'state') or '""'
local n = tonumber(ARGV[6])
local kv = {'state', ARGV[2], 'updated', ARGV[4]}
for i = 1, 2 * n do kv[#kv + 1] = ARGV[6 + i] end
redis.call('hset', KEYS[1], unpack(kv))
if prev ~= ARGV[2] then
  redis.call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'state', 'time', ARGV[4],
             'previous', string.sub(prev, 2, -2), 'state', string.sub(ARGV[2], 2, -2), 'message', ARGV[5])
end
return 1
"""

# Store one chunk, what changed in the working memory with it, the stream's counters and the checkpoint.
# KEYS: 1 lease, 2 ckpt, 3 chunk hash, 4 chunk set, 5 meta, 6 working-memory snapshot, 7 events, 8 working-memory
# delta log. ARGV: 1 token, 2 chunk id, 3 start_s (the chunk set's score), 4 size, 5 cuts, 6 working memory:
# "0" none, "S" a snapshot (replaces the snapshot, empties the log), "D" a delta (appended to the log), 7 its
# blob, 8 checkpoint JSON, 9 detector state, 10 events maxlen, 11 now, 12 n chunk fields, then those pairs, then
# m meta fields and their pairs.
# Meta keeps wm_version (the chunk id the stored memory is at), wm_snapshot_version, working_bytes (snapshot)
# and wm_log_bytes; the checkpoint hash keeps the snapshot's own checkpoint (wm_json, wm_detector); streams stored before these existed hold the memory of their newest chunk (chunks - 1).
# The progress event names the writer's token (`by`). -1: not the lease holder; 0: already stored (a resent
# write); -2: the chunk id is not the next one; -3: the delta does not follow the stored memory; 1: stored.
PUT_CHUNK = DENY_OOM + """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local cid = tonumber(ARGV[2])
local nxt = tonumber(redis.call('hget', KEYS[2], 'next_clip') or '0')
if cid < nxt then return 0 end
if cid > nxt then return -2 end
local mode = ARGV[6]
local oldv = tonumber(redis.call('hget', KEYS[5], 'wm_version') or
                      (tonumber(redis.call('hget', KEYS[5], 'chunks') or '0') - 1))
if mode == 'D' and oldv ~= cid - 1 then return -3 end
local i = 13
local n = tonumber(ARGV[12])
local kv = {}
for j = 0, 2 * n - 1 do kv[#kv + 1] = ARGV[i + j] end
redis.call('del', KEYS[3])
redis.call('hset', KEYS[3], unpack(kv))
i = i + 2 * n
local m = tonumber(ARGV[i])
local meta = {}
for j = 1, 2 * m do meta[#meta + 1] = ARGV[i + j] end
redis.call('zadd', KEYS[4], ARGV[3], ARGV[2])
local size = tonumber(ARGV[4])
local grow = size
local wlen = string.len(ARGV[7])
if mode == 'S' then
  local old = tonumber(redis.call('hget', KEYS[5], 'working_bytes') or '0')
            + tonumber(redis.call('hget', KEYS[5], 'wm_log_bytes') or '0')
  grow = grow + wlen - old
  redis.call('set', KEYS[6], ARGV[7])
  redis.call('del', KEYS[8])
  redis.call('hset', KEYS[2], 'wm_json', ARGV[8], 'wm_detector', ARGV[9])
  redis.call('hset', KEYS[5], 'working_bytes', wlen, 'wm_log_bytes', 0, 'wm_version', cid, 'wm_snapshot_version', cid)
elseif mode == 'D' then
  if not redis.call('hget', KEYS[5], 'wm_snapshot_version') then
    redis.call('hset', KEYS[5], 'wm_snapshot_version', oldv)
  end
  grow = grow + wlen
  redis.call('rpush', KEYS[8], ARGV[7])
  redis.call('hincrby', KEYS[5], 'wm_log_bytes', wlen)
  redis.call('hset', KEYS[5], 'wm_version', cid)
end
redis.call('hincrby', KEYS[5], 'bytes', grow)
redis.call('hincrby', KEYS[5], 'chunk_bytes', size)
redis.call('hincrby', KEYS[5], 'chunk_bytes_written', size)
if mode ~= '0' then redis.call('hincrby', KEYS[5], 'working_bytes_written', wlen) end
if tonumber(ARGV[5]) > 0 then redis.call('hincrby', KEYS[5], 'scene_cuts', ARGV[5]) end
if m > 0 then redis.call('hset', KEYS[5], unpack(meta)) end
redis.call('hset', KEYS[2], 'json', ARGV[8], 'detector', ARGV[9], 'next_clip', cid + 1)
redis.call('xadd', KEYS[7], 'MAXLEN', '~', ARGV[10], '*', 'kind', 'progress', 'time', ARGV[11], 'chunk', ARGV[2],
           'by', ARGV[1])
return 1
"""

# Store a working-memory snapshot on its own (a stream that ends keeps its final memory), fenced.
# KEYS: 1 lease, 2 ckpt, 3 meta, 4 snapshot, 5 delta log. ARGV: 1 token, 2 the chunk id it is the memory after
# (must be the newest stored chunk), 3 blob. -1: not the lease holder; -2: not the newest chunk; 1: stored.
PUT_WORKING = DENY_OOM + """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local cid = tonumber(ARGV[2])
if cid ~= tonumber(redis.call('hget', KEYS[2], 'next_clip') or '0') - 1 then return -2 end
local old = tonumber(redis.call('hget', KEYS[3], 'working_bytes') or '0')
          + tonumber(redis.call('hget', KEYS[3], 'wm_log_bytes') or '0')
local wlen = string.len(ARGV[3])
redis.call('set', KEYS[4], ARGV[3])
redis.call('del', KEYS[5])
redis.call('hset', KEYS[2], 'wm_json', redis.call('hget', KEYS[2], 'json'),
           'wm_detector', redis.call('hget', KEYS[2], 'detector') or '')
redis.call('hset', KEYS[3], 'working_bytes', wlen, 'wm_log_bytes', 0, 'wm_version', cid, 'wm_snapshot_version', cid)
redis.call('hincrby', KEYS[3], 'bytes', wlen - old)
redis.call('hincrby', KEYS[3], 'working_bytes_written', wlen)
return 1
"""
