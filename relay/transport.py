"""Delivery of pre-encoded packets to local connections.

The relay core hands this strategy a Socket.IO packet's text, encoded once, and the sids that
must receive it; the transport puts the very same bytes on each connection without creating a
task or an object per recipient beyond what the connection's own queue needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from engineio import packet as eio_packet

from relay.fastws import text_frame


class Transport(Protocol):
    """Where the relay core's packets go. Implementations must not await."""

    def attach(self, sid: str, eio_sid: str) -> None: ...

    def detach(self, sid: str) -> None: ...

    def send(self, sid: str, packet: str) -> bool: ...

    def send_many(self, sids: Iterable[str], packet: str, skip: str | None = None) -> int: ...


class EngineIOTransport:
    """Delivers straight to each connection, bypassing per-recipient tasks.

    A websocket served by relay's own protocol (:mod:`relay.fastws`) gets the packet as a
    WebSocket frame encoded once for all recipients and written without a task or a queue;
    any other connection (HTTP long-polling) gets it through python-engineio's queue, as one
    shared Engine.IO packet object that caches its own encoding.
    """

    def __init__(self, eio: Any) -> None:
        self._eio = eio
        self._sockets: dict[str, Any] = {}

    def attach(self, sid: str, eio_sid: str) -> None:
        sock = self._eio.sockets.get(eio_sid)
        if sock is not None:
            self._sockets[sid] = sock

    def detach(self, sid: str) -> None:
        sock = self._sockets.pop(sid, None)
        if sock is not None and getattr(sock, "fast", None) is None:
            # Release a long-poll GET still parked on this socket's queue (and a websocket
            # writer): without it a polling client's goodbye hangs until the next ping.
            sock.queue.put_nowait(None)

    def send(self, sid: str, packet: str) -> bool:
        return self.send_many((sid,), packet) == 1

    def send_many(self, sids: Iterable[str], packet: str, skip: str | None = None) -> int:
        sockets = self._sockets
        frame: bytes | None = None
        pkt: Any = None
        sent = 0
        for sid in sids:
            if sid == skip:
                continue
            sock = sockets.get(sid)
            if sock is None or sock.closing or sock.closed:
                continue
            fast = getattr(sock, "fast", None)
            if fast is not None:
                if frame is None:
                    frame = text_frame("4" + packet)
                if fast.write_frame(frame):
                    sent += 1
                continue
            if pkt is None:
                pkt = eio_packet.Packet(eio_packet.MESSAGE, packet)
            sock.queue.put_nowait(pkt)
            sent += 1
        return sent
