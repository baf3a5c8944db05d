"""Socket.IO events -> relay core calls. Thin: validate shape, call, answer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from relay import names
from relay.errors import BadRequest, Internal, RelayError
from relay.service import Relay, Sender

log = logging.getLogger("relay.handlers")

Ack = dict[str, Any]
Handler = Callable[[Relay, str, dict[str, Any]], Ack]


def _error(exc: RelayError) -> Ack:
    return {"ok": False, "error": exc.to_dict()}


def on_join(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    room = names.room_name(p.get("room"))
    since = names.offset(p["since"]) if "since" in p else None
    return relay.join(sid, room, since)


def on_leave(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    return relay.leave(sid, names.room_name(p.get("room")))


def on_publish(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    room = names.room_name(p.get("room"))
    event = names.event_name(p.get("event"))
    if "data" not in p:
        raise BadRequest("'publish' needs 'data'")
    exclude_self = names.flag(p.get("exclude_self", False), "exclude_self")
    member = relay.member(sid)
    message = relay.publish(Sender(sid, member.user), room, event, p["data"], exclude_self)
    return {"ok": True, "id": message.id, "offset": message.offset}


def on_direct(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    to = names.sid(p["to"]) if "to" in p else None
    user = names.user_name(p["user"]) if "user" in p else None
    event = names.event_name(p.get("event"))
    if "data" not in p:
        raise BadRequest("'direct' needs 'data'")
    member = relay.member(sid)
    message, delivered = relay.direct(
        Sender(sid, member.user), to=to, user=user, event=event, data=p["data"]
    )
    return {"ok": True, "id": message.id, "delivered": delivered}


def on_presence(relay: Relay, sid: str, p: dict[str, Any]) -> Ack:
    relay.member(sid)
    return relay.presence(names.room_name(p.get("room")))


HANDLERS: dict[str, Handler] = {
    "join": on_join,
    "leave": on_leave,
    "publish": on_publish,
    "direct": on_direct,
    "presence": on_presence,
}


def dispatch(relay: Relay, event: str, sid: str, args: tuple[Any, ...]) -> Ack:
    """Run one client event and always produce the contract's ack, never an exception."""
    try:
        handler = HANDLERS.get(event)
        if handler is None:
            raise BadRequest(f"unknown event {event!r}; expected one of {', '.join(HANDLERS)}")
        return handler(relay, sid, names.payload(args, event))
    except RelayError as exc:
        log.debug("%s %s rejected: %s", sid, event, exc.message)
        return _error(exc)
    except RecursionError:
        return _error(BadRequest("payload is nested too deeply"))
    except Exception:
        log.exception("internal error handling %r from %s", event, sid)
        return _error(Internal())


def connect_user(auth: Any) -> str | None:
    """The user an open-mode client names itself with ``auth: {user}``, validated."""
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise BadRequest(f"'auth' must be an object, got {type(auth).__name__}")
    user = auth.get("user")
    return None if user is None else names.user_name(user)


def register(sio: socketio.AsyncServer, relay: Relay) -> None:
    """Wire ``relay`` to ``sio``'s events on the default namespace."""

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            user = connect_user(auth)
        except RelayError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict()) from None
        relay.connect(sid, sio.manager.eio_sid_from_sid(sid, "/"), user)

    async def disconnect(sid: str, reason: Any = None) -> None:
        relay.disconnect(sid)

    def make(event: str) -> Callable[..., Awaitable[Ack]]:
        async def handle(sid: str, *args: Any) -> Ack:
            return dispatch(relay, event, sid, args)

        return handle

    async def catch_all(event: Any, sid: str, *args: Any) -> Ack:
        return dispatch(relay, str(event)[:64], sid, args)

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    for event in HANDLERS:
        sio.on(event, make(event))
    sio.on("*", catch_all)
