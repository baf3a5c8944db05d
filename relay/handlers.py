"""Socket.IO events -> relay core calls. Thin: validate shape, call, answer."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import socketio

from relay import names
from relay.core.auth import Identity, authenticate
from relay.core.deferred import Deferred
from relay.core.recovery import Session
from relay.core.service import Relay, Sender
from relay.errors import BadRequest, Internal, RelayError
from relay.wire.engine import RelayEngine
from relay.wire.sio import FastHandler, RelaySocketIO

log = logging.getLogger("relay.handlers")

Ack = dict[str, Any]
Handler = Callable[[Relay, str, dict[str, Any]], Ack]


def _error(exc: RelayError) -> Ack:
    return {"ok": False, "error": exc.to_dict()}


def on_join(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    room = names.room_name(p.get("room"))
    since = names.offset(p["since"]) if "since" in p else None
    epoch = names.epoch(p["epoch"]) if "epoch" in p else None
    return relay.join(sid, room, since, epoch)


def on_leave(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    return relay.leave(sid, names.room_name(p.get("room")))


def on_publish(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    room = names.room_name(p.get("room"))
    event = names.event_name(p.get("event"))
    if "data" not in p:
        raise BadRequest("'publish' needs 'data'")
    exclude_self = names.flag(p.get("exclude_self", False), "exclude_self")
    member = relay.member(sid)
    member.identity.check_room(room, "publish to")
    if relay.publish_limited:
        relay.throttle_publish(member, relay.registry.count(room))
    message = relay.publish(Sender(sid, member.user), room, event, p["data"], exclude_self)
    return {"ok": True, "id": message.id, "offset": message.offset}


def on_direct(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    # (names.payload dropped null fields: a present field is not None)
    to = p.get("to")
    if to is not None:
        to = names.sid(to)
    user = p.get("user")
    if user is not None:
        user = names.user_name(user)
    event = names.event_name(p.get("event"))
    if "data" not in p:
        raise BadRequest("'direct' needs 'data'")
    member = relay.member(sid)
    if relay.publish_limited:
        relay.throttle_publish(member, 1 if user is None else relay.registry.user_count(user))
    message, delivered = relay.direct(
        Sender(sid, member.user), to=to, user=user, event=event, data=p["data"]
    )
    return {"ok": True, "id": message.id, "delivered": delivered}


def on_presence(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    room = names.room_name(p.get("room"))
    member = relay.member(sid)
    member.identity.check_room(room, "see the members of")
    relay.throttle_join(member)
    return relay.presence(room)


HANDLERS: dict[str, Handler] = {
    "join": on_join,
    "leave": on_leave,
    "publish": on_publish,
    "direct": on_direct,
    "presence": on_presence,
}


async def settle(task: asyncio.Task[Ack]) -> Ack:
    """A deferred answer's ack: the task's, or the contract's error ack for what it raised."""
    try:
        return await task
    except RelayError as exc:
        return _error(exc)
    except Exception:  # (logged with its trace by the task's owner)
        return _error(Internal())


def dispatch(relay: Relay, event: str, sid: str, args: Sequence[Any]) -> Ack | asyncio.Task[Ack]:
    """Run one client event and always produce the contract's ack, never an exception."""
    handler = HANDLERS.get(event)
    if handler is None:
        unknown = BadRequest(f"unknown event {event!r}; expected one of {', '.join(HANDLERS)}")
        log.debug("%s %s rejected: %s", sid, event, unknown.message)
        return _error(unknown)
    return run(relay, event, handler, sid, args)


def run(
    relay: Relay, event: str, handler: Handler, sid: str, args: Sequence[Any]
) -> Ack | asyncio.Task[Ack]:
    """``handler`` on the event's ``args``; its ack, or the contract's error ack, or (a backend
    that answers later: relay.core.deferred) the task whose result is the ack."""
    try:
        return handler(relay, sid, names.payload(args, event))
    except Deferred as later:
        return later.task
    except RelayError as exc:
        log.debug("%s %s rejected: %s", sid, event, exc.message)
        return _error(exc)
    except RecursionError:
        return _error(BadRequest("payload is nested too deeply"))
    except Exception:
        log.exception("internal error handling %r from %s", event, sid)
        return _error(Internal())


