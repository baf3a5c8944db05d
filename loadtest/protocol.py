"""Engine.IO v4 / Socket.IO v5 framing for the swarm: just what a load client needs.

Engine.IO packets are one text frame each over websocket, or joined by ``\\x1e`` in a
long-polling body; the first character is the type (``0`` open, ``1`` close, ``2`` ping, ``3``
pong, ``4`` message, ``6`` noop). A message carries a Socket.IO packet: ``0`` connect, ``1``
disconnect, ``2`` event, ``3`` ack, ``4`` connect error, then an optional ack id and a JSON array
(or object for connect). Deliveries — ``42["message",{envelope}]`` — are recognised by prefix and
their envelope parsed straight from the bytes, without building a packet object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

RECORD_SEPARATOR = "\x1e"
DELIVERY_PREFIX = b'42["message",'
DELIVERY_PREFIX_LEN = len(DELIVERY_PREFIX)
PING = "2"
PONG = "3"


class ProtocolError(Exception):
    """The server said something a Socket.IO v5 server would not."""


@dataclass(frozen=True)
class Handshake:
    """The Engine.IO ``open`` packet's fields."""

    sid: str
    ping_interval_ms: int
    ping_timeout_ms: int
    max_payload: int
    upgrades: tuple[str, ...]


def parse_open(text: str) -> Handshake:
    if not text.startswith("0"):
        raise ProtocolError(f"expected an Engine.IO open packet, got {text[:40]!r}")
    d = orjson.loads(text[1:])
    return Handshake(
        sid=str(d["sid"]),
        ping_interval_ms=int(d.get("pingInterval", 25000)),
        ping_timeout_ms=int(d.get("pingTimeout", 20000)),
        max_payload=int(d.get("maxPayload", 1_000_000)),
        upgrades=tuple(d.get("upgrades", ())),
    )


def endpoint(url: str, transport: str, path: str = "/socket.io/") -> str:
    """``http://h:p`` -> the Engine.IO URL for ``transport`` (ws:// for websocket)."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    if transport == "websocket":
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    else:
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return urlunsplit((scheme, parts.netloc, path, f"EIO=4&transport={transport}", ""))


def connect_packet(auth: dict[str, Any] | None) -> str:
    """Socket.IO CONNECT to the default namespace, wrapped in an Engine.IO message."""
    return "40" if not auth else "40" + orjson.dumps(auth).decode()


def event_packet(event: str, payload: Any, ack_id: int | None = None) -> str:
    """``42[ack id]["event", payload]``."""
    head = "42" if ack_id is None else f"42{ack_id}"
    return head + orjson.dumps([event, payload]).decode()


def parse_message(text: str) -> tuple[str, int | None, Any]:
    """A Socket.IO packet inside an Engine.IO message (``4...``) -> (type, ack id, data).

    Only the default namespace is used, so a ``/nsp,`` prefix never occurs.
    """
    if len(text) < 2 or text[0] != "4":
        raise ProtocolError(f"not an Engine.IO message: {text[:40]!r}")
    kind = text[1]
    i = 2
    n = len(text)
    while i < n and text[i].isdigit():
        i += 1
    ack_id = int(text[2:i]) if i > 2 else None
    data = orjson.loads(text[i:]) if i < n else None
    return kind, ack_id, data


def ack_result(args: Any) -> tuple[bool, str | None]:
    """An ack's first argument -> (ok, error code). Tolerant: no ``ok`` and no error is ok."""
    first = args[0] if isinstance(args, list) and args else args
    if isinstance(first, dict):
        err = first.get("error")
        ok = first.get("ok")
        if ok is False or (ok is None and err):
            code = err.get("code") if isinstance(err, dict) else err
            return False, str(code or "error")
        return True, None
    return True, None


def delivery_payload(frame: bytes | memoryview) -> Any:
    """The envelope of a ``42["message",{...}]`` frame (prefix and closing bracket cut off)."""
    return orjson.loads(frame[DELIVERY_PREFIX_LEN:-1])


def split_payload(body: str) -> list[str]:
    """A long-polling body -> its Engine.IO packets."""
    return body.split(RECORD_SEPARATOR) if body else []
