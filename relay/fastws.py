"""relay's uvicorn WebSocket protocol: uvicorn's own, plus a pre-encoded-frame fast path.

uvicorn takes the class with ``ws=``. Every accepted connection's ASGI scope carries the
extension ``scope["extensions"]["relay.fastws"]``: the protocol object itself, which offers

- :meth:`FastWebSocketProtocol.write_frame`: queue bytes that are already a whole WebSocket frame
  (see :func:`text_frame`), written with one ``transport.write`` per connection per event-loop
  iteration however many frames a burst queued (coalescing);
- a per-connection send-buffer ``limit``: past it the connection is aborted and
  :attr:`FastWebSocketProtocol.drop_reason` says why (backpressure: a client that stops reading
  never grows the server's memory without bound, and never slows anyone else down).

Frames the application sends through ASGI ``websocket.send``/``close`` go out after anything
already queued on the fast path, so a connection's frames keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "relay.fastws"

log = logging.getLogger("relay.fastws")

_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server-to-client WebSocket frame (RFC 6455 §5.2)."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _U16.pack(first, 126, n) + payload
    return _U64.pack(first, 127, n) + payload


def text_frame(text: str | bytes) -> bytes:
    return frame(0x1, text.encode() if isinstance(text, str) else text)


def binary_frame(data: bytes) -> bytes:
    return frame(0x2, data)


class _Flusher:
    """Writes every connection's queued frames once per event-loop iteration."""

    __slots__ = ("dirty", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[FastWebSocketProtocol] = []
        self.scheduled = False

    def add(self, proto: FastWebSocketProtocol) -> None:
        self.dirty.append(proto)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for proto in dirty:
            proto.flush()


_flushers: dict[asyncio.AbstractEventLoop, _Flusher] = {}


def _flusher_for(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        # one per loop (tests run servers in threads); closed loops are forgotten
        for old in [lp for lp in _flushers if lp.is_closed()]:
            del _flushers[old]
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class FastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol with relay's pre-encoded-frame fast path."""

    #: bytes a connection may have queued (ours plus the transport's) before it is dropped
    limit: int = 4 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flusher = _flusher_for(self.loop)
        self.drop_reason: str | None = None

    # -- the fast path -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.handshake_complete and not (self.close_sent or self.disconnected)

    def write_frame(self, data: bytes) -> bool:
        """Queue one pre-encoded frame; False when the connection is gone or was just dropped."""
        if self.close_sent or self.disconnected:
            return False
        pending = self._pending
        if not pending:
            self._flusher.add(self)
        pending.append(data)
        self._pending_size += len(data)
        if self._pending_size + self.transport.get_write_buffer_size() > self.limit:
            self.overflow()
            return False
        return True

    def buffered(self) -> int:
        """Bytes accepted for this connection and not yet handed to the kernel."""
        return self._pending_size + self.transport.get_write_buffer_size()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        self._pending_size = 0
        if not (self.disconnected or self.transport.is_closing()):
            self.transport.write(data)

    def overflow(self) -> None:
        """The client is not reading: drop it rather than buffer without bound."""
        size = self.buffered()
        self._pending = []
        self._pending_size = 0
        self.drop_reason = f"send buffer over its limit ({size} > {self.limit} bytes): slow client"
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("dropping websocket %s: %s", client, self.drop_reason)
        self.close_sent = True
        self.transport.abort()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (no close handshake): for a peer that stopped answering."""
        if self.drop_reason is None:
            self.drop_reason = reason
        self._pending = []
        self._pending_size = 0
        if not self.disconnected:
            self.transport.abort()

    # -- uvicorn's protocol, hooked ------------------------------------------------------------

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    async def send(self, message: Any) -> None:
        if self._pending:
            self.flush()
        await super().send(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pending = []
        self._pending_size = 0
        super().connection_lost(exc)


__all__ = ["EXTENSION", "FastWebSocketProtocol", "binary_frame", "frame", "text_frame"]
