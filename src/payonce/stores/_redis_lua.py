"""The Lua scripts of the Redis store (L4), and the key layout they rely on.

Layout (``P`` is the store's prefix, ``b`` a bucket number, ``I`` a record's ident):

* ``{P:b}:rec:I`` — one hash per record (the ``Record`` fields, times in microseconds, plus the
  hidden ``lease_id`` nonce of the lease that wrote it);
* ``{P:b}:chain`` — hash ``I`` → ``hash:token:seq`` of the key's newest ledger entry; it outlives
  released and purged records, so a key claimed again continues its chain and its tokens;
* ``{P:b}:log`` — sorted set of the bucket's ledger entries, scored by ``seq``, and on Cluster
  the member ``sealed`` scored by the last seq of the newest checkpoint;
* ``{P:b}:open`` — CLAIMED and UNKNOWN records by ``created_at`` (the Reconciler's scan);
* ``{P:b}:done`` — SUCCEEDED and FAILED records by ``updated_at`` (purge);
* ``{P:b}:live`` — every record, score 0, ordered by ident (``heads``);
* ``{P:b}:fam:F`` — the records of one (scope, family) by generation (``newest``);
* ``P:seq`` — the global ledger counter; ``P:checkpoints`` — the sealed checkpoints (a list);
  ``{P:checkpoints}:appended`` — hash number → nonce of the call that appended it (its hash tag
  is the list's name, so both share the list's slot); ``P:meta`` — the layout version and
  bucket count the prefix was created with.

Everything of one bucket shares the hash tag ``{P:b}``, hence one Redis Cluster slot: every
transition (record, indexes, chain head and ledger entry) is one script on one slot, atomic on
Redis Cluster as on a single server. A record's bucket is a CRC-32 of its ident.

The ident of (scope, key) is ``esc(scope) NUL NUL esc(key)`` where ``esc`` doubles every NUL as
``NUL 0x01``: unambiguous for any strings, and its byte order (UTF-8) is the order of the
``(scope, key)`` tuples, which ``heads`` pages by.

Scripts take times as decimal microseconds and compare them as non-negative decimal strings
(``le``), never as Lua numbers: doubles lose microseconds after the year 2255. They never read
Redis' own clock: ``now`` is the guard's injected clock, passed in.

Replies are flat arrays whose first element names the result (``ok``, ``exists``, ``moved``...).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPEND_CHECKPOINT",
    "APPLY",
    "CLAIM",
    "HEADS",
    "META",
    "NEWEST",
    "PURGE",
    "PURGE_CANDIDATES",
    "SCAN",
    "SEQ",
]

# Shared helpers, prepended to every script that writes the ledger.
_PRELUDE: Final = """
local function le(a, b)  -- a <= b for non-negative decimal integers of any length
  if #a ~= #b then return #a < #b end
  return a <= b
end

-- The next ledger seq. With a counter key (a single server) the script increments it, so seq
-- order is commit order. Without one (Redis Cluster: the counter lives in another slot) the
-- client allocated ``given`` just before; it must exceed every seq this bucket's log holds,
-- entries and the ``sealed`` watermark alike, or the log would go out of order (a counter that
-- went back after a failover) or an entry would land in an already sealed checkpoint range.
local function next_seq(log, given, counter)
  local top = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  local floor = 0
  if top[2] then floor = tonumber(top[2]) end
  if given == '' then
    local seq = redis.call('INCR', counter)
    if seq <= floor then
      seq = floor + 1
      redis.call('SET', counter, seq)
    end
    return seq, nil
  end
  local seq = tonumber(given)
  if seq <= floor then return nil, top[2] end
  return seq, nil
