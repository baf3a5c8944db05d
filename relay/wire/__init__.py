"""The wire: bytes on sockets up to Socket.IO packets, with no idea of rooms or users.

- :mod:`~relay.wire.http`: uvicorn's HTTP protocol with the edge in front
  (:mod:`~relay.wire.guard`: connection counts, connect and byte rates per IP, header timeouts);
- :mod:`~relay.wire.handshake`, :mod:`~relay.wire.websocket`, :mod:`~relay.wire.frames`,
  :mod:`~relay.wire.flusher`: relay's own WebSocket protocol (the opening handshake, the
  connection and its frame reader, the frame encoder, the loop-wide writer);
- :mod:`~relay.wire.engine` and :mod:`~relay.wire.polling`: Engine.IO sessions over websocket
  and HTTP long-polling; :mod:`~relay.wire.sio`: Socket.IO packets and acks on top;
- :mod:`~relay.wire.transport`: what the core sees of all that, "send this packet to these
  connections" (:class:`~relay.wire.transport.Transport`).

Arrows point down: relay's edge (the app, handlers, API) -> relay.backends -> relay.core ->
relay.wire. Nothing here imports from relay.core, relay.backends or the edge; everything may
import the leaves (relay.errors, relay.names, relay.limits, relay.settings).
"""
