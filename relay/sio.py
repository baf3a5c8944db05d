"""relay's python-socketio server: its Engine.IO layer, a fast event path, an O(1) disconnect.

:class:`RelaySocketIO` decodes a plain EVENT packet on "/" with one ``orjson.loads``, awaits
the handler inline (as ``async_handlers=False`` does) and pushes the ack, encoded once, straight
to the connection; python-socketio's generic path walks every payload looking for binary
attachments on the way in and on the way out.

python-socketio's ``BaseManager.basic_disconnect`` copies and walks every room of the namespace
to find the ones a client was in, and every client has a room of its own, so 10,000 clients
closing at once cost 10,000² steps. :class:`RelayManager` keeps the reverse index (sid -> the
rooms it entered) and walks only those.
"""

from __future__ import annotations

from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from relay.engine import RelayEngine, RelaySocket


class RelayManager(socketio.AsyncManager):  # type: ignore[misc]
    """``AsyncManager`` with a sid -> rooms index."""

    def __init__(self) -> None:
        super().__init__()
        self._entered: dict[tuple[str, str], set[Any]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._entered.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._entered.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._entered[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        rooms = self._entered.pop((namespace, sid), None)
        ns_rooms = self.rooms.get(namespace)
        if rooms and ns_rooms is not None:
            # the catch-all room (None) last: basic_leave_room of the others reads it
            for room in sorted(rooms, key=lambda r: r is None):
                room_sids = ns_rooms.get(room)
                if room_sids is not None and sid in room_sids:
                    super().basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]


class RelaySocketIO(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's ASGI server on :class:`relay.engine.RelayEngine`."""

    def _engineio_server_class(self) -> type[RelayEngine]:
        return RelayEngine

    # -- the hot path: Socket.IO EVENT packets on "/" ------------------------------------------

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # "2[...]" or "2<id>[...]" on the default namespace: decoded once with orjson, the
        # handler awaited inline, the ack encoded once and pushed without a task. Everything
        # else (binary, other namespaces, CONNECT, ...) goes the python-socketio way.
        if type(data) is str and data[:1] == "2" and eio_sid not in self._binary_packet:
            parsed = _parse_event(data)
            if parsed is not None:
                await self._fast_event(eio_sid, parsed[0], parsed[1])
                return
        await super()._handle_eio_message(eio_sid, data)

    async def _fast_event(self, eio_sid: str, ack_id: int | None, args: list[Any]) -> None:
        manager = self.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if not manager.is_connected(sid, "/"):
            return
        result = await self._trigger_event(args[0], "/", sid, *args[1:])
        if ack_id is None or result is self.not_handled:
            return
        if result is None:
            ack: list[Any] = []
        elif isinstance(result, tuple):
            ack = list(result)
        else:
            ack = [result]
        try:
            text = f"3{ack_id}" + orjson.dumps(ack).decode()
        except TypeError:  # binary or exotic data: python-socketio knows how
            pkt = self.packet_class(sio_packet.ACK, namespace="/", id=ack_id, data=ack)
            await self._send_packet(eio_sid, pkt)
            return
        sock = self.eio.sockets.get(eio_sid)
        if isinstance(sock, RelaySocket):
            sock.push(eio_packet.Packet(eio_packet.MESSAGE, text))
        else:
            await self.eio.send(eio_sid, text)


def _parse_event(data: str) -> tuple[int | None, list[Any]] | None:
    """``2<id>?[event, ...]`` on "/" -> (id, args); None when not that simple shape."""
    i = 1
    n = len(data)
    while i < n and data[i].isdigit():
        i += 1
    if i >= n or data[i] != "[":
        return None
    try:
        args = orjson.loads(data[i:])
    except orjson.JSONDecodeError:
        return None
    if type(args) is not list or not args or type(args[0]) is not str:
        return None
    return (int(data[1:i]) if i > 1 else None), args


__all__ = ["RelayManager", "RelaySocketIO"]