end
"""

# KEYS: rec, chain, open, live, log, fam, [counter]
# ARGV: ident, expected chain hash ('' = none), seq ('' = use counter), entry, entry hash,
#       token, lease_id, created_at, generation ('' = no family), field/value pairs...
CLAIM: Final = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists', redis.call('HGETALL', KEYS[1])}
end
-- Indexed but gone: deleted outside payonce (or evicted). Its payment may exist, and a new
-- lease would call the gateway again; the client refuses (see ``NEWEST``).
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return {'orphan'} end
local head = redis.call('HGET', KEYS[2], ARGV[1])
local head_hash = ''
if head then head_hash = string.match(head, '^([^:]*):') end
if head_hash ~= ARGV[2] then return {'chain', head} end
local seq, floor = next_seq(KEYS[5], ARGV[3], KEYS[7])
if not seq then return {'seq', floor} end
redis.call('HSET', KEYS[1], 'lease_id', ARGV[7], unpack(ARGV, 10))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5] .. ':' .. ARGV[6] .. ':' .. seq)
redis.call('ZADD', KEYS[5], seq, ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
if ARGV[9] ~= '' then redis.call('ZADD', KEYS[6], ARGV[9], ARGV[1]) end
return {'ok', tostring(seq)}
"""
)

# Every fenced transition: takeover, complete, mark_unknown, release.
# KEYS: rec, chain, open, live, done, log, fam, [counter]
# ARGV: ident, expected token, expected status, expected ledger_head, expected lease_id ('' = not
#       checked), now ('' = no lease check: only a takeover of a CLAIMED record needs its lease
#       expired), seq ('' = use counter), entry, entry hash, new token, new status ('' = delete
#       the record), lease_id ('' = keep), updated_at, number of fields to delete N, N field
#       names, field/value pairs...
#
# The expected lease_id fences a complete, mark_unknown or release on the lease itself, not only
# on its token: a failover that lost a claim lets the next claim of the key get the same token
# again (its record and chain head were lost together), and the holder of the lost lease must
# then be refused ('lost') even where token, status and ledger head match or can be re-derived.
# A fenced write keeps the record's lease_id, so a resent one still finds its own lease there.
APPLY: Final = (
    _PRELUDE
    + """
local cur = redis.call(
  'HMGET', KEYS[1], 'token', 'status', 'ledger_head', 'lease_expires_at', 'lease_id')
if not cur[1] then return {'gone', redis.call('HGET', KEYS[2], ARGV[1]) or ''} end
if ARGV[5] ~= '' and cur[5] ~= ARGV[5] then return {'lost'} end
if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] or cur[3] ~= ARGV[4] then
  return {'moved', redis.call('HGETALL', KEYS[1])}
end
if ARGV[6] ~= '' and cur[2] == 'CLAIMED' and not (cur[4] and le(cur[4], ARGV[6])) then
  return {'live', redis.call('HGETALL', KEYS[1])}
end
local seq, floor = next_seq(KEYS[6], ARGV[7], KEYS[8])
if not seq then return {'seq', floor} end
redis.call('ZADD', KEYS[6], seq, ARGV[8])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[9] .. ':' .. ARGV[10] .. ':' .. seq)
local status = ARGV[11]
if status == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[7], ARGV[1])
  return {'ok', tostring(seq)}
end
local n = tonumber(ARGV[14])
if n > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 15, 14 + n)) end
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'lease_id', ARGV[12]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 15 + n))
if status == 'SUCCEEDED' or status == 'FAILED' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[5], ARGV[13], ARGV[1])
end
return {'ok', tostring(seq)}
"""
)