def identify(relay: Relay, auth: Any) -> Identity:
    """Who a connecting client is, or ConnectionRefusedError (its connect_error)."""
    try:
        return authenticate(auth, relay.settings.secret)
    except RelayError as exc:
        raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict()) from None


#: the longest a shutdown waits for the answers on their way before it closes the connections
#: (a third of RELAY_SHUTDOWN_TIMEOUT, if less: the rest is for saving sessions)
ANSWER_WAIT_S = 5.0


class Admission:
    """One accepted connection on "/": new, or taking over a dropped one (relay.core.recovery)."""

    def __init__(
        self,
        relay: Relay,
        identity: Identity,
        session: Session | None,
        lookup: str | None = None,
        reserve: bool = False,
    ) -> None:
        self.relay = relay
        self.identity = identity
        self.session = session
        self.sid = session.sid if session is not None else None
        self.eio_sid = ""
        #: a pid to look for on other nodes (relay.backends.handover) before connecting
        self.lookup = lookup
        #: a new connection's sid is to be registered cluster-wide before connecting
        #: (Relay.reserve), and ``reserved`` once it is
        self.reserve = reserve and session is None
        self.reserved = False
        #: whether ``settle`` must be awaited before the CONNECT is answered
        self.waits = lookup is not None or self.reserve

    async def settle(self) -> None:
        """Look for the session ``lookup`` names elsewhere, then (a new connection, on a backend
        that reserves sids) register the new sid where other processes look for it."""
        pid, self.lookup = self.lookup, None
        if pid is not None:
            await self._fetch(pid)
        if self.reserve and self.session is None:
            self.reserve = False
            self.sid = await self.relay.reserve(self.identity.user)
            self.reserved = True

    async def _fetch(self, pid: str) -> None:
        session = await self.relay.fetch_session(pid, self.identity)
        if session is None:
            return
        if not all(self.identity.allows(room) for room in session.rooms):
            self.relay.abandon(session)  # (as on one node: this token may not have it)
            return
        self.session, self.sid = session, session.sid

    def cancel(self) -> None:
        """The connection went (or was refused) before it was admitted: its session stays
        recoverable, and a reserved sid is given up."""
        if self.session is not None:
            self.relay.abandon(self.session)
            self.session = None
        if self.reserved:
            self.reserved = False
            assert self.sid is not None
            self.relay.release(self.sid, self.identity.user)

    def before_connect(self, sid: str, eio_sid: str) -> dict[str, Any]:
        relay, session = self.relay, self.session
        if session is not None and session.sid != sid:
            relay.abandon(session)
            self.session = session = None  # its sid was taken after all: a new connection
        if self.reserved and sid != self.sid:  # (the same: a new sid is registered as usual)
            self.cancel()
        if session is None:
            relay.connect(sid, eio_sid, self.identity.user, self.identity)
            pid = relay.recovery.pid_of(sid)
            return {"sid": sid} if pid is None else {"sid": sid, "pid": pid}
        relay.recovery.reserve(session)
        self.eio_sid = eio_sid
        return {"sid": sid, "pid": session.pid}

    def after_connect(self) -> None:
        if self.session is not None:
            self.relay.resume(self.session, self.eio_sid, self.identity)
            log.debug("%s recovered", self.session.sid)
        elif self.reserved:
            assert self.sid is not None
            self.relay.admitted(self.sid)


def admission(relay: Relay, identity: Identity, auth: Any) -> Admission:
    """``identity``'s admission, with the session its ``auth.pid`` names: found here, or (a
    backend whose sessions move between processes) to be looked for elsewhere."""
    pid = auth.get("pid") if isinstance(auth, dict) else None
    session = relay.recoverable(pid, identity)
    lookup = None
    if session is None and relay.moves_sessions and isinstance(pid, str):
        lookup = pid
    return Admission(relay, identity, session, lookup, relay.reserves_sids)


def gate(relay: Relay, auth: Any) -> Admission:
    """Let a connection in: authenticated, and with the session its ``auth.pid`` names."""
    return admission(relay, identify(relay, auth), auth)


