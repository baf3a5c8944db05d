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

Keys of the whole cluster (one Redis, or a primary with replicas, as the README says: these,
and the trim below, reach outside a room's hash slot) index its rooms: ``relay:rooms``, a
sorted set of the rooms with members (all scored 0, so it pages by name), and
``relay:rooms:kept``, every room with members or history, scored with the time (Redis's, in
ms) until which its history keeps it (:data:`OCCUPIED` while it has members); its size is what
``RELAY_MAX_ROOMS`` bounds. A room's first member and its last are decided by the script that
adds or removes it (:data:`JOIN`, :data:`ADD_MEMBER`, :data:`LEAVE`), so a cluster reports
``room_occupied`` and ``room_vacated`` once.

With ``RELAY_HISTORY_MAX_BYTES`` set, ``relay:history:bytes`` scores every room with the bytes
of the packets its stream holds and ``relay:history:total`` sums them (the stream is then
trimmed to ``RELAY_HISTORY_SIZE`` entry by entry, not by XADD's MAXLEN, so the bytes stay
known). A publish that takes the total past the bound trims the biggest room's oldest entry,
and again, until it is under (the memory core's common cap, reached one entry at a time; the
biggest room's stream is reached by its name, outside the script's keys). A stream that
expired is found out, and its bytes forgotten, when its entry in ``relay:rooms:kept`` expires,
when its room is published to again or vacated, or when it is the biggest.
"""

from __future__ import annotations

#: the score of a room with members in ``relay:rooms:kept`` (beyond any history's expiry)
OCCUPIED = 9_000_000_000_000_000

#: Lua the room scripts share: Redis's time, and the rooms kept (see the module's docstring).
ROOMS_LUA = (
    f"local OCCUPIED = '{OCCUPIED}'\n"
    + """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function kept(key, room, now)
  local score = redis.call('ZSCORE', key, room)
  return score ~= false and tonumber(score) > now
end
local function forget_bytes(bytes, total, room)
  local held = redis.call('ZSCORE', bytes, room)
  if held then
    redis.call('DECRBY', total, math.floor(tonumber(held)))
    redis.call('ZREM', bytes, room)
  end
end
local function expire(key, bytes, total, now)
  local gone = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
  for _, room in ipairs(gone) do
    redis.call('ZREM', key, room)
    forget_bytes(bytes, total, room)
  end
end
local function full(key, bytes, total, now, most)
  if most <= 0 then return false end
  expire(key, bytes, total, now)
  return redis.call('ZCARD', key) >= most
end
local function pop_oldest(log, bytes, total, room)
  local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #oldest == 0 then return false end
  local size = #oldest[1][2][2]
  redis.call('XDEL', log, oldest[1][1])
  if tonumber(redis.call('ZINCRBY', bytes, -size, room)) <= 0 then
    redis.call('ZREM', bytes, room)
  end
  redis.call('DECRBY', total, size)
  return true
end
local function trim(bytes, total, most)
  for _ = 1, 10000 do
    if tonumber(redis.call('GET', total) or '0') <= most then return end
    local top = redis.call('ZREVRANGE', bytes, 0, 0)
    if #top == 0 then
      redis.call('SET', total, 0)
      return
    end
    local log = 'relay:{' .. top[1] .. '}:log'
    if not pop_oldest(log, bytes, total, top[1]) then forget_bytes(bytes, total, top[1]) end
  end
end
local function vacate(rooms, kept_key, log, room, bytes, total)
  redis.call('ZREM', rooms, room)
  local ttl = redis.call('PTTL', log)
  if ttl > 0 then
    redis.call('ZADD', kept_key, now_ms() + ttl, room)
  else
    redis.call('ZREM', kept_key, room)
    forget_bytes(bytes, total, room)
  end
end
"""
)

#: KEYS seq, log, epoch, kept, history bytes, history total; ARGV head, tail, new epoch, maxlen,
#: log ttl ms, meta ttl ms, channel, ts, node, skip (the sid excluded, or '-'), room, most
#: rooms, most history bytes (0: no bound). The offset, the history entry and the fan-out are
#: one step: no other publish can come between, so the channel carries the room's messages
#: in offset order. Returns {offset, epoch}, or {-1, rooms kept} when the room would be a new
#: one past the most rooms (nothing is published).
PUBLISH = """
local keep = tonumber(ARGV[4]) > 0
local now = 0
if keep then
  now = now_ms()
  local most_bytes = tonumber(ARGV[13])
  if most_bytes > 0 then expire(KEYS[4], KEYS[5], KEYS[6], now) end
  if not kept(KEYS[4], ARGV[11], now)
      and full(KEYS[4], KEYS[5], KEYS[6], now, tonumber(ARGV[12])) then
    return {-1, redis.call('ZCARD', KEYS[4])}
  end
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then redis.call('SET', KEYS[3], ARGV[3], 'NX') end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
end
local packet = ARGV[1] .. seq .. ARGV[2]
if keep then
  local id = seq .. '-0'
  local most_bytes = tonumber(ARGV[13])
  if most_bytes > 0 then
    if redis.call('EXISTS', KEYS[2]) == 0 then forget_bytes(KEYS[5], KEYS[6], ARGV[11]) end
    redis.call('XADD', KEYS[2], id, 'p', packet, 't', ARGV[8], 's', ARGV[10])
    redis.call('ZINCRBY', KEYS[5], #packet, ARGV[11])
    redis.call('INCRBY', KEYS[6], #packet)
    while redis.call('XLEN', KEYS[2]) > tonumber(ARGV[4]) do
      pop_oldest(KEYS[2], KEYS[5], KEYS[6], ARGV[11])
    end
    trim(KEYS[5], KEYS[6], most_bytes)
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id, 'p', packet, 't', ARGV[8], 's', ARGV[10])
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  local till = now + tonumber(ARGV[5])
  local score = redis.call('ZSCORE', KEYS[4], ARGV[11])
  if not score or tonumber(score) < till then redis.call('ZADD', KEYS[4], till, ARGV[11]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
local head = seq .. ' ' .. epoch .. ' ' .. ARGV[9] .. ' ' .. ARGV[10] .. ' '
redis.call('PUBLISH', ARGV[7], head .. packet)
return {seq, epoch}
"""

#: KEYS seq, log, epoch, members, rooms, kept, history bytes, history total; ARGV new epoch,
#: meta ttl ms, since (-1: none), sid ('' for none), member JSON, most entries, the client's
#: epoch ('' for none), room, most rooms (0: no bound). Returns {last offset, epoch, first
#: offset kept (0: none), members, entries after since, since as used, 1 if the member is the
#: room's first else 0}, or {-1, rooms kept} when the room would be a new one past the most
#: rooms. The epoch is made here for a room that has none yet. A since ahead of the room, or
#: from another epoch, reads the whole history (recovered false: relay.backends.cluster).
JOIN = """
local first_member = 0
if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[4]) == 0
    and redis.call('HLEN', KEYS[4]) == 0 then
  local now = now_ms()
  if not kept(KEYS[6], ARGV[8], now)
      and full(KEYS[6], KEYS[7], KEYS[8], now, tonumber(ARGV[9])) then
    return {-1, redis.call('ZCARD', KEYS[6])}
  end
  first_member = 1
  redis.call('ZADD', KEYS[5], 0, ARGV[8])
  redis.call('ZADD', KEYS[6], OCCUPIED, ARGV[8])
end
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
return {seq, epoch, first, count, entries, since, first_member}
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

#: KEYS the connections hash, relay:held, this node's sids; ARGV this node, ``held`` or
#: ``gone``, then sids not connected to this node (it tidies up after an outage:
#: relay.backends.cluster). The connections hash stops naming this node for each; a ``gone``
#: sid (no session waits for it here either) is also taken out of the node's sids, and its
#: user's hash and relay:held stop naming this node for it.
FORGET = """
local node, gone = ARGV[1], ARGV[2] == 'gone'
for i = 3, #ARGV do
  local sid = ARGV[i]
  local v = redis.call('HGET', KEYS[1], sid)
  local owner, user = nil, ''
  if v then owner, user = string.match(v, '^(%S+) ?(.*)$') end
  if owner == node then redis.call('HDEL', KEYS[1], sid) end
  if gone then
    redis.call('SREM', KEYS[3], sid)
    local held = redis.call('HGET', KEYS[2], sid)
    if held and string.match(held, '^(%S+)') == node then redis.call('HDEL', KEYS[2], sid) end
    if owner == node and user ~= '' and redis.call('HGET', 'relay:user:' .. user, sid) == node then
      redis.call('HDEL', 'relay:user:' .. user, sid)
    end
  end
end
return 0
"""

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

#: KEYS members, rooms, kept, log, history bytes, history total; ARGV sid, room. Removes the
#: member; returns 0 when it was not there, 1 when the room still has members, 2 when it was
#: the last (the room is vacated: out of the rooms with members, kept while its history lives).
LEAVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HLEN', KEYS[1]) > 0 then return 1 end
vacate(KEYS[2], KEYS[3], KEYS[4], ARGV[2], KEYS[5], KEYS[6])
return 2
"""

#: KEYS members, rooms, kept; ARGV sid, member JSON, room. Adds the member without a join (a
#: recovered connection); returns 1 when it is the room's first, else 0.
ADD_MEMBER = """
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if added == 1 and redis.call('HLEN', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[3])
  redis.call('ZADD', KEYS[3], OCCUPIED, ARGV[3])
  return 1
end
return 0
"""

#: KEYS rooms' members hashes. Returns how many members each has (one page of GET /api/v1/rooms).
COUNTS = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HLEN', key) end
return out
"""

# (the scripts that call ROOMS_LUA's functions begin with it)
PUBLISH, JOIN, LEAVE, ADD_MEMBER = (
    ROOMS_LUA + source for source in (PUBLISH, JOIN, LEAVE, ADD_MEMBER)
)