# Purge of one bucket's terminal records, each only if it still is what the client read.
# KEYS: chain, live, done, log, [counter], then per record: rec, fam
# ARGV: count, first seq ('' = use counter), has counter ('1'/'0'),
#       then per record: ident, expected ledger_head, entry, entry hash, token
# A record already gone whose chain head is this very purge entry was purged by this call, sent
# before: a resent script (its first reply lost) counts it again rather than report 0.
PURGE: Final = (
    _PRELUDE
    + """
local count = tonumber(ARGV[1])
local base = 4
if ARGV[3] == '1' then base = 5 end
local counter = KEYS[5]
local purged = {}
for i = 0, count - 1 do
  local rec, fam = KEYS[base + 1 + 2 * i], KEYS[base + 2 + 2 * i]
  local a = 4 + 5 * i
  local ident = ARGV[a]
  local cur = redis.call('HMGET', rec, 'status', 'ledger_head')
  if (cur[1] == 'SUCCEEDED' or cur[1] == 'FAILED') and cur[2] == ARGV[a + 1] then
    local given = ''
    if ARGV[2] ~= '' then given = tostring(tonumber(ARGV[2]) + i) end
    local seq, floor = next_seq(KEYS[4], given, counter)
    if not seq then return {'seq', floor} end
    redis.call('ZADD', KEYS[4], seq, ARGV[a + 2])
    redis.call('HSET', KEYS[1], ident, ARGV[a + 3] .. ':' .. ARGV[a + 4] .. ':' .. seq)
    redis.call('DEL', rec)
    redis.call('ZREM', KEYS[2], ident)
    redis.call('ZREM', KEYS[3], ident)
    redis.call('ZREM', fam, ident)
    purged[#purged + 1] = ident
  elseif not cur[1] then
    local mine = ARGV[a + 3] .. ':'
    local head = redis.call('HGET', KEYS[1], ident)
    if head and string.sub(head, 1, #mine) == mine then purged[#purged + 1] = ident end
  end
end
return {'ok', purged}
"""
)

# Up to ``limit`` terminal records of a bucket updated at or before the cutoff, oldest first.
# KEYS: done. ARGV: cutoff (micros), limit, record key prefix.
PURGE_CANDIDATES: Final = """
local le = function(a, b)
  if #a ~= #b then return #a < #b end
  return a <= b
end
local out = {}
-- Scores are doubles, exact to the microsecond until 2255; after that both the scores and
-- the cutoff round the same monotonic way, so no due record is missed, and the exact
-- updated_at drops any record that only rounded into the range.
-- An index entry whose record is not here is skipped (see NEWEST), and reading goes on past
-- it: the entries skipped must not take the places of due records. Paged by rank (ZRANGE does
-- not walk the entries before its start, as ZRANGEBYSCORE ... LIMIT offset would).
local limit = tonumber(ARGV[2])
local cutoff = tonumber(ARGV[1])
local start = 0
local more = true
while more and #out < limit do
  local page = redis.call('ZRANGE', KEYS[1], start, start + 99, 'WITHSCORES')
  if #page == 0 then break end
  for i = 1, #page, 2 do
    if tonumber(page[i + 1]) > cutoff then
      more = false
      break
    end
    local rec = ARGV[3] .. page[i]
    local updated = redis.call('HGET', rec, 'updated_at')
    if updated and le(updated, ARGV[1]) then
      out[#out + 1] = redis.call('HGETALL', rec)
      if #out >= limit then break end
    end
  end
  start = start + 100
end
return out
"""

# Up to ``limit`` records of a bucket needing recovery (UNKNOWN, or CLAIMED with its lease
# expired at ``now``), oldest first. Walks the open index in created_at order, so it reads the
# live leases older than the due records it returns.
# KEYS: open. ARGV: now (micros), limit, record key prefix.
SCAN: Final = """
local le = function(a, b)
  if #a ~= #b then return #a < #b end
  return a <= b
end
local limit = tonumber(ARGV[2])
local out = {}
local start = 0
while #out < limit do
  local idents = redis.call('ZRANGE', KEYS[1], start, start + 99)
  if #idents == 0 then break end
  for _, ident in ipairs(idents) do
    local rec = ARGV[3] .. ident
    local cur = redis.call('HMGET', rec, 'status', 'lease_expires_at')
    if cur[1] == 'UNKNOWN' or (cur[1] == 'CLAIMED' and cur[2] and le(cur[2], ARGV[1])) then
      out[#out + 1] = redis.call('HGETALL', rec)
      if #out >= limit then break end
    end
  end
  start = start + 100
end
return out
"""