def register(sio: socketio.AsyncServer, relay: Relay) -> None:
    """Wire ``relay`` to ``sio``'s events on the default namespace."""

    def lifecycle_event_from_client(sid: str, event: str) -> Ack | None:
        # python-socketio routes a client's own event named "connect" or "disconnect" to these
        # handlers; a connected client sending one must not re-register or drop itself.
        if sio.manager.is_connected(sid, "/"):
            return _error(BadRequest(f"'{event}' is reserved and cannot be sent"))
        return None

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> Ack | None:
        if (fake := lifecycle_event_from_client(sid, "connect")) is not None:
            return fake
        identity = identify(relay, auth)
        relay.connect(sid, sio.manager.eio_sid_from_sid(sid, "/"), identity.user, identity)
        return None

    # Lost transports (not a goodbye from either side) keep their session for recovery.
    goodbyes = {sio.reason.CLIENT_DISCONNECT, sio.reason.SERVER_DISCONNECT}

    async def disconnect(sid: str, *args: Any) -> Ack | None:
        return disconnect_now(sid, args[0] if args else None)

    def disconnect_now(sid: str, reason: Any) -> Ack | None:
        # (the same, as a plain function: RelaySocketIO runs it without a coroutine)
        if (fake := lifecycle_event_from_client(sid, "disconnect")) is not None:
            return fake
        recoverable = reason is not None and (
            reason not in goodbyes
            # (a shutdown closing it, when its session can move to another node)
            or (relay.moving and reason == sio.reason.SERVER_DISCONNECT)
        )
        relay.disconnect(sid, recoverable=recoverable)
        return None

    def make(event: str) -> Callable[..., Awaitable[Ack]]:
        async def handle(sid: str, *args: Any) -> Ack:
            result = dispatch(relay, event, sid, args)
            return result if type(result) is dict else await settle(result)  # type: ignore[arg-type]

        return handle

    async def catch_all(event: Any, sid: str, *args: Any) -> Ack:
        result = dispatch(relay, str(event)[:64], sid, args)
        return result if type(result) is dict else await settle(result)  # type: ignore[arg-type]

    eio_disconnect = sio.eio.handlers["disconnect"]

    async def eio_closed(eio_sid: str, reason: Any = None) -> None:
        await eio_disconnect(eio_sid, reason)
        # python-engineio never wakes a long-poll GET parked on a session its client closed;
        # relay.disconnect does (via the transport), but a session refused at connect has no
        # relay connection, so without this its GET (and the client) hangs until the next ping.
        _wake_poll(eio_sid, reason)

    def _wake_poll(eio_sid: str, reason: Any) -> None:
        sock = sio.eio.sockets.get(eio_sid)
        if sock is not None and reason == sio.eio.reason.CLIENT_DISCONNECT:
            sock.queue.put_nowait(None)

    def eio_closed_now(eio_sid: str, reason: Any) -> bool:
        # eio_closed without awaiting, when RelaySocketIO can (see RelayEngine.disconnect_now)
        if not isinstance(sio, RelaySocketIO) or not sio.handle_eio_disconnect_now(eio_sid, reason):
            return False
        _wake_poll(eio_sid, reason)
        return True

    sio.eio.on("disconnect", eio_closed)
    if isinstance(sio.eio, RelayEngine):
        sio.eio.disconnect_now = (eio_closed, eio_closed_now)
    if isinstance(sio, RelaySocketIO):
        # (with recovery off too: then it never finds a session to hand back, and the CONNECT
        # still needs no task on relay's websocket path)
        sio.gate = lambda auth: gate(relay, auth)
    sio.before_drain = relay.move_out  # (relay.app.drain)
    wait = min(relay.settings.shutdown_timeout / 3, ANSWER_WAIT_S)
    sio.finish_answers = functools.partial(relay.finish, wait)
    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    if isinstance(sio, RelaySocketIO):
        sio.disconnect_now = (disconnect, disconnect_now)
    for event, handler in HANDLERS.items():
        sio.on(event, make(event))
        if isinstance(sio, RelaySocketIO):
            # the same handler, for RelaySocketIO's packet fast path: (sid, args) -> ack
            fast: FastHandler = functools.partial(run, relay, event, handler)
            sio.fast_handlers[event] = fast
    sio.on("*", catch_all)
