"""The Lua scripts that make each multi-key step atomic, and the entry layout they share.

Every script touches keys of one hash tag (one context's), so it runs on one Cluster
slot. Scripts read the server's clock (TIME), not the caller's: replicas with skewed
clocks still agree on when a retry is due and where a stream is trimmed.

A stream entry's fields:
  s        the NATS-like subject, `catga.orders.cmd.ReserveStock` (logs, dead letters, filters)
  b        the body
  h.<Name> one per envelope header (`h.Catga-Message-Id`, ...)
  a        deliveries before this entry was added (a retried message's attempts so far)
  g        the one group a retried entry is for (the others on an event stream skip it)
  o        the entry a retried one was copied from (keeps retry-set members unique)

The settling scripts first XACK and do nothing more when it acknowledged nothing: the
entry was reclaimed and settled by another consumer meanwhile, which is the one answer.
"""

NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: stream, dedupe key. ARGV: window s, max age ms, max length (0: none), fields...
# The de-duplication key and the entry are written together, so a relay re-publish within
# DUPLICATE_WINDOW is dropped (JetStream's Nats-Msg-Id) and a dropped one was really stored.
PUBLISH = (
    NOW
    + """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], 'MINID', '~', string.format('%.0f', now - tonumber(ARGV[2])), '*', unpack(ARGV, 4))
if tonumber(ARGV[3]) > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3]) end
return 1
"""
)

# KEYS: stream, retry set. ARGV: group, entry id, delay ms, member (netstrings of the fields).
RETRY = (
    NOW
    + """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return 1
"""
)

# KEYS: stream, retry set. ARGV: most to move, max age ms. Returns {moved, ms to the next due or -1}.
# ZRANGEBYSCORE, XADD and ZREM in one script: two replicas never both move one entry.
MOVE_DUE = (
    NOW
    + """
local minid = string.format('%.0f', now - tonumber(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local fields, pos = {}, 1
  while pos <= #member do
    local colon = string.find(member, ':', pos, true)
    local n = tonumber(string.sub(member, pos, colon - 1))
    fields[#fields + 1] = string.sub(member, colon + 1, colon + n)
    pos = colon + n + 1
  end
  redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', unpack(fields))
  redis.call('ZREM', KEYS[2], member)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, math.max(0, tonumber(nxt[2]) - now)} end
return {#due, -1}
"""
)

# KEYS: stream, dead-letter stream. ARGV: group, entry id, max age ms, max length, fields...
DEAD = (
    NOW
    + """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
redis.call('XTRIM', KEYS[2], 'MINID', '~', string.format('%.0f', now - tonumber(ARGV[3])))
return 1
"""
)

# KEYS: stream. ARGV: group, consumer, entry id[, idle ms].
# Only while this consumer still owns the entry (a reclaimed one is not taken back).
# Without idle: a heartbeat (its idle time starts again). With: a release, the entry looks
# idle that long, so the next XAUTOCLAIM of any replica takes it.
# JUSTID: neither counts as a delivery.
CLAIM_OWN = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
if ARGV[4] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
return 1
"""

# KEYS: stream. ARGV: group, consumer. A consumer that leaves with nothing pending is
# removed from the group (deleting one with pending entries would lose them).
FORGET = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


def netstrings(values: list[bytes]) -> bytes:
    """`<len>:<bytes>` each: what MOVE_DUE splits back (Lua's cmsgpack refuses binary values)."""
    return b"".join(b"%d:%s" % (len(value), value) for value in values)


def unnetstrings(data: bytes) -> list[bytes]:
    values, pos = [], 0
    while pos < len(data):
        colon = data.index(b":", pos)
        size = int(data[pos:colon])
        values.append(data[colon + 1 : colon + 1 + size])
        pos = colon + 1 + size
    return values
