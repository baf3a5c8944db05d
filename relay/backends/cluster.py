"""Cluster mode: relay processes sharing one Redis behave as one relay.

Theory of operation
-------------------
Each process (a *node*) keeps its own connections exactly as the memory core does (the local
registry, the transport, recovery); Redis holds what the nodes share, in the keys described
in :mod:`relay.backends.scripts`.

- **Publish** is one Lua script: the room's next offset, the history entry (a stream entry with
  id ``<offset>-0``, trimmed to ``RELAY_HISTORY_SIZE``) and the PUBLISH to the room's channel.
  Redis runs scripts one at a time, so the channel carries a room's messages in offset order.
  The ack waits for the script: a publish that gets no offset is answered ``unavailable``.
- **Fan-out**: a node subscribes to a room's channel while it has members there, and only then;
  a broadcast crosses Redis once per node with members. Every node, the publisher's included,
  delivers from the channel through one ordered path per room (a :class:`Feed`): the offset
  after the last delivered goes out at once (through the same ``transport.send_room`` as in
  memory); an older one is a duplicate and is dropped; a later one waits while the missing
  ones are read from the stream (a gap: a lost subscription, a reconnect).
- **Join** subscribes first (and waits for Redis to confirm), then reads in one script the
  room's offset, epoch and history after ``since``; the node's feed is then brought level with
  what was read (or what was read is extended to what the feed delivered), and in one
  synchronous step the joiner gets the replay and becomes a member: the next message it gets
  live is the one after the replay's last.
- **Epochs**: a room's epoch is made (a random string) when it first gets a member or a
  message, and lives as long as its offsets: a Redis that lost its data makes new ones.
- **Limits**: ``RELAY_MAX_ROOMS`` and ``RELAY_HISTORY_MAX_BYTES`` hold for the cluster: the
  publish and join scripts count the rooms kept and the bytes of history in Redis, refuse a
  new room past the first (``unavailable``) and trim the biggest room past the second
  (:mod:`relay.backends.scripts`).
- **History age** (``RELAY_HISTORY_TTL``): entries carry their time and are filtered on read;
  the stream itself expires when its room has been quiet that long (its offset and epoch live a
  day, so a quiet room keeps counting where it was).
- **Unicast**: ``relay:conns`` maps every sid to its node (and user), ``relay:user:{user}`` a
  user's sids to their nodes; a message for another node goes on its channel,
  ``relay:node:<id>``, once per node, with the sids it is for. ``delivered`` counts the
  connections on nodes that heard it. A new connection's sid is written there (and Redis has
  answered) before its CONNECT is answered (:meth:`ClusterRelay.reserve`): once a client knows
  it is connected, a direct from any node reaches it; one that comes while the CONNECT is
  still unanswered waits for it (an :class:`Arriving`).
- **Presence**: ``relay:{room}:members`` maps sids to members (with their node), so counts and
  lists are cluster-wide; presence events travel on the room channel, outside the order.
- **Nodes** refresh a heartbeat key every third of ``RELAY_NODE_TIMEOUT``; a node that finds
  another's expired takes a lock (SET NX) and removes the dead node's connections and members,
  announcing their leaves once.
- **Recovery across nodes**: a dropped connection's session stays on its node, which tells
  Redis where it is (``relay:pid:<pid>``, ``relay:held``); a reconnect landing elsewhere has it
  handed over through Redis, and a node stopped with SIGTERM saves every session there first
  (:mod:`relay.backends.handover`). A killed node's sessions are lost: its clients rejoin with
  ``since``.
- **The HTTP API** answers for the cluster: ``GET /api/v1/rooms`` pages ``relay:rooms`` (the
  rooms with members, kept by the scripts that add and remove members) and counts each page's
  members in one script; a connection held by another node is asked about, or ended, on that
  node's channel (``?<n> <node> get|end <sid>``), and the answer comes back on the asker's
  (``!<n> <json>``) once it is done; a node that does not answer within
  :data:`ASK_TIMEOUT_S` is ``unavailable``, one that is gone (nobody hears the question) holds
  no connection.
- **Webhooks**: a connection's events (connect, join, leave, publish, disconnect) are reported
  by the node that holds it, once; a room's ``room_occupied`` and ``room_vacated`` by the node
  whose script in Redis added the room's first member or removed its last (JOIN, ADD_MEMBER,
  LEAVE: :mod:`relay.backends.scripts`), so once for the cluster. A dead node's leaves and
  disconnects, and the rooms they vacate, are reported by the node that reaps it.
- **Faults**: see :mod:`relay.backends.redis`. While Redis is unavailable, ``/healthz`` is 503,
  publishes, joins and presence are ``unavailable``, and what needs no Redis (a direct to a
  connection on this node, leaving) still works. When it is back the node writes its state
  again and fills its feeds' gaps -- in a new epoch too, from its first offset: what other
  nodes published before this one was back went out while its members were members. It also
  takes out of Redis what its connections did that Redis did not hear (leaves and
  disconnects whose writes failed: no ghost members, sids or users), announcing those leaves
  to the members of other nodes that are subscribed again by then (presence events are not
  kept: a member that misses one sees the right list from ``presence``).
- **What a fault may cost** (checked by tests/cluster/test_js_cluster.py): an acked publish
  reaches every member of its room, once, in order. A publish answered ``unavailable`` because
  Redis was known to be down (or refused the connection) was never sent. One answered
  ``unavailable`` because Redis went away, or passed the deadline, while it was on its way, or
  one whose node died before answering, is *in doubt*: Redis may have run it and sent it to the
  subscribed nodes with the answer still unsent; if so it reached every member like any other.
  A Redis that comes back empty (a new epoch) takes with it what a member had not received yet
  (a node's gap that was still being filled, or a publish in flight reaching some nodes only);
  the member sees the epoch change.
- **A Redis that went back** (restored from an older copy: a backup, an RDB snapshot or AOF
  ``everysec`` after a crash) keeps the epoch while its offsets go back, and would hand out
  offsets the nodes already delivered (their feeds would drop the new messages as
  duplicates). A node that finds a room it follows behind its feed, in the same epoch, drops
  the room's offset and history and makes a new epoch (:data:`scripts.ROLLBACK`, once for all
  nodes): for the members it is a Redis that lost the room. After an outage a node takes no
  publish or join before it looked (see ``Bus.reachable``). A room no node follows is not
  looked at: it goes on from the older copy in the same epoch (a join with a ``since`` ahead
  of it answers ``recovered: false``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.backends import scripts
from relay.backends.handover import HELD, Handover, is_pid
from relay.backends.redis import CALL_TIMEOUT_S, Apply, Bus, connect, describe
from relay.core import envelope
from relay.core.auth import Identity
from relay.core.deferred import Deferred
from relay.core.recovery import Session
from relay.core.rooms import Member
from relay.core.service import Relay, Sender
from relay.core.webhooks import Webhooks
from relay.errors import BadRequest, NotFound, RateLimited, RelayError, Unavailable
from relay.settings import Settings
from relay.wire.transport import Transport

log = logging.getLogger("relay.cluster")

#: how long a room's offset and epoch outlive its last message (ms)
META_TTL_MS = 24 * 3600 * 1000
#: messages one feed holds while it fills a gap (past it, the oldest waiting are dropped)
PENDING_MAX = 4096
#: seconds start-up waits for Redis before it says ready anyway (unhealthy until Redis answers)
START_WAIT_S = 5.0
#: seconds a shutdown waits for in-flight work (publishes, joins) before cancelling it
STOP_WAIT_S = 2.0
#: seconds a question to the node holding a connection (the HTTP API's) waits for its answer
ASK_TIMEOUT_S = 5.0
CONNS = "relay:conns"
#: what the node channel's hand-over messages begin with (relay.backends.handover)
HANDOVER_CONTROL = ("?ask ", "?given ", "?none ")
NODES = "relay:nodes"
#: the rooms with members, and the rooms kept (members or history): relay.backends.scripts
ROOMS = "relay:rooms"
KEPT = "relay:rooms:kept"
#: bytes of history by room, and their total (RELAY_HISTORY_MAX_BYTES)
HISTORY_BYTES = "relay:history:bytes"
HISTORY_TOTAL = "relay:history:total"


def _key(room: str, what: str) -> str:
    return f"relay:{{{room}}}:{what}"


def _offset(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


@dataclass(slots=True, eq=False)
class Feed:
    """One room's ordered delivery on this node (see the module's docstring)."""

    room: str
    #: whether ``last`` is known (a join read it); until then arrivals wait in ``pending``
    anchored: bool = False
    epoch: str | None = None
    last: int = 0
    #: offset -> (epoch, skip, packet), waiting for the offsets before it
    pending: dict[int, tuple[str, str | None, str]] = field(default_factory=dict)
    #: joins under way on this node (the feed stays while any is)
    joining: int = 0
    filling: asyncio.Lock = field(default_factory=asyncio.Lock)


class Arriving:
    """Direct messages that came for a reserved sid before its CONNECT was answered."""

    __slots__ = ("confirmed", "packets", "size", "user")

    def __init__(self, user: str | None) -> None:
        self.user = user
        #: Redis answered the sid's registration (else connecting writes it again)
        self.confirmed = False
        self.packets: list[str] = []
        self.size = 0


class ClusterRelay(Relay):
    """The relay core on Redis: see the module's docstring."""

    backend = "Redis cluster"
    moves_sessions = True
    reserves_sids = True

    def __init__(self, settings: Settings, transport: Transport) -> None:
        super().__init__(settings, transport)
        assert settings.redis_url is not None
        self.node = secrets.token_hex(6)
        self.node_channel = f"relay:node:{self.node}"
        client = connect(settings.redis_url, settings.redis_tls_verify)
        self.bus = Bus(client, describe(settings.redis_url), self._on_message, self._on_connect)
        self._publish_script = self.bus.script(scripts.PUBLISH)
        self._join_script = self.bus.script(scripts.JOIN)
        self._direct_user_script = self.bus.script(scripts.DIRECT_USER)
        self._direct_sid_script = self.bus.script(scripts.DIRECT_SID)
        self._presence_script = self.bus.script(scripts.PRESENCE)
        self._leave_script = self.bus.script(scripts.LEAVE)
        self._add_member_script = self.bus.script(scripts.ADD_MEMBER)
        self._counts_script = self.bus.script(scripts.COUNTS)
        self._forget_script = self.bus.script(scripts.FORGET)
        #: questions asked to other nodes (see _ask), by number
        self._asked: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._asks = itertools.count(1)
        #: reserved sids whose CONNECT is not answered yet (reserve, admitted)
        self._arriving: dict[str, Arriving] = {}
        self.feeds: dict[str, Feed] = {}
        #: (sid, room) -> the join of it under way
        self._joins: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: of those, the ones whose result is an answer (_answering)
        self._answers: set[asyncio.Task[Any]] = set()
        #: members being removed from (or added to) Redis: shutdown waits for them
        self._membership: set[asyncio.Task[Any]] = set()
        self.reaped = 0
        #: messages a feed delivered from the stream (gaps), not from the channel
        self.filled = 0
        #: heartbeats sent (each followed by a look for dead nodes)
        self.heartbeats = 0
        # connection state recovery across nodes (relay.backends.handover)
        self.handover = Handover(self)
        self.recovery.ended = self.handover.ended
        self._beat: asyncio.Task[Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.bus.listen_to(self.node_channel)
        self.bus.start()
        self._beat = self.spawn(self._heartbeat(), "relay-node-heartbeat")
        try:
            await asyncio.wait_for(self.bus.ready.wait(), START_WAIT_S)
        except TimeoutError:
            log.warning(
                "Redis (%s) is not answering: starting anyway, unavailable until it does",
                self.bus.where,
            )
        log.info("cluster node %s on %s", self.node, self.bus.where)

    async def stop(self) -> None:
        """Shut down (after the server closed every connection, whose leaves are queued):
        finish in-flight publishes and joins (a while) and the last leaves (each may vacate a
        room, reported to webhooks), save every session waiting for
        recovery in Redis (relay.backends.handover), send what is queued, then take this node
        out of the cluster, so nobody reaps it."""
        if self._beat is not None:
            self._beat.cancel()
        busy = [task for task in self._tasks if task is not self._beat]
        if busy:
            await asyncio.wait(busy, timeout=min(STOP_WAIT_S, self.settings.shutdown_timeout / 4))
        if self._membership:  # (the leaves: each may vacate a room, reported to webhooks)
            await asyncio.wait(self._membership, timeout=CALL_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self.moving:  # (connections still here: kept like those the drain closed)
            for sid in [sid for sid, _ in self.registry.items()]:
                self.disconnect(sid, recoverable=True)
        if self.bus.reachable and self.recovery.enabled:
            saved = self.handover.save_all()
            if saved:
                log.info("saved %d sessions for recovery on other nodes", saved)
        if self.bus.reachable:
            node = self.node
            keys = [f"relay:node:{node}:{what}" for what in ("alive", "sids", "rooms")]
            self.bus.send(lambda pipe: pipe.delete(*keys))
            self.bus.send(lambda pipe: pipe.srem(NODES, node))
            await self.bus.flush()
        await self.bus.stop()

    def health(self) -> dict[str, str]:
        return {"redis": self.bus.state()}

    def spawn(self, job: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``job`` as a task this relay owns (cancelled on stop, failures logged)."""
        task = asyncio.create_task(job, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # (retrieved: an ack nobody asked for raises no warning)
        if exc is not None and not isinstance(exc, RelayError):
            log.error("cluster task failed", exc_info=exc)

    def _later(self, job: Coroutine[Any, Any, Any]) -> Deferred:
        return Deferred(self._answering(self.spawn(job)))

    def _answering(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """``task``, whose result is an answer (an ack, an API response): shutdown waits for it
        before it closes the connections (:meth:`finish`)."""
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        return task

    async def finish(self, timeout: float) -> None:
        # (new events keep coming until the connections close: wait until none is in flight)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._answers:
            left = deadline - loop.time()
            if left <= 0:
                log.warning("shutting down with %d answers unsent", len(self._answers))
                return
            await asyncio.wait(set(self._answers), timeout=left)

    def _need_redis(self) -> None:
        if not self.bus.reachable:
            raise Unavailable(f"Redis is unavailable ({self.bus.state()})")

    # -- connections ---------------------------------------------------------------------------

    def connect(
        self, sid: str, eio_sid: str, user: str | None, identity: Identity | None = None
    ) -> Member:
        member = super().connect(sid, eio_sid, user, identity)
        arriving = self._arriving.get(sid)
        if arriving is None or not arriving.confirmed:
            self._write_connection(sid, user)
        return member

    async def reserve(self, user: str | None) -> str:
        """A new sid, written to ``relay:conns`` (and the user's hash) before its CONNECT is
        answered, so a direct from any node counts and reaches it once its client knows it
        is connected. While Redis is unavailable it is not waited for: connecting writes it,
        and the node writes all its connections again when Redis is back."""
        sid = secrets.token_urlsafe(12)
        if not self.bus.reachable:
            return sid
        arriving = self._arriving[sid] = Arriving(user)
        *writes, last = self._connection_writes(sid, user)
        for write in writes:
            self.bus.send(write)
        try:
            await self.bus.ask(last)
        except Unavailable:
            pass  # (written again when connecting)
        else:
            arriving.confirmed = True
        return sid

    def release(self, sid: str, user: str | None) -> None:
        if self._arriving.pop(sid, None) is not None:
            self._erase_connection(sid, user)

    def admitted(self, sid: str) -> None:
        arriving = self._arriving.pop(sid, None)
        if arriving is not None:
            for packet in arriving.packets:
                self.transport.send(sid, packet)

    def _write_connection(self, sid: str, user: str | None) -> None:
        """Tell Redis ``sid`` (of ``user``) is connected here."""
        for write in self._connection_writes(sid, user):
            self.bus.send(write)

    def _connection_writes(self, sid: str, user: str | None) -> list[Apply]:
        """The writes that tell Redis ``sid`` is connected here; the one naming it in
        ``relay:conns`` last (the writer sends in order: its answer is all of theirs)."""
        node = self.node
        writes: list[Apply] = [lambda pipe: pipe.sadd(f"relay:node:{node}:sids", sid)]
        if user is not None:
            writes.append(lambda pipe: pipe.hset(f"relay:user:{user}", sid, node))
        writes.append(lambda pipe: pipe.hset(CONNS, sid, f"{node} {user or ''}"))
        return writes

    def _erase_connection(self, sid: str, user: str | None) -> None:
        """Tell Redis ``sid`` (of ``user``) is gone from this node, and no session waits."""
        bus, node = self.bus, self.node
        bus.send(lambda pipe: pipe.hdel(CONNS, sid))
        bus.send(lambda pipe: pipe.srem(f"relay:node:{node}:sids", sid))
        if user is not None:
            bus.send(lambda pipe: pipe.hdel(f"relay:user:{user}", sid))

    def disconnect(self, sid: str, recoverable: bool = False) -> None:
        member = self.registry.get(sid)
        rooms = sorted(member.rooms) if member is not None else []
        super().disconnect(sid, recoverable)
        if member is None:
            return
        session = self.recovery.session_of(sid) if recoverable else None
        if session is not None:
            self.bus.send(lambda pipe: pipe.hdel(CONNS, sid))
            self.handover.held(session)  # (its sid and user stay known, as a session's)
        else:
            self._erase_connection(sid, member.user)
        for room in rooms:
            self._left(room, member)

    async def fetch_session(self, pid: Any, identity: Identity) -> Session | None:
        if not is_pid(pid) or not self.recovery.enabled or not self.bus.reachable:
            return None
        return await self.handover.fetch(pid, identity)

    def abandon(self, session: Session) -> None:
        if session.offsets is None:
            super().abandon(session)
        else:
            self.handover.abandon(session)

    def resume(self, session: Any, eio_sid: str, identity: Identity) -> Member:
        if session.offsets is not None:
            return self._resume_moved(session, eio_sid, identity)
        member = super().resume(session, eio_sid, identity)
        self._write_connection(member.sid, member.user)
        for room in member.rooms:
            self._write_member(room, member)
            if room not in self.feeds:
                self.spawn(self._follow(room))
        return member

    def _resume_moved(self, session: Session, eio_sid: str, identity: Identity) -> Member:
        """Bring back ``session``, brought from another node: same sid, what it collected
        there, then each room rejoined from the last offset it got (relay.backends.handover)."""
        sid = session.sid
        assert session.offsets is not None
        self.recovery.adopt(sid, session.pid)
        self.transport.attach(sid, eio_sid)
        self._watch_expiry(sid, identity)
        member = self.registry.connect(sid, identity.user, identity)
        member.connected_at = self._clock()
        if self.hooks is not None:
            self.hooks.connected(member)
        self._write_connection(member.sid, member.user)
        self.bus.send(lambda pipe: pipe.hdel(HELD, sid))
        for packet in [*session.packets, *self.handover.arrived(session)]:
            self.transport.send(sid, packet)
        for room, (epoch, offset) in session.offsets.items():
            key = (sid, room)
            since = offset if offset >= 0 and epoch else None
            job = self._join(member, room, since, epoch or None, self._joins.get(key), True)
            self._track_join(key, self.spawn(job))
        return member

    def _track_join(self, key: tuple[str, str], task: asyncio.Task[Any]) -> None:
        self._joins[key] = task
        task.add_done_callback(
            lambda done: self._joins.pop(key, None) if self._joins.get(key) is done else None
        )

    async def _follow(self, room: str) -> None:
        """Subscribe to ``room`` and anchor its feed (a recovered member is in it again)."""
        feed = self._feed(room)
        feed.joining += 1
        try:
            await self.bus.subscribe(_key(room, "ch"))
            reply = await self._call_join(room, -1, None, None)
            self._anchor(feed, int(reply[0]), reply[1])
        finally:
            feed.joining -= 1
            self._maybe_unfollow(room)

    # -- rooms ---------------------------------------------------------------------------------

    def _feed(self, room: str) -> Feed:
        feed = self.feeds.get(room)
        if feed is None:
            feed = self.feeds[room] = Feed(room)
            node = self.node
            self.bus.send(lambda pipe: pipe.sadd(f"relay:node:{node}:rooms", room))
        return feed

    def _maybe_unfollow(self, room: str) -> None:
        feed = self.feeds.get(room)
        if feed is None or feed.joining or self.registry.occupied(room):
            return
        if self.recovery.holds_room(room):
            return  # a dropped connection of this node collects the room's traffic meanwhile
        del self.feeds[room]
        self.bus.unsubscribe(_key(room, "ch"))
        node = self.node
        self.bus.send(lambda pipe: pipe.srem(f"relay:node:{node}:rooms", room))

    def _write_member(self, room: str, member: Member) -> None:
        keys = [_key(room, "members"), ROOMS, KEPT]
        args = [member.sid, self._member_json(member), room]
        reply = self.bus.ask(self._add_member_script.run(keys, args))
        self._membership_task(self._added(room, member, reply))

    async def _added(self, room: str, member: Member, reply: Awaitable[Any]) -> None:
        if int(await reply) and self.hooks is not None:
            self.hooks.occupied(member.sid, member.user, room)

    def _membership_task(self, job: Coroutine[Any, Any, Any]) -> None:
        task = self.spawn(job)
        self._membership.add(task)
        task.add_done_callback(self._membership.discard)

    def _member_json(self, member: Member) -> str:
        return orjson.dumps({"sid": member.sid, "user": member.user, "node": self.node}).decode()

    def _left(self, room: str, member: Member) -> None:
        # (queued now: before anything a node does once it hears of the leave)
        reply = self._remove_member(room, member.sid, member.user)
        self._membership_task(reply)
        self._maybe_unfollow(room)

    def _remove_member(
        self, room: str, sid: str, user: str | None, report: bool = True
    ) -> Coroutine[Any, Any, bool]:
        """Remove ``sid`` from the room's members in Redis (queued at once); when it was the
        last one, the room is vacated (reported once: only the script that emptied it says
        so). Await the result: whether it was vacated."""
        return self._vacated(self._leave_call(room, sid), room, sid, user, report)

    def _leave_call(self, room: str, sid: str) -> Awaitable[Any]:
        """The LEAVE script for ``sid`` in ``room``, queued at once (its reply: 0 when it was
        not a member, 1 when the room still has members, 2 when it was the last)."""
        keys = [_key(room, "members"), ROOMS, KEPT, _key(room, "log"), HISTORY_BYTES, HISTORY_TOTAL]
        return self.bus.ask(self._leave_script.run(keys, [sid, room]))

    async def _vacated(
        self, reply: Awaitable[Any], room: str, sid: str, user: str | None, report: bool
    ) -> bool:
        vacated = int(await reply) == 2
        if vacated and report and self.hooks is not None:
            self.hooks.vacated(sid, user, room)
        return vacated

    def report_to(self, hooks: Webhooks) -> None:
        super().report_to(hooks)
        hooks.rooms_here = False  # (occupied and vacated are Redis's to say: see _join, _left)

    def join(
        self, sid: str, room: str, since: int | None, epoch: str | None = None
    ) -> dict[str, Any]:
        member = self.member(sid)
        member.identity.check_room(room, "join")
        self.throttle_join(member)
        limit = self.settings.max_rooms_per_connection
        if room not in member.rooms and limit and len(member.rooms) >= limit:
            self.stats["rate_limited"] += 1
            raise RateLimited(
                f"this connection is in {len(member.rooms)} rooms, the most one may be in"
                f" (RELAY_MAX_ROOMS_PER_CONNECTION={limit}); leave one first"
            )
        self._need_redis()
        # a second join of the same room before the first is answered waits for it, and then
        # finds the connection in the room (no second replay), as it would in memory
        key = (sid, room)
        job = self._join(member, room, since, epoch, self._joins.get(key))
        task = self._answering(self.spawn(job))
        self._joins[key] = task
        task.add_done_callback(
            lambda done: self._joins.pop(key, None) if self._joins.get(key) is done else None
        )
        raise Deferred(task)

    async def _call_join(
        self, room: str, since: int, member: Member | None, epoch: str | None
    ) -> list[Any]:
        keys = [_key(room, "seq"), _key(room, "log"), _key(room, "epoch"), _key(room, "members")]
        keys += [ROOMS, KEPT, HISTORY_BYTES, HISTORY_TOTAL]
        args = [
            secrets.token_urlsafe(9),
            META_TTL_MS,
            since,
            member.sid if member is not None else "",
            self._member_json(member) if member is not None else "",
            max(1, self.settings.history_size),
            epoch or "",
            room,
            self.settings.max_rooms,
        ]
        reply: list[Any] = await self.bus.call(self._join_script.run(keys, args))
        if int(reply[0]) < 0:
            raise self._too_many_rooms(reply[1])
        return reply

    def _too_many_rooms(self, held: Any) -> Unavailable:
        limit = self.settings.max_rooms
        return Unavailable(
            f"the cluster holds {held} rooms, its limit (RELAY_MAX_ROOMS={limit}):"
            f" no new room can be made until some are forgotten"
        )

    async def _join(
        self,
        member: Member,
        room: str,
        since: int | None,
        epoch: str | None,
        before: asyncio.Task[Any] | None = None,
        recovering: bool = False,
    ) -> dict[str, Any]:
        """The join of ``room`` (see the module's docstring); ``recovering``: a session moved
        from another node rejoins from ``since``, and replays nothing when that offset is not
        one of the room's (another epoch: live is all there is)."""
        if before is not None:
            await asyncio.wait({before})
        sid = member.sid
        feed = self._feed(room)
        feed.joining += 1
        #: Redis lists the connection as a member, and this node does not yet: a join that
        #: fails from here on takes it out again (no ghost member, counted and listed)
        listed = False
        try:
            await self.bus.subscribe(_key(room, "ch"))
            already = room in member.rooms
            asked = -1 if since is None or already else since
            reply = await self._call_join(room, asked, member, epoch)
            listed = not already
            seq, current, first, count = int(reply[0]), reply[1], int(reply[2]), int(reply[3])
            used, occupies = int(reply[5]), bool(reply[6])
            self._anchor(feed, seq, current)
            cutoff = envelope.now_ms() - int(self.settings.history_ttl * 1000)
            replay: list[tuple[int, str, str | None]] = []
            aged = False
            for entry_id, fields in reply[4]:
                values = dict(zip(fields[::2], fields[1::2], strict=True))
                if int(values.get("t", 0)) < cutoff:
                    aged = True  # (past RELAY_HISTORY_TTL: as if trimmed)
                    continue
                replay.append((_offset(entry_id), values["p"], _skip(values.get("s"))))
            upto = seq
            # bring what was read and what the feed delivered level (unless the room's offsets
            # started again meanwhile: then live is all there is)
            while feed.last != upto and feed.epoch == current:
                if feed.last < upto:
                    await self._fill(feed, upto)
                    if feed.last < upto and feed.epoch == current:
                        raise Unavailable("Redis did not answer while the join read history")
                else:
                    target = feed.last
                    replay.extend(await self._read(room, upto, target))
                    upto = target
            if self.registry.get(sid) is not member:
                if listed:
                    listed = False
                    await self._remove_member(room, sid, member.user, report=False)
                raise BadRequest("the connection closed while joining")
            ack: dict[str, Any] = {"ok": True, "room": room}
            if not already and since is not None and (not recovering or used == since):
                for offset, packet, _ in replay:
                    if offset > used:
                        self.transport.send(sid, packet)
                if used != since or aged:
                    ack["recovered"] = False
                elif first:
                    ack["recovered"] = since + 1 >= first
                else:
                    ack["recovered"] = since >= seq
            listed = False  # (a member here too now: its leave or disconnect removes it)
            if self.registry.join(sid, room):
                self._announce(room, "join", member)
                if self.hooks is not None:
                    self.hooks.joined(member, room, False)
                    if occupies:
                        self.hooks.occupied(sid, member.user, room)
            ack["offset"] = max(upto, feed.last) if feed.epoch == current else seq
            ack["epoch"] = current
            ack["members"] = count
            return ack
        finally:
            if listed:  # (failed after Redis made it a member: Unavailable, or cancelled)
                self._membership_task(self._remove_member(room, sid, member.user, report=False))
            feed.joining -= 1
            self._maybe_unfollow(room)

    def leave(self, sid: str, room: str) -> dict[str, Any]:
        member = self.member(sid)
        joining = self._joins.get((sid, room))
        if joining is not None:  # (it leaves after the join it sent first, as in memory)
            raise self._later(self._leave_after(joining, sid, room))
        was_in = room in member.rooms
        ack = super().leave(sid, room)
        if was_in:
            self._left(room, member)
        return ack

    async def _leave_after(self, joining: asyncio.Task[Any], sid: str, room: str) -> dict[str, Any]:
        await asyncio.wait({joining})
        try:
            return self.leave(sid, room)
        except Deferred as again:  # (joined again meanwhile: after that one, then)
            result: dict[str, Any] = await again.task
            return result

    def presence(self, room: str) -> dict[str, Any]:
        self._need_redis()
        raise self._later(self._presence(room))

    async def _presence(self, room: str) -> dict[str, Any]:
        values = await self.bus.call(lambda pipe: pipe.hvals(_key(room, "members")))
        members = []
        for value in values:
            m = orjson.loads(value)
            members.append({"sid": m["sid"], "user": m["user"]})
        return {"ok": True, "room": room, "members": members}

    def history_epoch(self, room: str) -> str | None:
        # the epoch this node follows the room in (None when it follows it not: the page then
        # names none, as for a room not known)
        feed = self.feeds.get(room)
        return feed.epoch if feed is not None else None

    def history_page(self, room: str, since: int, limit: int) -> list[tuple[int, str]]:
        self._need_redis()
        raise self._later(self._history_page(room, since, limit))

    async def _history_page(self, room: str, since: int, limit: int) -> list[tuple[int, str]]:
        key = _key(room, "log")
        cutoff = envelope.now_ms() - int(self.settings.history_ttl * 1000)
        page: list[tuple[int, str]] = []
        while not page:
            entries = await self._cmd("xrange", key, f"{since + 1}-0", "+", limit)
            if not entries:
                break
            for entry_id, fields in entries:
                since = _offset(entry_id)
                if int(fields.get("t", 0)) < cutoff:
                    continue  # (past RELAY_HISTORY_TTL: the oldest, so read on)
                packet = fields["p"]  # 2["<event>",{envelope}]: event names need no escapes
                page.append((since, packet[packet.index('",') + 2 : -1]))
        return page

    def _announce(self, room: str, action: str, member: Member) -> None:
        super()._announce(room, action, member)
        packet = envelope.event_packet(
            "presence", {"room": room, "action": action, "member": member.as_dict()}
        )
        self._publish_event(room, packet, self.node)

    def _announce_gone(self, room: str, sid: str, user: str | None, origin: str) -> None:
        """The leave of a member this node no longer holds (a dead node's, or one whose leave
        Redis did not hear), to every node's members but ``origin``'s."""
        member = {"sid": sid, "user": user}
        packet = envelope.event_packet(
            "presence", {"room": room, "action": "leave", "member": member}
        )
        self._publish_event(room, packet, origin)

    def _publish_event(self, room: str, packet: str, origin: str) -> None:
        # (sessions saved from the room get it too: relay.backends.handover)
        text = f"0 - {origin} - {packet}"
        keys = [_key(room, "saved")]
        args = [_key(room, "ch"), text, packet, self.recovery.max_packets, self.settings.max_buffer]
        self.bus.send(self._presence_script.run(keys, args))

    # -- publish -------------------------------------------------------------------------------

    def publish(
        self,
        sender: Sender,
        room: str,
        event: str,
        data: Any,
        exclude_self: bool = False,
    ) -> envelope.Message:
        data_json = envelope.encode_data(data, self.settings.max_payload)
        self._need_redis()
        message = envelope.build(
            id=self._ids(),
            room=room,
            event=event,
            sender_sid=sender.sid,
            sender_user=sender.user,
            data_json=data_json,
            offset=0,
            ts=self._clock(),
        )
        packet = message.packet
        cut = packet.rfind('"offset":0,"ts":')
        head, tail = packet[: cut + 9], packet[cut + 10 :]
        skip = sender.sid if exclude_self and sender.sid is not None else "-"
        # a publish sent after a join of the same room that is not answered yet goes after
        # it, so the sender is a member when its message goes out (as in memory)
        joining = self._joins.get((sender.sid, room)) if sender.sid is not None else None
        raise self._later(self._publish(message, head, tail, skip, joining))

    async def _publish(
        self,
        message: envelope.Message,
        head: str,
        tail: str,
        skip: str,
        joining: asyncio.Task[Any] | None = None,
    ) -> dict[str, Any]:
        if joining is not None:
            await asyncio.wait({joining})
        room = message.room
        assert room is not None
        settings = self.settings
        keys = [_key(room, "seq"), _key(room, "log"), _key(room, "epoch")]
        keys += [KEPT, HISTORY_BYTES, HISTORY_TOTAL]
        args = [
            head,
            tail,
            secrets.token_urlsafe(9),
            settings.history_size,
            max(1, int(settings.history_ttl * 1000)),
            META_TTL_MS,
            _key(room, "ch"),
            message.ts,
            self.node,
            skip,
            room,
            settings.max_rooms,
            settings.history_max_bytes,
        ]
        reply = await self.bus.call(self._publish_script.run(keys, args))
        if int(reply[0]) < 0:
            raise self._too_many_rooms(reply[1])
        self.stats["published"] += 1
        return {"ok": True, "id": message.id, "offset": int(reply[0])}

    # -- the ordered path ----------------------------------------------------------------------

    def _on_message(self, channel: str, data: str) -> None:
        if channel == self.node_channel:
            # (sids never start with "?" or "!"): a hand-over's control message, a question
            # from another node's HTTP API ("?<number> ...") or its answer ("!<number> ..."),
            # else a direct message
            if data.startswith(HANDOVER_CONTROL):
                self.handover.control(data)
            elif data[0] in "?!":
                self._on_question(data)
            else:
                self._on_direct(data)
            return
        room = channel[7:-4]  # relay:{<room>}:ch
        feed = self.feeds.get(room)
        if feed is None:
            return
        offset_text, epoch, origin, skip, packet = data.split(" ", 4)
        offset = int(offset_text)
        if offset == 0:  # presence: outside the order, and the origin told its own members
            if origin != self.node:
                self._deliver(room, packet, None)
            return
        self._arrive(feed, offset, epoch, _skip(skip), packet)

    def _arrive(self, feed: Feed, offset: int, epoch: str, skip: str | None, packet: str) -> None:
        if not feed.anchored:
            self._hold(feed, offset, epoch, skip, packet)
            return
        if epoch != feed.epoch:  # the room's offsets started again (Redis lost them, or expiry)
            feed.epoch, feed.last = epoch, 0
            feed.pending.clear()
        if offset <= feed.last:
            return  # a duplicate (a gap filled from the stream, then the late original)
        if offset == feed.last + 1 and not feed.filling.locked():
            self._deliver(feed.room, packet, skip)
            feed.last = offset
            if feed.pending:
                self._drain(feed)
            return
        self._hold(feed, offset, epoch, skip, packet)
        if not feed.filling.locked():
            self.spawn(self._fill(feed, min(feed.pending) - 1))

    def _hold(self, feed: Feed, offset: int, epoch: str, skip: str | None, packet: str) -> None:
        pending = feed.pending
        if len(pending) >= PENDING_MAX:
            log.warning("room %s: %d messages wait for a gap; dropping one", feed.room, PENDING_MAX)
            del pending[min(pending)]
        pending[offset] = (epoch, skip, packet)

    def _drain(self, feed: Feed) -> None:
        pending = feed.pending
        while pending:
            nxt = pending.pop(feed.last + 1, None)
            if nxt is None:
                break
            self._deliver(feed.room, nxt[2], nxt[1])
            feed.last += 1
        for offset in [o for o in pending if o <= feed.last]:
            del pending[offset]

    def _anchor(self, feed: Feed, seq: int, epoch: str) -> None:
        """A join read the room at ``seq``: what the feed holds before that is history."""
        if feed.anchored and feed.epoch == epoch:
            return
        feed.anchored, feed.epoch, feed.last = True, epoch, seq
        held = sorted(feed.pending.items())
        feed.pending.clear()
        for offset, (ep, skip, packet) in held:
            self._arrive(feed, offset, ep, skip, packet)

    def _deliver(self, room: str, packet: str, skip: str | None) -> None:
        registry = self.registry
        sent = self.transport.send_room(
            room, registry.version(room), registry.sids(room), packet, skip
        )
        if self.recovery.waiting:
            self.recovery.to_room(room, packet)
        self.stats["delivered"] += sent

    async def _read(self, room: str, after: int, upto: int) -> list[tuple[int, str, str | None]]:
        """The room's history in ``(after, upto]`` as (offset, packet, skip)."""
        if upto <= after:
            return []
        key = _key(room, "log")
        entries = await self.bus.call(lambda pipe: pipe.xrange(key, f"{after + 1}-0", f"{upto}-0"))
        return [(_offset(i), f["p"], _skip(f.get("s"))) for i, f in entries]

    async def _fill(self, feed: Feed, upto: int) -> None:
        """Deliver the feed's missing offsets up to ``upto`` from the stream, then what waits;
        what the stream no longer holds is skipped (trimmed or expired: gone for everyone)."""
        async with feed.filling:
            while True:
                epoch = feed.epoch
                if feed.last < upto:
                    try:
                        found = await self._read(feed.room, feed.last, upto)
                    except Unavailable:
                        return  # (filled again when Redis is back: _on_connect)
                    if feed.epoch != epoch:
                        return
                    for offset, packet, skip in found:
                        if offset > feed.last:
                            self._deliver(feed.room, packet, skip)
                            feed.last = offset
                            self.filled += 1
                    feed.last = max(feed.last, upto)
                self._drain(feed)
                if not feed.pending:
                    return
                upto = min(feed.pending) - 1  # another gap after what was drained

    # -- unicast -------------------------------------------------------------------------------

    def direct(
        self,
        sender: Sender,
        *,
        to: str | None,
        user: str | None,
        event: str,
        data: Any,
    ) -> tuple[envelope.Message, int]:
        message, delivered = super().direct(sender, to=to, user=user, event=event, data=data)
        if to is not None and delivered:
            return message, delivered  # a connection of this node: no Redis needed
        if not self.bus.reachable:
            if to is not None:
                raise Unavailable(f"Redis is unavailable ({self.bus.state()})")
            return message, delivered  # this node's connections of the user had it
        raise self._later(self._direct(message, to, user, delivered))

    async def _direct(
        self, message: envelope.Message, to: str | None, user: str | None, local: int
    ) -> dict[str, Any]:
        packet, node = message.packet, self.node
        bounds = [self.recovery.max_packets, self.settings.max_buffer]
        script: Any
        if to is not None:
            script, keys = self._direct_sid_script, [CONNS, HELD]
            args: list[Any] = [to, node, packet, *bounds]
        else:
            script, keys = self._direct_user_script, [f"relay:user:{user}", HELD]
            args = [node, packet, *bounds]

        remote = int(await self.bus.call(script.run(keys, args)))
        self.stats["delivered"] += remote
        return {"ok": True, "id": message.id, "delivered": local + remote}

    def _on_direct(self, data: str) -> None:
        sids, _, packet = data.partition(" ")
        registry, transport, arriving = self.registry, self.transport, self._arriving
        for sid in sids.split(","):
            if arriving and sid in arriving:  # (its CONNECT is not answered yet)
                self._hold_arriving(sid, arriving[sid], packet)
            elif registry.get(sid) is not None:
                transport.send(sid, packet)
            elif not self.recovery.to_sid(sid, packet):  # (a session waiting here collects it)
                self.handover.direct(sid, packet)  # (or one on its way here)

    def _hold_arriving(self, sid: str, arriving: Arriving, packet: str) -> None:
        """Keep ``packet`` for ``sid`` until its CONNECT is answered (a window of at most one
        Redis call), within a recovered session's bounds: past them the client would be too
        slow for its own buffer, and what does not fit is dropped (and logged)."""
        size = len(packet)
        if (
            len(arriving.packets) >= self.recovery.max_packets
            or arriving.size + size > self.recovery.max_bytes
        ):
            log.warning("%s: a direct message that came before its CONNECT was dropped", sid)
            return
        arriving.packets.append(packet)
        arriving.size += size

    # -- the HTTP API across nodes: rooms, and connections held by other nodes -----------------

    def rooms_page(self, after: str | None, limit: int) -> dict[str, Any]:
        self._need_redis()
        raise self._later(self._rooms_page(after, limit))

    async def _rooms_page(self, after: str | None, limit: int) -> dict[str, Any]:
        low = "-" if after is None else "(" + after
        found = await self._cmd("zrangebylex", ROOMS, low, "+", start=0, num=limit + 1)
        more = len(found) > limit
        found = found[:limit]
        counts = []
        if found:
            keys = [_key(room, "members") for room in found]
            counts = await self.bus.call(self._counts_script.run(keys, []))
        return {
            # (a room vacated between the two reads is left out; the page still ends with it)
            "rooms": [{"room": r, "members": n} for r, n in zip(found, counts, strict=True) if n],
            "next": found[-1] if more else None,
        }

    def connection(self, sid: str) -> dict[str, Any]:
        if self.registry.get(sid) is not None:
            return super().connection(sid)
        self._need_redis()
        raise self._later(self._ask(sid, "get"))

    def end(self, sid: str) -> None:
        if self.registry.get(sid) is not None:
            return  # (the caller ends it here)
        self._need_redis()
        raise self._later(self._ask(sid, "end"))

    async def _ask(self, sid: str, what: str) -> dict[str, Any]:
        """Ask the node holding ``sid`` (``relay:conns``) about it on its channel: ``get`` its
        details, or ``end`` it; the answer comes on this node's channel once it is done."""
        value = await self._cmd("hget", CONNS, sid)
        node = (value or "").partition(" ")[0]
        if not node or node == self.node:  # (this node's: gone since it was looked for)
            raise NotFound(f"connection {sid!r} is not connected")
        number = str(next(self._asks))
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asked[number] = answer
        try:
            question = f"?{number} {self.node} {what} {sid}"
            if not await self._cmd("publish", f"relay:node:{node}", question):
                raise NotFound(f"connection {sid!r} is not connected (its node is gone)")
            async with asyncio.timeout(ASK_TIMEOUT_S):
                body = await answer
        except TimeoutError:
            raise Unavailable(
                f"the node holding connection {sid!r} did not answer within {ASK_TIMEOUT_S:g} s"
            ) from None
        finally:
            del self._asked[number]
        if "error" in body:
            raise NotFound(body["error"]["message"])
        return body

    def _on_question(self, data: str) -> None:
        if data[0] == "!":
            number, _, body = data[1:].partition(" ")
            answer = self._asked.get(number)
            if answer is not None and not answer.done():
                answer.set_result(orjson.loads(body))
            return
        number, node, what, sid = data[1:].split(" ", 3)
        self.spawn(self._answer(number, node, what, sid))

    async def _answer(self, number: str, node: str, what: str, sid: str) -> None:
        body: dict[str, Any]
        try:
            if what == "end":
                Relay.end(self, sid)
                if self.end_connection is not None:
                    await self.end_connection(sid)
                body = {"ok": True, "sid": sid}
            else:
                body = Relay.connection(self, sid)
        except NotFound as exc:
            body = {"error": exc.to_dict()}
        text = f"!{number} {orjson.dumps(body).decode()}"
        await self._cmd("publish", f"relay:node:{node}", text)

    # -- Redis (re)connected, heartbeats, dead nodes --------------------------------------------

    async def _on_connect(self) -> None:
        """Redis is (back) up: write this node's state again, and fill every feed's gap."""
        client = self.bus.client
        rooms = list(self.feeds)
        pipe = client.pipeline(transaction=False)
        node = self.node
        pipe.set(f"relay:node:{node}:alive", "1", px=int(self.settings.node_timeout * 1000))
        pipe.sadd(NODES, node)
        connections = [(sid, member.user) for sid, member in self.registry.items()]
        connections += [(sid, arriving.user) for sid, arriving in self._arriving.items()]
        for sid, user in connections:
            for write in self._connection_writes(sid, user):
                write(pipe)
        for sid, member in self.registry.items():
            for room in member.rooms:
                pipe.hset(_key(room, "members"), sid, self._member_json(member))
                pipe.zadd(ROOMS, {room: 0})
                pipe.zadd(KEPT, {room: scripts.OCCUPIED})
        px = max(1, int(self.recovery.ttl * 1000))
        for session in self.recovery.sessions():
            pipe.sadd(f"relay:node:{node}:sids", session.sid)
            pipe.hset(HELD, session.sid, f"{node} {session.pid}")
            pipe.set(f"relay:pid:{session.pid}", node, px=px)
            if session.user is not None:
                pipe.hset(f"relay:user:{session.user}", session.sid, "=")
        for room in rooms:
            pipe.sadd(f"relay:node:{node}:rooms", room)
            pipe.get(_key(room, "seq"))
            pipe.get(_key(room, "epoch"))
        replies = await pipe.execute()
        tail = replies[len(replies) - 3 * len(rooms) :] if rooms else []
        for i, room in enumerate(rooms):
            feed = self.feeds.get(room)
            if feed is None or not feed.anchored:
                continue
            seq, epoch = int(tail[3 * i + 1] or 0), tail[3 * i + 2]
            if epoch == feed.epoch and seq < feed.last:  # Redis went back: a new epoch
                log.warning(
                    "Redis lost writes it had answered: room %s is at offset %d, this node"
                    " delivered %d; starting a new epoch",
                    room,
                    seq,
                    feed.last,
                )
                keys = [_key(room, "seq"), _key(room, "log"), _key(room, "epoch")]
                args = [epoch, feed.last, secrets.token_urlsafe(9), META_TTL_MS]
                reply = await client.eval(scripts.ROLLBACK, len(keys), *keys, *args)
                seq, epoch = int(reply[0]), reply[1]
            if epoch != feed.epoch:  # Redis lost the room: its offsets started again
                # (what the new epoch holds already went out while this node was away: its
                # members were members all along, so they get it, from the stream)
                feed.epoch, feed.last = epoch, 0
                feed.pending.clear()
            if feed.last < seq:
                self.spawn(self._fill(feed, seq))
        self.spawn(self._tidy())

    async def _tidy(self) -> None:
        """Take out of Redis what this node's connections did while Redis did not hear it
        (run once Redis is back): the leaves and disconnects whose writes failed left their
        members, sids and user entries there, listed and counted by every node. (It reads the
        members of every room this node follows or followed: once per outage.)"""
        node = self.node
        registry = self.registry
        sids = await self._cmd("smembers", f"relay:node:{node}:sids")
        connected = {sid for sid, _ in registry.items()} | set(self._arriving)
        held = {session.sid for session in self.recovery.sessions()}
        keys = [CONNS, HELD, f"relay:node:{node}:sids"]
        for kind, which in (("held", held), ("gone", set(sids) - held)):
            forget = sorted(which - connected)
            if forget:
                await self.bus.call(self._forget_script.run(keys, [node, kind, *forget]))
        rooms = set(await self._cmd("smembers", f"relay:node:{node}:rooms")) | set(self.feeds)
        for room in sorted(rooms):
            members = await self._cmd("hgetall", _key(room, "members"))
            for sid, value in members.items():
                m = orjson.loads(value)
                if m.get("node") != node or (sid, room) in self._joins:
                    continue
                member = registry.get(sid)
                if member is not None and room in member.rooms:
                    continue
                user = m["user"]
                removed = int(await self._leave_call(room, sid))
                if not removed:
                    continue  # (taken out meanwhile, as usual)
                log.info("%s left %s while Redis was away: taken out now", sid, room)
                if removed == 2 and self.hooks is not None:
                    self.hooks.vacated(sid, user, room)
                self._announce_gone(room, sid, user, node)  # (its members here heard then)
        stale = [room for room in rooms if room not in self.feeds]
        if stale:
            await self._cmd("srem", f"relay:node:{node}:rooms", *stale)

    async def _heartbeat(self) -> None:
        timeout = self.settings.node_timeout
        node = self.node
        alive = f"relay:node:{node}:alive"
        px = int(timeout * 1000)
        while True:
            await asyncio.sleep(timeout / 3)
            try:
                await self.bus.call(lambda pipe: pipe.set(alive, "1", px=px))
                await self.bus.call(lambda pipe: pipe.sadd(NODES, node))
                nodes = await self.bus.call(lambda pipe: pipe.smembers(NODES))
                for other in nodes:
                    if other != node:
                        key = f"relay:node:{other}:alive"
                        if not await self._cmd("exists", key):
                            await self._reap(other)
                self.heartbeats += 1
            except Unavailable:
                continue  # (logged by the bus; the node is unhealthy meanwhile)

    async def _reap(self, dead: str) -> None:
        """Remove node ``dead``'s connections and members, announcing the leaves (once), and
        reporting them to webhooks as its own leaves and disconnects would have been (then
        the rooms they vacated)."""
        call = self.bus.call
        lock = f"relay:node:{dead}:reaper"
        px = int(self.settings.node_timeout * 4000)
        if not await call(lambda pipe: pipe.set(lock, self.node, nx=True, px=px)):
            return  # another node is at it
        log.warning("cluster node %s stopped answering: removing its connections", dead)
        sids = await call(lambda pipe: pipe.smembers(f"relay:node:{dead}:sids"))
        users: dict[str, str | None] = {}
        for sid in sids:
            value = await self._cmd("hget", CONNS, sid)
            await self._cmd("hdel", CONNS, sid)
            user = (value or "").partition(" ")[2]
            users[sid] = user or None
            held = await self._cmd("hget", HELD, sid)
            if held is not None and held.startswith(f"{dead} "):  # (a session it held: lost)
                await self._cmd("hdel", HELD, sid)  # (its user's "=" mark goes on next use)
            if user:
                await self._cmd("hdel", f"relay:user:{user}", sid)
        rooms = await call(lambda pipe: pipe.smembers(f"relay:node:{dead}:rooms"))
        left: dict[str, list[str]] = {sid: [] for sid in users}
        vacated: list[tuple[str, str, str | None]] = []
        for room in sorted(rooms):
            members = await self._cmd("hgetall", _key(room, "members"))
            for sid, value in members.items():
                m = orjson.loads(value)
                if m.get("node") != dead:
                    continue
                if await self._remove_member(room, sid, m["user"], report=False):
                    vacated.append((room, sid, m["user"]))
                left.setdefault(sid, []).append(room)
                users.setdefault(sid, m["user"])
                self._announce_gone(room, sid, m["user"], "-")  # (every node tells its members)
        hooks = self.hooks
        if hooks is not None:
            for sid, its_rooms in left.items():
                hooks.disconnected(Member(sid, users[sid]), its_rooms, _occupied)
            for room, sid, user in vacated:
                hooks.vacated(sid, user, room)
        keys = [f"relay:node:{dead}:sids", f"relay:node:{dead}:rooms"]
        await call(lambda pipe: pipe.delete(*keys))
        await call(lambda pipe: pipe.srem(NODES, dead))
        self.reaped += 1

    async def _cmd(self, name: str, *args: Any, **options: Any) -> Any:
        """One Redis command through the bus: ``await self._cmd("hget", key, field)``."""
        return await self.bus.call(lambda pipe: getattr(pipe, name)(*args, **options))

    def sweep(self) -> int:
        dropped = super().sweep()
        for room in list(self.feeds):  # (rooms followed only for sessions that expired)
            self._maybe_unfollow(room)
        return dropped

    def backend_metrics(self) -> list[tuple[str, str, str, float]]:
        bus = self.bus
        return [
            ("gauge", "relay_redis_up", "1 while Redis answers (commands and subscriptions)",
             int(bus.healthy)),
            ("counter", "relay_redis_reconnects", "Times the Redis connection came back",
             bus.reconnects),
            ("gauge", "relay_redis_queued", "Redis calls and state writes waiting to be sent",
             bus.queued),
            ("gauge", "relay_redis_rooms_followed", "Rooms whose channel this node follows",
             len(self.feeds)),
            ("counter", "relay_redis_gap_filled",
             "Messages delivered from a room's stream (a gap), not from its channel",
             self.filled),
            ("counter", "relay_redis_nodes_reaped", "Dead nodes this node removed",
             self.reaped),
            ("counter", "relay_redis_heartbeats", "Heartbeats sent (each a look for dead nodes)",
             self.heartbeats),
        ]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "cluster": {
                "node": self.node,
                "rooms_followed": len(self.feeds),
                "redis_reconnects": self.bus.reconnects,
                "nodes_reaped": self.reaped,
                "heartbeats": self.heartbeats,
                "gap_filled": self.filled,
                "sessions": self.handover.describe(),
            },
        }


def _occupied(room: str) -> bool:
    return True  # (whether a room was vacated is the script's to say, and reported after)


def _skip(value: str | None) -> str | None:
    return None if value is None or value == "-" else value


__all__ = ["ClusterRelay", "Feed"]
