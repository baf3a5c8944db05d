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

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "relay.fastws"

log = logging.getLogger("relay.fastws")

#: the logger of every websocket connection's own lines ("connection open", "[accepted]"):
#: two formatted log lines per connect are a good part of a connect storm's CPU, so they show
#: only at debug level (``relay serve --log-level debug``); warnings and errors always do
ws_log = logging.getLogger("relay.ws")
if ws_log.level == logging.NOTSET:
    ws_log.setLevel(logging.WARNING)

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


class Flusher:
    """Writes every dirty connection's queued frames, once per event-loop iteration.

    One per event loop (:func:`flusher_for`): a burst that queues frames for thousands of
    connections costs one ``call_soon``, and each connection one ``transport.write`` however
    many frames it got in that iteration.
    """

    __slots__ = ("dirty", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[FastWebSocketProtocol] = []
        self.scheduled = False

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        if not dirty:
            return
        self.dirty = []
        for proto in dirty:
            queued = proto.pending
            if queued is None:  # written already (an ASGI send came first)
                continue
            proto.pending = None
            if proto.close_sent or proto.disconnected:
                continue
            data = queued if queued.__class__ is bytes else b"".join(queued)
            if proto.paused and proto.over_limit(len(data)):
                continue
            try:  # (free unless it raises; one bad connection must not stall the others)
                proto.transport.write(data)
            except RuntimeError:  # the transport closed under us: connection_lost follows
                pass
            except Exception:
                log.exception("writing to a websocket failed")


_flushers: dict[asyncio.AbstractEventLoop, Flusher] = {}


def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        # one per loop (tests run servers in threads); closed loops are forgotten
        for old in [lp for lp in _flushers if lp.is_closed()]:
            del _flushers[old]
        flusher = _flushers[loop] = Flusher(loop)
    return flusher


def queue_frame(proto: FastWebSocketProtocol, data: bytes, flusher: Flusher) -> None:
    """Queue ``data`` on ``proto`` for ``flusher``'s next flush (the caller schedules it).

    Inline this in loops over many connections (see :mod:`relay.transport`): it is the whole
    per-recipient cost of a broadcast besides the write itself.
    """
    queued = proto.pending
    if queued is None:
        proto.pending = data
        flusher.dirty.append(proto)
    elif queued.__class__ is list:
        queued.append(data)
    else:
        proto.pending = [queued, data]


class Inbox:
    """The ASGI receive queue of one connection: what ``asyncio.Queue`` does for one reader.

    ``asyncio.Queue`` holds four deques (its items, getters, putters and an ``Event``'s
    waiters), about 2.5 KB per idle connection; this holds a list only while it has items.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if items is None:
            self._items = [item]
        else:
            items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        items = self._items
        item = items.pop(0)
        if not items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items or ())


class FastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol with relay's pre-encoded-frame fast path."""

    #: bytes a connection may have queued (ours plus the transport's) before it is dropped
    limit: int = 4 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.logger = ws_log
        self.conn.logger = ws_log
        #: frames queued in this loop iteration: None, one frame (bytes), or a list of frames
        #: (typed Any: the hot loops tell them apart by ``__class__``, which mypy cannot follow)
        self.pending: Any = None
        #: the transport's buffer is over its high-water mark (checked against ``limit``)
        self.paused = False
        self.flusher = flusher_for(self.loop)
        self.drop_reason: str | None = None

    # -- the fast path -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.handshake_complete and not (self.close_sent or self.disconnected)

    def set_limit(self, limit: int) -> None:
        """Drop the connection once more than ``limit`` bytes wait to be sent to it."""
        self.limit = limit
        if self.transport is not None:
            # the transport tells us (pause_writing) once its buffer passes this mark; under
            # it, no flush has to look at the buffer's size
            high = max(1, min(limit // 2, 64 * 1024))
            self.transport.set_write_buffer_limits(high=high, low=high // 2)

    def write_frame(self, data: bytes) -> bool:
        """Queue one pre-encoded frame; False when the connection is gone or was dropped."""
        if self.close_sent or self.disconnected:
            return False
        flusher = self.flusher
        queue_frame(self, data, flusher)
        if not flusher.scheduled:
            flusher.schedule()
        return True

    def buffered(self) -> int:
        """Bytes accepted for this connection and not yet handed to the kernel."""
        queued = self.pending
        if queued is None:
            size = 0
        elif queued.__class__ is bytes:
            size = len(queued)
        else:
            size = sum(len(f) for f in queued)
        return size + self.transport.get_write_buffer_size()

    def over_limit(self, extra: int) -> bool:
        """True (and the connection dropped) when ``extra`` more bytes would pass ``limit``."""
        size = self.transport.get_write_buffer_size() + extra
        if size <= self.limit:
            return False
        self.overflow(size)
        return True

    def flush(self) -> None:
        """Write what is queued now (before a frame that does not go through the queue)."""
        queued = self.pending
        if queued is None:
            return
        self.pending = None
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        data = queued if queued.__class__ is bytes else b"".join(queued)
        if self.paused and self.over_limit(len(data)):
            return
        self.transport.write(data)

    def overflow(self, size: int | None = None) -> None:
        """The client is not reading: drop it rather than buffer without bound."""
        if size is None:
            size = self.buffered()
        self.pending = None
        self.drop_reason = f"send buffer over its limit ({size} > {self.limit} bytes): slow client"
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("dropping websocket %s: %s", client, self.drop_reason)
        self.close_sent = True
        self.transport.abort()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (no close handshake): for a peer that stopped answering."""
        if self.drop_reason is None:
            self.drop_reason = reason
        self.pending = None
        self.close_sent = True
        if not self.disconnected:
            self.transport.abort()

    def pause_writing(self) -> None:
        self.paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        super().resume_writing()

    # -- uvicorn's protocol, hooked ------------------------------------------------------------

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    async def send(self, message: Any) -> None:
        if self.pending is not None:
            self.flush()
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # the handshake's request and response (two header maps, ~2 KB) are done with
            self.request = self.response = None  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending = None
        super().connection_lost(exc)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol, which lets go of itself once upgraded to a websocket.

    Its parser holds it (a reference cycle), so after an upgrade the protocol, the parser and
    their buffers waited for a full garbage collection, which under relay's GC settings
    (:mod:`relay.gctune`) is rare: about 2 KB of garbage per websocket. Unhooking the parser
    lets reference counting free them at once.
    """

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        self.parser = None  # type: ignore[assignment]


__all__ = [
    "EXTENSION",
    "FastWebSocketProtocol",
    "Flusher",
    "HttpProtocol",
    "Inbox",
    "binary_frame",
    "flusher_for",
    "frame",
    "queue_frame",
    "text_frame",
]
