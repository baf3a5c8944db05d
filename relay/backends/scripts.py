"""The Lua scripts cluster mode runs in Redis, each one atomic step.

Keys of one room share the hash tag ``{room}``: ``relay:{room}:seq`` (its last offset),
``relay:{room}:log`` (its history, a stream whose entry ids are ``<offset>-0``, each with the
packet ``p`` and the time ``t`` in ms), ``relay:{room}:epoch`` and ``relay:{room}:members``
(sid -> member JSON). A room's channel ``relay:{room}:ch`` carries its traffic as
``"<offset> <epoch> <node> <skip> <packet>"`` (offset 0 and epoch ``-``: a presence event,
which has no place in the room's order; ``skip``: the sid excluded, or ``-``).

Sessions waiting for recovery (:mod:`relay.backends.handover`): ``relay:held`` maps a sid not
live anywhere to ``"<node> <pid>"`` (node ``-``: saved in Redis), and a user's hash marks such a
sid ``=``; ``relay:session:<pid>`` (a hash) and ``relay:session:<pid>:p`` (its packets) hold a
saved session until its recovery window ends; ``relay:{room}:saved`` lists the pids of the
sessions saved from a room (its presence events are appended to them). Session keys are not per
room (no hash tag).
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

#: Appending a packet to a saved session (Lua, shared): ``keep(pid, packet, most packets, most
#: bytes)`` appends within the session's bounds and returns true; past them the session is
#: forgotten (as a node forgets one that missed too much), and a session gone returns false.
_KEEP = """
local function keep(pid, packet, maxn, maxb)
  local key = 'relay:session:' .. pid
  local n = redis.call('HGET', key, 'n')
  if not n then return false end
  local size = tonumber(redis.call('HGET', key, 'bytes')) + string.len(packet)
  if tonumber(n) + 1 > tonumber(maxn) or size > tonumber(maxb) then
    local sid = redis.call('HGET', key, 'sid')
    redis.call('DEL', key, key .. ':p')
    if sid then redis.call('HDEL', 'relay:held', sid) end
    return false
  end
  redis.call('RPUSH', key .. ':p', packet)
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then redis.call('PEXPIRE', key .. ':p', ttl) end
  redis.call('HSET', key, 'n', tonumber(n) + 1, 'bytes', size)
  return true
end
"""

#: What a direct message does for a connection that is not live (Lua, shared by the two DIRECT
#: scripts): ``held`` is its ``relay:held`` value, ``"<node> <pid>"``. Held on another node:
#: that node collects it (a publish on its channel; not counted as delivered). Saved in Redis
#: (node ``-``): it is appended to the saved session (``keep``). Held here: the caller's node
#: collected it already.
_STASH = (
    _KEEP
    + """
local function stash(heldkey, sid, held, here, packet, maxn, maxb)
  local node, pid = string.match(held, '^(%S+) (%S+)$')
  if not node then return end
  if node == '-' then
    if not keep(pid, packet, maxn, maxb) then redis.call('HDEL', heldkey, sid) end
  elseif node ~= here then
    redis.call('PUBLISH', 'relay:node:' .. node, sid .. ' ' .. packet)
  end
end
"""
)

#: A presence event: KEYS the room's saved sessions (``relay:{room}:saved``, pids); ARGV the
#: room's channel, the channel message, the packet, most packets and bytes of a saved session.
#: Publishes it, and appends the packet to every session saved from the room (those gone are
#: taken out of the set).
PRESENCE = (
    _KEEP
    + """
