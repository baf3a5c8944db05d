"""Connection state recovery across cluster nodes: a dropped session moves to the node its
client reconnects to.

Theory of operation
-------------------
A node keeps the sessions of its dropped connections as the memory core does
(:mod:`relay.core.recovery`), and tells Redis where they are: ``relay:pid:<pid>`` names the node
(it expires with the session), and ``relay:held`` maps the sid to ``"<node> <pid>"`` so that
direct messages to the sid (or, through the ``=`` mark in ``relay:user:{user}``, to its user)
reach the node that collects them (:mod:`relay.backends.scripts`, ``DIRECT_*``).

A reconnect whose ``auth.pid`` this node does not hold is looked for elsewhere
(:meth:`Handover.fetch`), while the client's CONNECT waits:

1. ``CLAIM`` (one script) takes the session if it is saved in Redis: ``relay:session:<pid>``
   (a hash: sid, user, rooms as ``{room: [epoch, last offset it got]}``, and counts) and
   ``relay:session:<pid>:p`` (the packets it collected, in order). Else it answers the node
   that holds it, if any.
2. That node is asked on its channel (``?ask <pid> <asker>``); it saves the session (``SAVE``:
   the same keys, written in one step with the hand-over's answer, ``?given <pid>``, published
   to the asker) and forgets it. A node that holds no such session answers ``?none``; a dead
   one (nobody subscribed) or a silent one is given up on (at most :data:`ASK_TIMEOUT_S`).
3. ``CLAIM`` again. What it gets is a :class:`relay.core.recovery.Session` with ``offsets``; the
   reconnect is answered with its sid and pid (``socket.recovered`` true), gets the collected
   packets, then rejoins each room as a ``join`` with ``since`` (the last offset it got) and the
   room's epoch: the room's stream after that offset, merged with live traffic by the node's
   feed, exactly as any join replays. Nothing is collected for a room after ``SAVE`` (the old
   node forgets the session in the same step it reads its feeds' offsets), and everything after
   those offsets is in the stream: nothing is lost or doubled.

Direct messages between ``SAVE`` and the new node's connection are appended to the saved
session by the ``DIRECT_*`` scripts (bounded as the session is); between ``CLAIM`` and the
connection (``CLAIM`` marks the sid held by the new node), the new node keeps them
(:meth:`Handover.direct`) and gives them after the collected packets. One sent before ``SAVE``
reached Redis comes to the old node after it let the session go: that node forwards it (for
:data:`FORWARD_S`) through ``DIRECT_SID`` again, which finds the session where it is now.
Presence events of a room are appended to the sessions saved from it (``relay:{room}:saved``,
the ``PRESENCE`` script every presence event goes through).

SIGTERM (:meth:`relay.backends.cluster.ClusterRelay.stop`): the node stops accepting, its
connections are closed without a Socket.IO goodbye (clients reconnect, to another node behind
the load balancer) and kept as sessions, in-flight publishes finish, and every session is saved
in Redis (``SAVE`` without an asker) for the rest of its recovery window. SIGKILL saves
nothing: its clients reconnect as new connections (``recovered`` false), and rejoin with
``since`` and ``epoch``, losing nothing the room's history holds.

Order: what a session collected on its node comes first, in the order it happened; then its
direct messages appended after ``SAVE``, in order; then each room's messages after its offset,
in offset order. Within a room and among direct messages nothing is reordered; between a
direct message sent after ``SAVE`` and a room message sent before it, the direct comes first.

Not covered: presence events of a room in the moments between the old node letting the
session go and ``SAVE`` running in Redis, and between ``CLAIM`` and the new node's rejoin of
the room (presence has no offsets to replay from; ``presence`` lists the members as they are);
a reconnect that reaches the new node before the old one noticed the drop (no session is held
yet: a new connection, as on one node); and packets the old socket had written but the client
never read (as on one node). Keys of sessions are written by
scripts that name some keys they did not declare (``relay:session:<pid>`` from a ``relay:held``
value): one Redis or a primary with replicas, not Redis Cluster, as for the rest of cluster
mode.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from relay.backends import scripts
from relay.core.auth import Identity
from relay.core.recovery import Session
from relay.errors import Unavailable

if TYPE_CHECKING:
    from relay.backends.cluster import ClusterRelay

log = logging.getLogger("relay.handover")

#: seconds a reconnect waits for the node holding its session to hand it over
ASK_TIMEOUT_S = 1.0
#: seconds a node forwards direct messages for a session it handed over (they may be on their
#: way to it, sent before the hand-over reached Redis)
FORWARD_S = 30.0
#: what a pid looks like (relay.core.recovery issues token_urlsafe(16)); anything else is no pid
PID = re.compile(r"[A-Za-z0-9_-]{1,64}")
HELD = "relay:held"
CONNS = "relay:conns"


def session_keys(pid: str) -> tuple[str, str]:
    return f"relay:session:{pid}", f"relay:session:{pid}:p"


def pid_key(pid: str) -> str:
    return f"relay:pid:{pid}"


def user_key(user: str | None) -> str:
    return f"relay:user:{user or ''}"


def is_pid(value: Any) -> bool:
    return isinstance(value, str) and PID.fullmatch(value) is not None


class Handover:
    """One node's side of moving sessions between nodes (see the module's docstring)."""

    def __init__(self, relay: ClusterRelay) -> None:
        self.relay = relay
        bus = relay.bus
        self._save = bus.script(scripts.SAVE)
        self._claim = bus.script(scripts.CLAIM)
        self._direct_sid = bus.script(scripts.DIRECT_SID)
        #: pid -> the answer awaited from the node holding it
        self._asks: dict[str, asyncio.Future[bool]] = {}
        #: claims under way; while any is, direct messages to sids not live here are kept
        self._claiming = 0
        #: sid -> direct messages that came before its claimed session is connected here
        self._early: dict[str, list[str]] = {}
        #: sids claimed and not connected yet (their early messages are kept)
        self._claimed: set[str] = set()
        #: sid -> when its session left this node (direct messages for it are forwarded)
        self._moved: dict[str, float] = {}
        self.stats = {"saved": 0, "handed_over": 0, "taken_over": 0, "asked": 0}

    # -- the node holding a session ------------------------------------------------------------

    def held(self, session: Session) -> None:
        """``session`` started waiting here: tell Redis where it is."""
        relay = self.relay
        sid, pid, node, user = session.sid, session.pid, relay.node, session.user
        px = max(1, int(relay.recovery.ttl * 1000))
        bus = relay.bus
        bus.send(lambda pipe: pipe.hset(HELD, sid, f"{node} {pid}"))
        bus.send(lambda pipe: pipe.set(pid_key(pid), node, px=px))
        if user is not None:
            bus.send(lambda pipe: pipe.hset(user_key(user), sid, "="))

    def ended(self, session: Session) -> None:
        """``session`` ended here (expired, overflowed, or recovered on this node)."""
        relay = self.relay
        sid, pid, node, user = session.sid, session.pid, relay.node, session.user
        bus = relay.bus
        bus.send(lambda pipe: pipe.hdel(HELD, sid))
        bus.send(lambda pipe: pipe.delete(pid_key(pid)))
        bus.send(lambda pipe: pipe.srem(f"relay:node:{node}:sids", sid))
        if user is not None:
            bus.send(lambda pipe: pipe.hdel(user_key(user), sid))

    def save(self, session: Session, reply_to: str = "") -> None:
        """Move ``session`` into Redis (for the node ``reply_to`` that asked, or any)."""
        relay = self.relay
        recovery = relay.recovery
        rooms: dict[str, tuple[str, int]] = {}
        for room in session.rooms:
            feed = relay.feeds.get(room)
            if feed is not None and feed.anchored and feed.epoch is not None:
                rooms[room] = (feed.epoch, feed.last)
            else:
                rooms[room] = ("", -1)  # (not read yet: rejoined without a replay)
        ttl_ms = max(1, int((session.deadline - time.monotonic()) * 1000))
        # (in the same step as reading the offsets: nothing more is collected for it here)
        packets = recovery.take(session)
        now = time.monotonic()
        if len(self._moved) > 1024:
            self._moved = {s: t for s, t in self._moved.items() if now - t < FORWARD_S}
        self._moved[session.sid] = now
        self.write(session, rooms, packets, ttl_ms, reply_to)
        for room in session.rooms:
            relay._maybe_unfollow(room)

    def write(
        self,
        session: Session,
        rooms: dict[str, tuple[str, int]],
        packets: list[str],
        ttl_ms: int,
        reply_to: str = "",
    ) -> None:
        relay = self.relay
        sid, pid, user = session.sid, session.pid, session.user
        keys = [
            *session_keys(pid),
            HELD,
            pid_key(pid),
            f"relay:node:{relay.node}:sids",
            user_key(user),
        ]
        size = sum(len(p.encode()) for p in packets)
        args = [
            sid,
            user or "",
            orjson.dumps(rooms).decode(),
            ttl_ms,
            pid,
            f"relay:node:{reply_to}" if reply_to else "",
            f"?given {pid}",
            size,
            *packets,
        ]
        relay.bus.send(self._save.run(keys, args))
        self.stats["saved"] += 1

    def save_all(self) -> int:
        """Shutting down: save every session waiting here; returns how many."""
        sessions = self.relay.recovery.sessions()
        for session in sessions:
            self.save(session)
        return len(sessions)

    # -- the node channel's control messages ---------------------------------------------------

    def control(self, text: str) -> None:
        """A ``?...`` message on this node's channel."""
        kind, _, rest = text.partition(" ")
        if kind == "?ask":
            pid, _, asker = rest.partition(" ")
            session = self.relay.recovery.find(pid)
            if session is None:
                channel = f"relay:node:{asker}"
                self.relay.bus.send(lambda pipe: pipe.publish(channel, f"?none {pid}"))
                return
            self.save(session, asker)
            self.stats["handed_over"] += 1
        elif kind in ("?given", "?none"):
            future = self._asks.get(rest)
            if future is not None and not future.done():
                future.set_result(kind == "?given")

    def direct(self, sid: str, packet: str) -> bool:
        """A direct message for ``sid``, not live here: kept when a claim may be bringing it,
        forwarded when its session just left (sent before the hand-over reached Redis)."""
        moved = self._moved.get(sid)
        if moved is not None and time.monotonic() - moved < FORWARD_S:
            relay = self.relay
            keys = [CONNS, HELD]
            args = [sid, relay.node, packet, relay.recovery.max_packets, relay.settings.max_buffer]
            relay.bus.send(self._direct_sid.run(keys, args))
            return True
        early = self._early.get(sid)
        if early is None:
            if not self._claiming and sid not in self._claimed:
                return False
            early = self._early[sid] = []
        if len(early) < self.relay.recovery.max_packets:
            early.append(packet)
        return True

    # -- the node a client reconnects to -------------------------------------------------------

    async def fetch(self, pid: str, identity: Identity) -> Session | None:
        """The session ``pid`` names, brought here from Redis or from the node holding it, for
        ``identity``; None when there is none (the reconnect is a new connection)."""
        self._claiming += 1
        try:
            found = await self._take(pid, identity)
            if found is None or isinstance(found, Session):
                return found
            node = found
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._asks[pid] = future
            try:
                channel, text = f"relay:node:{node}", f"?ask {pid} {self.relay.node}"
                self.stats["asked"] += 1
                heard = await self.relay.bus.call(lambda pipe: pipe.publish(channel, text))
                if heard:
                    try:
                        await asyncio.wait_for(asyncio.shield(future), ASK_TIMEOUT_S)
                    except TimeoutError:
                        log.info("node %s did not hand over session %s in time", node, pid)
            finally:
                self._asks.pop(pid, None)
            # (saved meanwhile, asked or not: a node shutting down saves without being asked)
            again = await self._take(pid, identity)
            return again if isinstance(again, Session) else None
        except Unavailable:
            return None
        finally:
            self._claiming -= 1
            if not self._claiming:
                for sid in [s for s in self._early if s not in self._claimed]:
                    del self._early[sid]

    async def _take(self, pid: str, identity: Identity) -> Session | str | None:
        """``CLAIM``: the session, or the node to ask (a str), or None."""
        relay = self.relay
        keys = [*session_keys(pid), HELD, pid_key(pid), f"relay:node:{relay.node}:sids"]
        args = [identity.user or "", relay.node, pid]
        reply = await relay.bus.call(self._claim.run(keys, args))
        if int(reply[0]) == 0:
            node = reply[1]
            return node if node and node != relay.node else None
        sid, rooms_json, packets = reply[1], reply[2], list(reply[3])
        rooms = {room: (str(v[0]), int(v[1])) for room, v in orjson.loads(rooms_json).items()}
        self._claimed.add(sid)
        self.stats["taken_over"] += 1
        return Session(
            sid,
            pid,
            identity.user,
            tuple(rooms),
            time.monotonic() + max(1, int(reply[4])) / 1000,
            packets=deque(packets),
            offsets=rooms,
        )

    def arrived(self, session: Session) -> list[str]:
        """``session``'s sid is connected here: the direct messages that came meanwhile."""
        self._claimed.discard(session.sid)
        return self._early.pop(session.sid, [])

    def abandon(self, session: Session) -> None:
        """A claimed session that did not connect here after all: save it again."""
        missed = [*session.packets, *self.arrived(session)]
        assert session.offsets is not None
        ttl_ms = max(1, int((session.deadline - time.monotonic()) * 1000))
        self.write(session, session.offsets, missed, ttl_ms)

    def describe(self) -> dict[str, Any]:
        return dict(self.stats)


__all__ = ["ASK_TIMEOUT_S", "Handover", "is_pid"]
