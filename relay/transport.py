"""Delivery of pre-encoded packets to local connections.

The relay core hands this strategy a Socket.IO packet's text, encoded once, and the sids that
must receive it; the transport puts the very same bytes on each connection without creating a
task or an object per recipient beyond what the connection's own queue needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from engineio import packet as eio_packet


class Transport(Protocol):
    """Where the relay core's packets go. Implementations must not await."""

    def attach(self, sid: str, eio_sid: str) -> None: ...

    def detach(self, sid: str) -> None: ...

    def send(self, sid: str, packet: str) -> bool: ...

    def send_many(self, sids: Iterable[str], packet: str, skip: str | None = None) -> int: ...


class EngineIOTransport:
    """Writes into python-engineio's per-socket queues, bypassing per-recipient tasks."""

    def __init__(self, eio: Any) -> None:
        self._eio = eio
        self._sockets: dict[str, Any] = {}

    def attach(self, sid: str, eio_sid: str) -> None:
        sock = self._eio.sockets.get(eio_sid)
        if sock is not None:
            self._sockets[sid] = sock

    def detach(self, sid: str) -> None:
        sock = self._sockets.pop(sid, None)
        if sock is not None:
            # Release a long-poll GET still parked on this socket's queue (and a websocket
            # writer): without it a polling client's goodbye hangs until the next ping.
            sock.queue.put_nowait(None)

    def send(self, sid: str, packet: str) -> bool:
        sock = self._sockets.get(sid)
        if sock is None or sock.closing or sock.closed:
            return False
        sock.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, packet))
        return True

    def send_many(self, sids: Iterable[str], packet: str, skip: str | None = None) -> int:
        # One Engine.IO packet object for everyone: it caches its own encoding.
        pkt = eio_packet.Packet(eio_packet.MESSAGE, packet)
        sockets = self._sockets
        sent = 0
        for sid in sids:
            if sid == skip:
                continue
            sock = sockets.get(sid)
            if sock is None or sock.closing or sock.closed:
                continue
            sock.queue.put_nowait(pkt)
            sent += 1
        return sent