# (scope, key, ledger_head) of up to ``limit`` records of a bucket after ``after`` (an ident).
# KEYS: live. ARGV: after ('' = from the start), limit, record key prefix.
HEADS: Final = """
-- An index entry whose record is not here is skipped (see NEWEST), and reading goes on past
-- it: the client merges every bucket's first ``limit`` rows, so a bucket must not answer fewer
-- while it has more.
local low = '-'
if ARGV[1] ~= '' then low = '(' .. ARGV[1] end
local limit = tonumber(ARGV[2])
local out = {}
while #out < 3 * limit do
  -- Paged by moving the lower bound past the last ident read, never by offset (which walks).
  local idents = redis.call('ZRANGEBYLEX', KEYS[1], low, '+', 'LIMIT', 0, 100)
  if #idents == 0 then break end
  for _, ident in ipairs(idents) do
    local cur = redis.call('HMGET', ARGV[3] .. ident, 'scope', 'key', 'ledger_head')
    if cur[1] then
      out[#out + 1] = cur[1]
      out[#out + 1] = cur[2]
      out[#out + 1] = cur[3]
      if #out >= 3 * limit then break end
    end
  end
  low = '(' .. idents[#idents]
end
return out
"""

# The records of one (scope, family) in a bucket with the highest generation there; the string
# 'missing' instead when the index names a record that is not here. An index entry and its
# record are written and removed together, in one script, so that means either the bucket's slot
# is being migrated (resharding: the index keys reached this importing master before the record;
# Redis moves a slot's keys in batches, newest first) or the record key was deleted outside
# payonce. Answering without that record would let a reference-less intent claim a new
# generation of a key whose payment exists; the client refuses instead (see ``_newest``). The
# other reads that visit undeclared record keys (SCAN, HEADS, PURGE_CANDIDATES) skip such an
# entry: a record they miss is handled late, never wrongly, and one orphan must not stop the
# Reconciler for every bucket.
# KEYS: fam. ARGV: record key prefix.
NEWEST: Final = """
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if not top[2] then return {} end
local out = {}
for _, ident in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], top[2], top[2])) do
  local record = redis.call('HGETALL', ARGV[1] .. ident)
  if #record == 0 then return 'missing' end
  out[#out + 1] = record
end
return out
"""

# KEYS: checkpoints, appended. ARGV: number, encoded checkpoint, nonce of the call. Numbers stay
# contiguous. Returns 1 when this call stored the checkpoint: now, or already (the same call sent
# again after its reply was lost: the checkpoint at that number is this one and the nonce recorded
# for the number is the call's); 0 when the number is taken otherwise, even by an identical
# checkpoint appended by another call (a second seal of the same range conflicts).
APPEND_CHECKPOINT: Final = """
local number = tonumber(ARGV[1])
local stored = redis.call('LLEN', KEYS[1])
if stored + 1 == number then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  return 1
end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[3]
    and redis.call('LINDEX', KEYS[1], number - 1) == ARGV[2] then
  return 1
end
return 0
"""

# Allocate ``count`` seqs on Redis Cluster, the counter first raised above ``floor`` (a bucket
# reported seqs the counter had not reached: it lost increments in a failover).
# KEYS: counter. ARGV: count, floor. Returns the last seq allocated.
SEQ: Final = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[2])
if current < floor then redis.call('SET', KEYS[1], floor) end
return redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
"""

# KEYS: meta. ARGV: layout version, buckets. Records them on first use; returns what is stored.
META: Final = """
redis.call('HSETNX', KEYS[1], 'version', ARGV[1])
redis.call('HSETNX', KEYS[1], 'buckets', ARGV[2])
return redis.call('HMGET', KEYS[1], 'version', 'buckets')
"""
