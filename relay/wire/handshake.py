"""The WebSocket opening handshake's pieces (RFC 6455 §4.2), shared by both ways in.

A websocket arrives either through uvicorn's HTTP protocol (relay.wire.http hands the parsed
upgrade request to :meth:`relay.wire.websocket.FastWebSocketProtocol.upgrade`) or, for an
application with a :data:`DIRECT` acceptor, without ASGI at all
(:meth:`~relay.wire.websocket.FastWebSocketProtocol.accept_detached`). Either way the answer is
``101 Switching Protocols`` with :func:`accept_key`, or an HTTP refusal with its status phrase.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.utils import get_remote_addr

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


#: the attribute by which an ASGI application (or one it wraps, as ``.app``: uvicorn's proxy
#: headers middleware) may take a websocket before ASGI sees it: a callable of (protocol, path,
#: raw query, headers) that returns True when it answered with
#: :meth:`FastWebSocketProtocol.accept_detached` (or refused), False to let ASGI have it
DIRECT = "accept_websocket"


def direct_acceptor(app: Any) -> Callable[..., bool] | None:
    """``app``'s :data:`DIRECT` acceptor, or that of an application it wraps; or None."""
    for _ in range(8):
        hook = getattr(app, DIRECT, None)
        if hook is not None:
            return hook  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


#: an address not looked up yet
UNKNOWN: Any = object()


def address(proto: Any, attr: str, lookup: Callable[[Any], Any]) -> Any:
    """``proto``'s address kept in ``attr``, looked up from its transport the first time."""
    value = getattr(proto, attr)
    if value is UNKNOWN:
        value = lookup(proto.transport)
        setattr(proto, attr, value)
    return value


def peer(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """The peer's (host, port): what uvicorn's ``get_remote_addr`` gives a TCP transport, with
    one look-up instead of a socket object's."""
    info = transport.get_extra_info("peername")
    if info.__class__ is tuple and len(info) == 2:  # (IPv4: IPv6 has four fields)
        return info
    return get_remote_addr(transport)  # type: ignore[arg-type]


__all__ = [
    "DIRECT",
    "SWITCHING",
    "UNKNOWN",
    "accept_key",
    "address",
    "direct_acceptor",
    "peer",
    "phrase",
]