redis.call('PUBLISH', ARGV[1], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local kept = 0
for _, pid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if keep(pid, ARGV[3], ARGV[4], ARGV[5]) then
    kept = kept + 1
  else
    redis.call('SREM', KEYS[1], pid)
  end
end
return kept
"""
)

#: KEYS the user's hash (sid -> node, or ``=`` for a connection not live: see ``relay:held``),
#: relay:held; ARGV this node, packet, most packets and bytes of a saved session. Publishes to
#: every other node holding some of the user's live connections ``"<sid>,<sid> <packet>"``;
#: returns how many connections those publishes reached (a node that hears nothing is dead: not
#: counted). Sessions waiting to be recovered get it too (``stash``), uncounted.
DIRECT_USER = (
    _STASH
    + """
local all = redis.call('HGETALL', KEYS[1])
local by, n = {}, {}
for i = 1, #all, 2 do
  local sid, node = all[i], all[i + 1]
  if node == '=' then
    local held = redis.call('HGET', KEYS[2], sid)
    if held then
      stash(KEYS[2], sid, held, ARGV[1], ARGV[2], ARGV[3], ARGV[4])
    else
      redis.call('HDEL', KEYS[1], sid)
    end
  elseif node ~= ARGV[1] then
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
)

#: KEYS the connections hash (sid -> "node user"), relay:held; ARGV sid, this node, packet, most
#: packets and bytes of a saved session. Returns 1 when the node holding the live sid heard it,
#: else 0 (unknown sid, a dead node, or a session waiting to be recovered: ``stash``).
DIRECT_SID = (
    _STASH
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then
  local held = redis.call('HGET', KEYS[2], ARGV[1])
  if held then stash(KEYS[2], ARGV[1], held, ARGV[2], ARGV[3], ARGV[4], ARGV[5]) end
  return 0
end
local node = string.match(v, '^(%S+)')
if node == ARGV[2] then return 0 end
if redis.call('PUBLISH', 'relay:node:' .. node, ARGV[1] .. ' ' .. ARGV[3]) > 0 then return 1 end
return 0
"""
)

#: A session saved for another node to take over (relay.backends.handover). KEYS the session's
#: hash, its packet list, relay:held, its pid key, this node's sids, the user's hash; ARGV sid,
#: user ('' for none), rooms (JSON), ttl ms, pid, reply channel ('' for none), reply, bytes,
#: then the packets in order. The hash gets sid, user, rooms, n and bytes; both keys expire with
#: the session; the sid is marked saved (``- <pid>``) for direct messages, which append to it.
SAVE = """
redis.call('DEL', KEYS[1], KEYS[2])
local n = #ARGV - 8
redis.call('HSET', KEYS[1], 'sid', ARGV[1], 'user', ARGV[2], 'rooms', ARGV[3], 'n', n,
  'bytes', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if n > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 9))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[3], ARGV[1], '- ' .. ARGV[5])
for room, _ in pairs(cjson.decode(ARGV[3])) do
  local saved = 'relay:{' .. room .. '}:saved'
  redis.call('SADD', saved, ARGV[5])
  if redis.call('PTTL', saved) < tonumber(ARGV[4]) then redis.call('PEXPIRE', saved, ARGV[4]) end
end
redis.call('DEL', KEYS[4])
redis.call('SREM', KEYS[5], ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[6], ARGV[1], '=') end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return n
"""

#: Take over a saved session. KEYS its hash, its packet list, relay:held, its pid key, this
#: node's sids; ARGV the reconnecting user ('' for none), this node, pid. Returns {1, sid,
#: rooms, packets, ms left} and marks the sid held here (direct messages come to this node
#: meanwhile); else {0, the node holding it ('' for none)}: not saved (yet), or saved for
#: another user (left alone).
CLAIM = """
local sid = redis.call('HGET', KEYS[1], 'sid')
if not sid then return {0, redis.call('GET', KEYS[4]) or ''} end
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return {0, ''} end
local rooms = redis.call('HGET', KEYS[1], 'rooms')
local packets = redis.call('LRANGE', KEYS[2], 0, -1)
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
for room, _ in pairs(cjson.decode(rooms)) do
  redis.call('SREM', 'relay:{' .. room .. '}:saved', ARGV[3])
end
redis.call('HSET', KEYS[3], sid, ARGV[2] .. ' ' .. ARGV[3])
redis.call('SADD', KEYS[5], sid)
return {1, sid, rooms, packets, ttl}
"""
