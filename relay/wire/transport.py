"""Delivery of pre-encoded packets to local connections.

The relay core hands this strategy a Socket.IO packet's text, encoded once, and the sids that
must receive it; the transport puts the very same bytes on each connection without creating a
task or an object per recipient beyond what the connection's own queue needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from engineio import packet as eio_packet

from relay.wire.flusher import Flusher
from relay.wire.frames import text_frame
from relay.wire.websocket import HOLD_RATE


class Transport(Protocol):
    """Where the relay core's packets go. Implementations must not await."""

    def attach(self, sid: str, eio_sid: str) -> None: ...

    def detach(self, sid: str) -> None: ...

    def send(self, sid: str, packet: str) -> bool: ...

    def send_many(self, sids: Iterable[str], packet: str, skip: str | None = None) -> int: ...

    def send_room(
        self, room: str, version: int, sids: Iterable[str], packet: str, skip: str | None = None
    ) -> int:
        """``send_many`` to a room's ``sids``, which are the same while ``version`` is."""
        ...

    def hold_off(self, sid: str, seconds: float) -> None:
        """Read nothing more from ``sid`` for ``seconds`` (where the transport can)."""
        ...

    def kind(self, sid: str) -> str | None:
        """``websocket`` or ``polling`` (what ``sid`` is connected over now), None if gone."""
        ...


#: rooms whose recipients a transport remembers (a cache: past it, it starts over)
ROOM_CACHE_SIZE = 4096


class EngineIOTransport:
    """Delivers straight to each connection, bypassing per-recipient tasks.

    A websocket served by relay's own protocol (:mod:`relay.wire.websocket`) gets the packet as a
    WebSocket frame encoded once for all recipients, queued on the connection, and written by
    one loop-wide flush per event-loop iteration; any other connection (HTTP long-polling) gets
    it through python-engineio's queue, as one shared Engine.IO packet object that caches its
    own encoding.

    For rooms it keeps the list of recipients' Engine.IO sockets, rebuilt only when the room's
    membership ``version`` changes or a connection detaches, so a broadcast costs one short
    loop body per recipient: no lookup by sid, no call, no task.
    """

    def __init__(self, eio: Any) -> None:
        self._eio = eio
        self._sockets: dict[str, Any] = {}
        self._rooms: dict[str, tuple[int, list[Any]]] = {}

    def attach(self, sid: str, eio_sid: str) -> None:
        sock = self._eio.sockets.get(eio_sid)
        if sock is not None:
            self._sockets[sid] = sock

    def detach(self, sid: str) -> None:
        sock = self._sockets.pop(sid, None)
        if sock is not None:
            self._rooms.clear()  # no cached room may keep a gone connection alive
            if getattr(sock, "fast", None) is None:
                # Release a long-poll GET still parked on this socket's queue (and a websocket
                # writer): without it a polling client's goodbye hangs until the next ping.
                sock.queue.put_nowait(None)

    def kind(self, sid: str) -> str | None:
        sock = self._sockets.get(sid)
        if sock is None:
            return None
        return "websocket" if getattr(sock, "upgraded", False) else "polling"

    def send(self, sid: str, packet: str) -> bool:
        # _deliver for one recipient (every unicast), without its loop and bookkeeping
        sock = self._sockets.get(sid)
        if sock is None:
            return False
        fast = sock.fast
        if fast is not None:
            if fast.close_sent or fast.disconnected:
                return False
            return bool(fast.write_frame(text_frame("4" + packet)))
        if sock.closing or sock.closed:
            return False
        sock.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, packet))
        return True

    def hold_off(self, sid: str, seconds: float) -> None:
        # a websocket only: a long-polling client's requests are HTTP requests, read anyway
        sock = self._sockets.get(sid)
        fast = sock.fast if sock is not None else None
        if fast is not None:
            fast.throttle(seconds, HOLD_RATE)

    def _resolve(self, sids: Iterable[str]) -> list[Any]:
        """The attached sockets of ``sids`` (sids that are gone are skipped)."""
        return [s for s in map(self._sockets.get, sids) if s is not None]

    def _skip(self, skip: str | None) -> Any:
        return self._sockets.get(skip) if skip is not None else None

    def send_many(self, sids: Iterable[str], packet: str, skip: str | None = None) -> int:
        return self._deliver(self._resolve(sids), packet, self._skip(skip))

    def send_room(
        self, room: str, version: int, sids: Iterable[str], packet: str, skip: str | None = None
    ) -> int:
        cached = self._rooms.get(room)
        if cached is None or cached[0] != version:
            targets = self._resolve(sids)
            if len(self._rooms) >= ROOM_CACHE_SIZE:
                self._rooms.clear()
            self._rooms[room] = (version, targets)
        else:
            targets = cached[1]
        return self._deliver(targets, packet, self._skip(skip))

    def _deliver(self, targets: Iterable[Any], packet: str, skip: Any) -> int:
        # the hot loop of every broadcast: keep it free of calls and lookups by key. It queues
        # the one shared frame onto each connection's ``pending`` uncounted (a reference per
        # recipient, not bytes): the flush counts it against the connection's limit before it
        # joins or writes anything (Flusher.flush). Frames made per recipient go through
        # FastWebSocketProtocol.write_frame, which counts as they accumulate
        frame: bytes | None = None
        flusher: Flusher | None = None
        dirty: list[Any] = []
        pkt: Any = None
        sent = 0
        for sock in targets:
            fast = sock.fast
            if fast is not None:
                if sock is skip or fast.close_sent or fast.disconnected:
                    continue
                if frame is None:
                    frame = text_frame("4" + packet)
                    flusher = fast.flusher
                    dirty = flusher.dirty
                queued = fast.pending
                if queued is None:
                    fast.pending = frame
                    dirty.append(fast)
                elif queued.__class__ is list:
                    queued.append(frame)
                else:
                    fast.pending = [queued, frame]
                sent += 1
                continue
            if sock is skip or sock.closing or sock.closed:
                continue
            if pkt is None:
                pkt = eio_packet.Packet(eio_packet.MESSAGE, packet)
            sock.queue.put_nowait(pkt)
            sent += 1
        if flusher is not None and not flusher.scheduled:
            flusher.schedule()
        return sent
