"""The Lua scripts cluster mode runs in Redis, each one atomic step.

Keys of one room share the hash tag ``{room}``: ``relay:{room}:seq`` (its last offset),
``relay:{room}:log`` (its history, a stream whose entry ids are ``<offset>-0``, each with the
packet ``p`` and the time ``t`` in ms), ``relay:{room}:epoch`` and ``relay:{room}:members``
(sid -> member JSON). A room's channel ``relay:{room}:ch`` carries its traffic as
``"<offset> <epoch> <node> <skip> <packet>"`` (offset 0 and epoch ``-``: a presence event,
which has no place in the room's order; ``skip``: the sid excluded, or ``-``).
"""

from __future__ import annotations

#: KEYS seq, log, epoch; ARGV head, tail, new epoch, maxlen, log ttl ms, meta ttl ms, channel,
#: ts, node, skip (the sid excluded, or '-'). The offset, the history entry and the fan-out
#: are one step: no other publish can come between, so the channel carries the room's
#: messages in offset order.
PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then redis.call('SET', KEYS[3], ARGV[3], 'NX') end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
end
local packet = ARGV[1] .. seq .. ARGV[2]
if tonumber(ARGV[4]) > 0 then
  local id = seq .. '-0'
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id, 'p', packet, 't', ARGV[8], 's', ARGV[10])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
local head = seq .. ' ' .. epoch .. ' ' .. ARGV[9] .. ' ' .. ARGV[10] .. ' '
redis.call('PUBLISH', ARGV[7], head .. packet)
return {seq, epoch}
"""

#: KEYS seq, log, epoch, members; ARGV new epoch, meta ttl ms, since (-1: none), sid ('' for
#: none), member JSON, most entries, the client's epoch ('' for none). Returns {last offset,
#: epoch, first offset kept (0: none), members, entries after since, since as used}. The epoch
#: is made here for a room that has none yet. A since ahead of the room, or from another
#: epoch, reads the whole history (recovered false: relay.backends.cluster).
JOIN = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[2])
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], ARGV[4], ARGV[5]) end
local count = redis.call('HLEN', KEYS[4])
local first = 0
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local entries = {}
local since = tonumber(ARGV[3])
if since > seq or (ARGV[7] ~= '' and ARGV[7] ~= epoch) then since = 0 end
if since >= 0 then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', ARGV[6])
end
return {seq, epoch, first, count, entries, since}
"""

#: KEYS seq, log, epoch; ARGV the epoch a node follows, the offset it delivered last, new
#: epoch, meta ttl ms. A Redis that came back behind what a node delivered in the same epoch
#: (restored from an older snapshot) would hand out those offsets again: the room's data is
#: dropped and its epoch made new, once (a node that comes later finds the epoch changed).
#: Returns {last offset, epoch}.
ROLLBACK = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('GET', KEYS[3]) == ARGV[1] and seq < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  seq = 0
end
return {seq, redis.call('GET', KEYS[3])}
"""

#: KEYS the user's hash (sid -> node); ARGV this node, packet. Publishes to every other node
#: holding some of the user's connections ``"<sid>,<sid> <packet>"``; returns how many
#: connections those publishes reached (a node that hears nothing is dead: not counted).
DIRECT_USER = """
local all = redis.call('HGETALL', KEYS[1])
local by, n = {}, {}
for i = 1, #all, 2 do
  local sid, node = all[i], all[i + 1]
  if node ~= ARGV[1] then
    by[node] = (by[node] and (by[node] .. ',') or '') .. sid
    n[node] = (n[node] or 0) + 1
  end
end
local delivered = 0
for node, sids in pairs(by) do
  if redis.call('PUBLISH', 'relay:node:' .. node, sids .. ' ' .. ARGV[2]) > 0 then
    delivered = delivered + n[node]
  end
end
return delivered
"""

#: KEYS the connections hash (sid -> "node user"); ARGV sid, this node, packet. Returns 1 when
#: the node holding the sid heard it, else 0 (unknown sid, or a dead node).
DIRECT_SID = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local node = string.match(v, '^(%S+)')
if node == ARGV[2] then return 0 end
if redis.call('PUBLISH', 'relay:node:' .. node, ARGV[1] .. ' ' .. ARGV[3]) > 0 then return 1 end
return 0
"""
