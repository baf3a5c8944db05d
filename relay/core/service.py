"""The relay core: join, leave, publish, direct and presence as plain functions.

Everything here runs to completion without awaiting, so each operation is atomic with respect
to every other: offsets are handed out in order, and a join's replay and the live stream meet
without a gap or a duplicate.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple

from relay.core import envelope
from relay.core.auth import Identity
from relay.core.deferred import Deferred
from relay.core.fanout import FanoutTimer
from relay.core.history import History
from relay.core.recovery import Recovery, Session
from relay.core.rooms import Member, Registry
from relay.errors import BadRequest, NotFound, RateLimited, Unavailable
from relay.limits import Bucket, Rate
from relay.settings import Settings
from relay.wire.transport import Transport

if TYPE_CHECKING:
    from relay.core.webhooks import Webhooks

log = logging.getLogger("relay")


#: how long a connection refused for its rate is not read from (at least, at most)
RATE_HOLD_MIN_S = 0.25
RATE_HOLD_MAX_S = 2.0


class Sender(NamedTuple):
    """Who sends: a connection (sid and user) or the HTTP API (both None).

    (A named tuple, not a frozen dataclass: one is made per message, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``.)
    """

    sid: str | None = None
    user: str | None = None


HTTP_SENDER = Sender()


class Relay:
    """Rooms, history and routing for one process."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        clock_ms: Callable[[], int] = envelope.now_ms,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.registry = Registry()
        self.history = History(
            settings.history_size, settings.history_ttl, clock_ms, settings.history_max_bytes
        )
        self._clock = clock_ms
        self._ids = envelope.IdFactory()
        # connection state recovery (relay.core.recovery): dropped connections' sessions
        self.recovery = Recovery(
            settings.recovery_ttl, settings.max_buffer, max_total=settings.recovery_max_bytes
        )
        self.stats = {"published": 0, "delivered": 0, "direct": 0, "rate_limited": 0}
        self.fanout = FanoutTimer()
        #: whether publishes and directs have a rate to keep (the handlers' one check)
        self.publish_limited = settings.publish_rate.enabled or settings.delivery_rate.enabled
        #: (expiry in Unix seconds, sid) of connections whose token expires (a heap; entries of
        #: connections gone are skipped when they come up, and compacted when they pile up)
        self._expiring: list[tuple[float, str]] = []
        #: where connection and membership events are reported (relay.core.webhooks), if anywhere
        self.hooks: Webhooks | None = None
        #: ends one connection of this process (its client sees a server disconnect); the app
        #: sets it
        self.end_connection: Callable[[str], Awaitable[None]] | None = None

    # -- connections ---------------------------------------------------------------------------

    def connect(
        self, sid: str, eio_sid: str, user: str | None, identity: Identity | None = None
    ) -> Member:
        self.transport.attach(sid, eio_sid)
        self.recovery.issue(sid)
        identity = identity or Identity(user)
        self._watch_expiry(sid, identity)
        member = self.registry.connect(sid, user, identity)
        member.connected_at = self._clock()
        if self.hooks is not None:
            self.hooks.connected(member)
        return member

    def disconnect(self, sid: str, recoverable: bool = False) -> None:
        """Forget ``sid``: it leaves every room, and their members hear of it.

        ``recoverable`` (its transport was lost, nobody said goodbye): its session is kept so a
        reconnect may take it over (:meth:`resume`).
        """
        member, rooms = self.registry.disconnect(sid)
        self.transport.detach(sid)
        if member is None:
            self.recovery.forget(sid)
            return
        for room in rooms:
            self._announce(room, "leave", member)
        if self.hooks is not None:
            self.hooks.disconnected(member, rooms, self.registry.occupied)
        # after the announcements: its own leave is not among what it missed
        if recoverable:
            self.recovery.hold(sid, member.user, rooms)
        else:
            self.recovery.forget(sid)
        for room in rooms:
            if not self.in_use(room):
                self.history.forget_if_idle(room)

    def in_use(self, room: str) -> bool:
        """Whether ``room`` must stay known even without history: it has a member, or a
        dropped member waits to be recovered into it (so the room keeps its epoch and offsets,
        and what the session collected still counts in them when it comes back)."""
        return self.registry.occupied(room) or self.recovery.holds(room)

    def recoverable(self, pid: Any, identity: Identity) -> Session | None:
        """The dropped session a reconnect naming ``pid`` as ``identity`` may take over."""
        if not isinstance(pid, str) or not self.recovery.enabled:
            return None
        session = self.recovery.find(pid)
        if session is None or session.user != identity.user:
            return None
        if not all(identity.allows(room) for room in session.rooms):
            return None
        return session

    #: whether sessions may move to another process (a cluster backend: relay.backends)
    moves_sessions = False
    #: set when a shutdown begins on a backend whose sessions move: the connections it closes
    #: are kept as sessions (their clients reconnect elsewhere and recover)
    moving = False

    def move_out(self) -> None:
        """The server is shutting down and closes every connection (relay.app.drain)."""
        self.moving = self.moves_sessions and self.recovery.enabled

    async def finish(self, timeout: float) -> None:
        """Shutdown is closing the connections: first wait, at most ``timeout`` seconds, for the
        answers still on their way (a backend that answers later: relay.core.deferred), so
        that an accepted publish is acked before its connection closes."""

    async def fetch_session(self, pid: Any, identity: Identity) -> Session | None:
        """The session ``pid`` names, brought from another process, if this backend can."""
        return None

    #: whether a new connection's sid is registered beyond this process before its CONNECT is
    #: answered (:meth:`reserve`), so that once its client hears it is connected, any process
    #: can reach it (a cluster backend: relay.backends)
    reserves_sids = False

    async def reserve(self, user: str | None) -> str:
        """A new sid for a connection of ``user``, registered where other processes look."""
        return secrets.token_urlsafe(12)

    def release(self, sid: str, user: str | None) -> None:
        """A sid from :meth:`reserve` whose connection went before it was connected."""

    def admitted(self, sid: str) -> None:
        """The CONNECT answer of a sid from :meth:`reserve` is out: what came for it meanwhile
        may follow."""

    def abandon(self, session: Session) -> None:
        """A reconnect did not take ``session`` over after all: it may be found again."""
        self.recovery.release(session)

    def resume(self, session: Session, eio_sid: str, identity: Identity) -> Member:
        """Bring ``session`` back on ``eio_sid``: same sid, same rooms, then what it missed."""
        sid = session.sid
        missed = self.recovery.claim(session)
        self.transport.attach(sid, eio_sid)
        self._watch_expiry(sid, identity)
        member = self.registry.connect(sid, identity.user, identity)
        member.connected_at = self._clock()
        hooks = self.hooks
        if hooks is not None:
            hooks.connected(member)
        for room in session.rooms:
            self.history.touch(room)
            if self.registry.join(sid, room):
                # it left when it dropped; the members who heard that hear it is back
                self._announce(room, "join", member)
                if hooks is not None:
                    hooks.joined(member, room, self.registry.count(room) == 1)
        for packet in missed:
            self.transport.send(sid, packet)
        return member

    def member(self, sid: str) -> Member:
        member = self.registry.get(sid)
        if member is None:
            raise NotFound(f"connection {sid!r} is not connected")
        return member

    # -- events --------------------------------------------------------------------------------

    def join(
        self, sid: str, room: str, since: int | None, epoch: str | None = None
    ) -> dict[str, Any]:
        """Add ``sid`` to ``room``; with ``since``, first replay what it missed of it.

        ``epoch`` is the life of the room ``since`` counts in (relay.core.history); it matters only
        with ``since`` (a join without one replays nothing, whatever the epoch). The ack always
        names the room's epoch.
        """
        member = self.member(sid)
        member.identity.check_room(room, "join")
        self.throttle_join(member)
        if room not in member.rooms:
            limit = self.settings.max_rooms_per_connection
            if limit and len(member.rooms) >= limit:
                self.stats["rate_limited"] += 1
                raise RateLimited(
                    f"this connection is in {len(member.rooms)} rooms, the most one may be in"
                    f" (RELAY_MAX_ROOMS_PER_CONNECTION={limit}); leave one first"
                )
            self._room_for(room)
            self.history.touch(room)
        joined = self.registry.join(sid, room)
        ack: dict[str, Any] = {"ok": True, "room": room}
        if joined and since is not None:
            replay = self.history.replay(room, since, epoch)
            for message in replay.messages:
                self.transport.send(sid, message.packet)
            ack["recovered"] = replay.recovered
        if joined:
            self._announce(room, "join", member)
            if self.hooks is not None:
                self.hooks.joined(member, room, self.registry.count(room) == 1)
        ack["offset"] = self.history.latest(room)
        # (the room is known: it has a member, this one)
        ack["epoch"] = self.history.touch(room)
        ack["members"] = self.registry.count(room)
        return ack

    def leave(self, sid: str, room: str) -> dict[str, Any]:
        member = self.member(sid)
        if self.registry.leave(sid, room):
            self._announce(room, "leave", member)
            if not self.in_use(room):
                self.history.forget_if_idle(room)
            if self.hooks is not None:
                self.hooks.left(member, room, not self.registry.occupied(room))
        return {"ok": True, "room": room}

    def publish(
        self,
        sender: Sender,
        room: str,
        event: str,
        data: Any,
        exclude_self: bool = False,
    ) -> envelope.Message:
        """Broadcast to every member of ``room``; the message gets the room's next offset."""
        started = perf_counter()  # (relay.core.fanout: the publish's time, for /metrics)
        data_json = envelope.encode_data(data, self.settings.max_payload)
        if room not in self.history:
            self._room_for(room)
        message = envelope.build(
            id=self._ids(),
            room=room,
            event=event,
            sender_sid=sender.sid,
            sender_user=sender.user,
            data_json=data_json,
            offset=self.history.next_offset(room),
            ts=self._clock(),
        )
        self.history.append(room, message)
        skip = sender.sid if exclude_self else None
        registry = self.registry
        sent = self.transport.send_room(
            room, registry.version(room), registry.sids(room), message.packet, skip
        )
        if self.recovery.waiting:  # dropped members collect it (relay.core.recovery)
            self.recovery.to_room(room, message.packet)
        self.stats["published"] += 1
        self.stats["delivered"] += sent
        self.fanout.observe(started, sent)
        return message

    def report_to(self, hooks: Webhooks) -> None:
        """Report connects, disconnects, joins and leaves to ``hooks``, and client publishes
        too when it wants them (only then is ``publish`` wrapped: no check per publish else)."""
        self.hooks = hooks
        if hooks.wants_publish:
            self.publish = self._publish_reported  # type: ignore[method-assign]

    def _publish_reported(
        self, sender: Sender, room: str, event: str, data: Any, exclude_self: bool = False
    ) -> envelope.Message:
        hooks = self.hooks
        try:
            # (the class's own publish: a backend's, not necessarily this module's)
            message = type(self).publish(self, sender, room, event, data, exclude_self)
        except Deferred as later:  # a backend answering later: report once it has the offset
            if sender.sid is not None and hooks is not None:
                sid, user = sender.sid, sender.user

                def report(task: Any) -> None:
                    if not task.cancelled() and task.exception() is None:
                        hooks.published(sid, user, room, event, task.result().get("offset"))

                later.task.add_done_callback(report)
            raise
        if sender.sid is not None and hooks is not None:  # (clients', not the HTTP API's)
            hooks.published(sender.sid, sender.user, room, event, message.offset)
        return message

    def direct(
        self,
        sender: Sender,
        *,
        to: str | None,
        user: str | None,
        event: str,
        data: Any,
    ) -> tuple[envelope.Message, int]:
        """Unicast to one connection or to every connection of one user."""
        if (to is None) == (user is None):
            raise BadRequest("'direct' takes exactly one of 'to' (a sid) or 'user'")
        data_json = envelope.encode_data(data, self.settings.max_payload)
        message = envelope.build(
            id=self._ids(),
            room=None,
            event=event,
            sender_sid=sender.sid,
            sender_user=sender.user,
            data_json=data_json,
            offset=None,
            ts=self._clock(),
        )
        if to is not None:
            sent = self.registry.get(to) is not None and self.transport.send(to, message.packet)
            delivered = 1 if sent else 0
        else:
            assert user is not None
            targets = self.registry.sids_of_user(user)
            delivered = self.transport.send_many(targets, message.packet)
        if self.recovery.waiting:  # a dropped connection collects it (not counted: not reached)
            if to is not None:
                self.recovery.to_sid(to, message.packet)
            else:
                assert user is not None
                self.recovery.to_user(user, message.packet)
        self.stats["direct"] += 1
        self.stats["delivered"] += delivered
        return message, delivered

    def history_epoch(self, room: str) -> str | None:
        """The epoch of ``room``'s offsets (relay.core.history), None for a room not known."""
        return self.history.epoch(room)

    def history_page(self, room: str, since: int, limit: int) -> list[tuple[int, str]]:
        """The oldest ``limit`` messages of ``room`` after ``since``: (offset, envelope JSON)."""
        return [(m.offset or 0, m.envelope_json()) for m in self.history.page(room, since, limit)]

    def presence(self, room: str) -> dict[str, Any]:
        members = [m.as_dict() for m in self.registry.members(room)]
        return {"ok": True, "room": room, "members": members}

    def rooms_page(self, after: str | None, limit: int) -> dict[str, Any]:
        """Rooms with members, sorted by name, ``limit`` after ``after``."""
        page = self.registry.rooms_after(after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return {
            "rooms": [{"room": room, "members": count} for room, count in page],
            "next": page[-1][0] if more else None,
        }

    def end(self, sid: str) -> None:
        """Check that ``sid`` may be ended (NotFound when it is not connected); the caller then
        ends it (:attr:`end_connection`). A backend whose connection lives in another process
        ends it there instead, and raises Deferred (relay.core.deferred)."""
        self.member(sid)

    def connection(self, sid: str) -> dict[str, Any]:
        """What the HTTP API tells of one connection, or NotFound."""
        member = self.member(sid)
        return {
            "sid": sid,
            "user": member.user,
            "rooms": sorted(member.rooms),
            "connected_at": member.connected_at,
            "transport": self.transport.kind(sid) or "polling",
        }

    # -- limits --------------------------------------------------------------------------------

    def throttle_publish(self, member: Member, deliveries: int = 1) -> None:
        """Spend one of ``member``'s publish tokens (``publish`` and ``direct``), and
        ``deliveries`` of its delivery tokens (what the message fans out to), or refuse.

        The second bucket is what keeps one connection from flooding a big room: 100
        publishes a second into a room of 1,000 are 100,000 deliveries a second, most of
        the server's CPU. (A fan-out larger than the burst costs a whole burst.)
        """
        settings = self.settings
        rate = settings.publish_rate
        now = time.monotonic()
        if rate.per_s:
            bucket = member.publish_bucket
            if bucket is None:
                bucket = member.publish_bucket = Bucket(rate, now)
            if not bucket.take(rate, now):
                self._refuse(bucket, rate, "publish and direct", "RELAY_PUBLISH_RATE", member.sid)
        rate = settings.delivery_rate
        if rate.per_s:
            bucket = member.delivery_bucket
            if bucket is None:
                bucket = member.delivery_bucket = Bucket(rate, now)
            if not bucket.take(rate, now, deliveries):
                self.stats["rate_limited"] += 1
                wait = bucket.retry_after(rate, min(deliveries, rate.burst))
                self._hold_off(member.sid, wait)
                raise RateLimited(
                    f"too fast: a connection's messages may reach {rate.per_s:g} recipients"
                    f" a second, in bursts of up to {rate.burst:g} (RELAY_DELIVERY_RATE), and"
                    f" this one would reach {deliveries}; retry in {wait:.3f} s",
                    wait,
                )

    def throttle_join(self, member: Member) -> None:
        """Spend one of ``member``'s join tokens (``join`` and ``presence``), or refuse."""
        rate = self.settings.join_rate
        if rate.per_s:
            bucket = member.join_bucket
            now = time.monotonic()
            if bucket is None:
                bucket = member.join_bucket = Bucket(rate, now)
            if not bucket.take(rate, now):
                self._refuse(bucket, rate, "join and presence", "RELAY_JOIN_RATE", member.sid)

    def _refuse(self, bucket: Bucket, rate: Rate, what: str, key: str, sid: str) -> None:
        self.stats["rate_limited"] += 1
        wait = bucket.retry_after(rate)
        self._hold_off(sid, wait)
        raise RateLimited(
            f"too fast: a connection may send {rate.per_s:g} {what} events a second, in bursts"
            f" of up to {rate.burst:g} ({key}); retry in {wait:.3f} s",
            wait,
        )

    def _hold_off(self, sid: str, wait: float) -> None:
        """A connection was refused for its rate: read nothing more from it for a while.

        A client that keeps sending regardless would otherwise cost a parse and an answer per
        event (400,000 refused publishes in 10 s took 7 s of CPU); paused, it costs a read per
        pause. A client that waits as told loses nothing: what it sends next is read then.
        """
        self.transport.hold_off(sid, min(max(wait, RATE_HOLD_MIN_S), RATE_HOLD_MAX_S))

    def _room_for(self, room: str) -> None:
        """Refuse to make ``room`` (not known yet) when relay holds as many as it may."""
        limit = self.settings.max_rooms
        if limit and room not in self.history and len(self.history) >= limit:
            raise Unavailable(
                f"relay holds {len(self.history)} rooms, its limit (RELAY_MAX_ROOMS={limit}):"
                f" no new room can be made until some are forgotten"
            )

    def _watch_expiry(self, sid: str, identity: Identity) -> None:
        if identity.expires is None:
            return
        expiring = self._expiring
        heapq.heappush(expiring, (identity.expires, sid))
        if len(expiring) > 2 * len(self.registry) + 1024:
            # entries of connections gone: drop them (each connection has at most one live one)
            live = [
                (member.identity.expires, sid)
                for sid, member in self.registry.items()
                if member.identity.expires is not None
            ]
            heapq.heapify(live)
            self._expiring = live

    def expired(self, now: float) -> list[str]:
        """The connections whose token expired by ``now`` (Unix seconds), each named once."""
        expiring = self._expiring
        out = []
        while expiring and expiring[0][0] <= now:
            when, sid = heapq.heappop(expiring)
            member = self.registry.get(sid)
            if member is not None and member.identity.expires == when:
                out.append(sid)
        return out

    def next_expiry(self) -> float | None:
        return self._expiring[0][0] if self._expiring else None

    # -- backend lifecycle (a cluster backend overrides these: relay.backends) -----------------

    #: what the start-up line calls this backend
    backend = "in-memory"

    async def start(self) -> None:
        """Start the backend's background work (the memory backend has none)."""

    async def stop(self) -> None:
        """Stop what :meth:`start` started."""

    def health(self) -> dict[str, str]:
        """Each backend's state for ``/healthz``: ``"ok"``, or what is wrong."""
        return {"memory": "ok"}

    def backend_metrics(self) -> list[tuple[str, str, str, float]]:
        """The backend's own figures for ``/metrics``, as (``"gauge"`` or ``"counter"``, name,
        help, value): the memory backend has none."""
        return []

    # -- housekeeping --------------------------------------------------------------------------

    def sweep(self) -> int:
        self.recovery.expire()
        return self.history.sweep(self.in_use)

    def _announce(self, room: str, action: str, member: Member) -> None:
        packet = envelope.event_packet(
            "presence", {"room": room, "action": action, "member": member.as_dict()}
        )
        registry = self.registry
        self.transport.send_room(
            room, registry.version(room), registry.sids(room), packet, skip=member.sid
        )
        if self.recovery.waiting:
            self.recovery.to_room(room, packet)

    def describe(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "connections": len(self.registry),
            "rooms": self.registry.room_count(),  # with members
            "rooms_known": len(self.history),  # with members or history: RELAY_MAX_ROOMS
            "recoverable": len(self.recovery),
            "recovery_bytes": self.recovery.total,
            "recovery_overflowed": self.recovery.overflowed,
            "history_bytes": self.history.bytes,
            "history_evicted": self.history.evicted,
            **self.stats,
            "limits": {
                "max_rooms": settings.max_rooms,
                "max_rooms_per_connection": settings.max_rooms_per_connection,
                "history_max_bytes": settings.history_max_bytes,
                "history_size": settings.history_size,
                "max_buffer": settings.max_buffer,
                "recovery_max_bytes": settings.recovery_max_bytes,
                "max_payload": settings.max_payload,
                "publish_rate": str(settings.publish_rate),
                "join_rate": str(settings.join_rate),
                "api_rate": str(settings.api_rate),
            },
        }


__all__ = ["HTTP_SENDER", "Relay", "Sender"]
