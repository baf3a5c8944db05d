"""HTTP long-polling's two bounds: what the server holds for a client, and what it reads.

A polling client takes its packets by GET; one that stops (or never starts) polling would
make the server queue without end. :class:`SendQueue` is every polling session's packet
queue, and every way a packet gets there (``RelaySocket.push``, python-engineio's ``send``,
``relay.wire.transport``'s deliveries) ends in its ``put_nowait``: it counts what it holds and,
past the connection's send bound (``RELAY_MAX_BUFFER``, as for a websocket), drops what it
holds and has the session closed as a slow client.

A POST body is read only up to the transport limit (``max_http_buffer_size``), whatever its
``Content-Length`` says or however it is chunked, and is answered 413 past it; a body that is
not UTF-8 or not an Engine.IO payload is answered 400 (:func:`post_packets`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet
from engineio import payload as eio_payload

#: what one queued packet costs beyond its data (the packet object, the queue's slot): a
#: polling client must not be able to queue a million one-byte NOOPs under the byte bound
PACKET_OVERHEAD = 64

#: a POST body the server will not take, or a session that takes no more: (status, message)
Refusal = tuple[int, str]

_CLOSE = eio_packet.Packet(eio_packet.CLOSE)


def packet_size(pkt: Any) -> int:
    """What ``pkt`` counts for in a :class:`SendQueue`."""
    data = pkt.data
    if data.__class__ is str or data.__class__ is bytes:
        return PACKET_OVERHEAD + len(data)
    return PACKET_OVERHEAD


class SendQueue(asyncio.Queue[Any]):
    """A polling session's packets, bounded in bytes (``None`` items, wake-ups, count nothing).

    Past ``limit`` the queue empties itself, keeps only a CLOSE packet for the client's next
    poll, calls ``on_overflow(reason)`` once (the session closes: relay's disconnect runs, its
    rooms hear a leave) and takes nothing more. It holds no reference to its session, so a
    session that ends is freed without the garbage collector.
    """

    def __init__(self, limit: int, on_overflow: Callable[[str], None]) -> None:
        super().__init__()
        self.limit = limit
        self.on_overflow = on_overflow
        #: bytes held (see :func:`packet_size`)
        self.size = 0
        #: over the bound once: the session is being dropped
        self.dropped = False

    def put_nowait(self, item: Any) -> None:
        if item is not None:
            if self.dropped:
                return
            data = item.data  # (packet_size, inline: every polling recipient of a broadcast)
            if data.__class__ is str or data.__class__ is bytes:
                size = self.size + PACKET_OVERHEAD + len(data)
            else:
                size = self.size + PACKET_OVERHEAD
            if size > self.limit:
                self._overflow(size)
                return
            self.size = size
        super().put_nowait(item)

    def get_nowait(self) -> Any:
        item = super().get_nowait()  # (Queue.get ends here too)
        if item is not None:
            self.size -= packet_size(item)
        return item

    def _overflow(self, size: int) -> None:
        self.dropped = True
        while not self.empty():
            super().get_nowait()
            self.task_done()
        self.size = 0
        super().put_nowait(_CLOSE)  # the client's next poll tells it, then it reconnects
        super().put_nowait(None)
        self.on_overflow(f"send buffer over its limit ({size} > {self.limit} bytes): slow client")


class Payload(eio_payload.Payload):  # type: ignore[misc]
    # python-engineio's default (16) rejects a POST batching more packets, which clients do
    # under load; the body's byte limit (max_http_buffer_size) is the bound that matters, and
    # decoding stays linear in it (one split, then one packet per part).
    max_decode_packets = 1 << 20


def declared_too_large(environ: dict[str, Any], limit: int) -> bool:
    """The request says (``Content-Length``) that its body is over ``limit`` bytes."""
    declared = environ.get("CONTENT_LENGTH", "")
    return declared.isdigit() and int(declared) > limit


def post_packets(body: bytes, limit: int) -> list[Any] | Refusal:
    """The Engine.IO packets of a POST ``body`` read up to ``limit`` + 1 bytes, or why not."""
    if len(body) > limit:
        return 413, f"a POST body may be at most {limit} bytes"
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        return 400, f"the body is not UTF-8 (byte {exc.start})"
    try:
        packets: list[Any] = Payload(encoded_payload=text).packets
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return 400, f"the body is not an Engine.IO payload ({type(exc).__name__})"
    return packets


def refusal_response(refusal: Refusal) -> dict[str, Any]:
    """python-engineio's response dict for a refused request."""
    status, message = refusal
    phrase = "PAYLOAD TOO LARGE" if status == 413 else "BAD REQUEST"
    return {
        "status": f"{status} {phrase}",
        "headers": [("Content-Type", "text/plain")],
        "response": message.encode(),
    }


__all__ = [
    "PACKET_OVERHEAD",
    "Payload",
    "Refusal",
    "SendQueue",
    "declared_too_large",
    "packet_size",
    "post_packets",
    "refusal_response",
]
