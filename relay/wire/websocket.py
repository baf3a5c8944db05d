"""relay's uvicorn WebSocket protocol: uvicorn's own, plus a pre-encoded-frame fast path.

uvicorn takes the class with ``ws=``. Every accepted connection's ASGI scope carries the
extension ``scope["extensions"]["relay.fastws"]``: the protocol object itself, which offers

- :meth:`FastWebSocketProtocol.write_frame`: queue bytes that are already a whole WebSocket frame
  (see :func:`text_frame`), written with one ``transport.write`` per connection per event-loop
  iteration however many frames a burst queued (coalescing);
- a per-connection send-buffer ``limit``: past it the connection is aborted and
  :attr:`FastWebSocketProtocol.drop_reason` says why (backpressure: a client that stops reading
  never grows the server's memory without bound, and never slows anyone else down).

The limit holds on every way out (queued frames, a broadcast's frames, pongs, ASGI sends, the
Socket.IO CONNECT answer), checked before more is held: while what waits fits in the ``room``
left under the limit (the limit less the transport's high-water mark, or nothing once the
transport's buffer is past that mark) it costs one comparison; past it, what waits goes to the
transport at once in bounded pieces (:meth:`FastWebSocketProtocol.write_bounded`), each only
while the transport's buffer, what the kernel did not take, leaves room for it. A client that
reads loses nothing however much one loop iteration sends it; one that does not is dropped
holding at most the limit (or one frame). Only a close frame (one per connection) and the
handshake's answer are written past it.

Frames the application sends through ASGI ``websocket.send``/``close`` go out after anything
already queued on the fast path, so a connection's frames keep their order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from uvicorn.protocols.utils import ClientDisconnected, get_local_addr, get_remote_addr

from relay.limits import Bucket
from relay.wire.flusher import flusher_for
from relay.wire.frames import (
    MAX_FRAGMENTS,
    apply_mask,
    binary_frame,
    close_frame,
    frame,
    text_frame,
)
from relay.wire.guard import EdgeGuard
from relay.wire.handshake import SWITCHING, UNKNOWN, accept_key, address, direct_acceptor, phrase

#: why a connection's reading is paused (FastWebSocketProtocol.holds): reading resumes when no
#: reason is left. The ASGI inbox has unread messages; the Engine.IO reader's backlog is long
#: (relay.wire.engine); the client IP is over its inbound byte rate (relay.wire.guard)
HOLD_INBOX = 1
HOLD_BACKLOG = 2
HOLD_INBOUND = 4
#: the connection's events were refused ``rate_limited`` (relay.core.service): reading pauses, so a
#: client that ignores the answer costs the server a read a while, not a parse and an ack per
#: event it sends
HOLD_RATE = 8

#: bytes received by a connection between two charges to its IP's inbound bucket (relay.wire.guard):
#: the rate is kept to within this much per connection, and a small read costs an addition
METER_EVERY = 16 * 1024

EXTENSION = "relay.fastws"

log = logging.getLogger("relay.wire.websocket")

#: the logger of every websocket connection's own lines ("connection open", "[accepted]"):
#: two formatted log lines per connect are a good part of a connect storm's CPU, so they show
#: only at debug level (``relay serve --log-level debug``); warnings and errors always do
ws_log = logging.getLogger("relay.ws")
if ws_log.level == logging.NOTSET:
    ws_log.setLevel(logging.WARNING)


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

    def get_nowait(self) -> Any:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.pop(0)
        if not items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items or ())


class FastWebSocketProtocol(asyncio.Protocol):
    """A lean WebSocket server protocol for uvicorn (``ws=``), with relay's fast path.

    uvicorn's own protocols re-serialize the upgrade request that httptools already parsed and
    hand it to the ``websockets`` library to parse again, keep an ASGI task (and every frame of
    the application's coroutines) alive for as long as the connection lives, and carry some
    forty attributes per connection. This one:

    - takes the parsed request from :class:`HttpProtocol` (:meth:`upgrade`), checks the
      handshake itself (``Sec-WebSocket-Version: 13``, a ``Sec-WebSocket-Key`` of 16 bytes;
      else a clear HTTP 400 or 426) and writes the 101 answer in one piece;
    - speaks ASGI for the opening (``websocket.connect`` / ``websocket.accept``) and for as
      long as the application reads through ``receive``; an application that calls
      :meth:`detach` gets every later message through a callback instead, and its ASGI task
      may return without closing the connection, so an idle connection holds no task;
    - parses frames itself (RFC 6455: masked client frames, fragmentation, ping/pong, the
      closing handshake, ``ws_max_size``; no extensions, so permessage-deflate stays off).
    """

    __slots__ = (
        "_client",
        "_server",
        "app",
        "app_state",
        "close_sent",
        "close_timer",
        "config",
        "disconnected",
        "drop_reason",
        "edge",
        "edge_ip",
        "flusher",
        "fragment_op",
        "fragment_size",
        "fragments",
        "handshake_complete",
        "holds",
        "inbound",
        "inbox",
        "limit",
        "loop",
        "max_size",
        "need",
        "on_close",
        "on_message",
        "paused",
        "pending",
        "queued",
        "response",
        "rest",
        "room",
        "room_unpaused",
        "scope",
        "server_state",
        "transport",
        "unmetered",
        "waiter",
    )

    #: bytes a connection may have queued (ours plus the transport's) before it is dropped
    LIMIT = 4 * 1024 * 1024
    #: seconds to wait for the client's answer to our close frame
    CLOSE_TIMEOUT = 10.0

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.max_size: int = config.ws_max_size
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        #: the peer's and our address: looked up when first asked for (see :attr:`client`)
        self._client: Any = None
        self._server: Any = None
        self.scope: dict[str, Any] | None = None
        self.inbox: Inbox | None = None
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer: asyncio.TimerHandle | None = None
        #: why reading is paused (HOLD_* bits; read again when none is left)
        self.holds = 0
        #: the client IP's inbound byte bucket (relay.wire.guard), shared with its other
        #: connections: looked up when the connection has received METER_EVERY bytes
        self.inbound: Bucket | None = None
        #: bytes received and not yet charged to ``inbound`` (see ``data_received``)
        self.unmetered = 0
        #: a denial response being assembled (``websocket.http.response.*``)
        self.response: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        #: unparsed input (a frame's first part) and how many bytes of it the parser needs
        #: before it can make progress; the fragments of a message in progress, their size on
        #: the wire (headers included) and the message's opcode
        self.rest: bytearray | None = None
        self.need = 0
        self.fragments: list[bytes] | None = None
        self.fragment_size = 0
        self.fragment_op = 0
        #: set by :meth:`detach`
        self.on_message: Callable[[str | bytes], None] | None = None
        self.on_close: Callable[[], None] | None = None
        #: an ASGI send waiting for the transport to drain
        self.waiter: asyncio.Future[None] | None = None
        #: frames queued in this loop iteration: None, one frame (bytes), or a list of frames
        #: (typed Any: the hot loops tell them apart by ``__class__``, which mypy cannot follow)
        self.pending: Any = None
        #: bytes in ``pending`` while it is a list, as far as write_frame counted them (frames a
        #: broadcast adds, :mod:`relay.wire.transport`, are counted by the flush); 0 otherwise
        self.queued = 0
        #: the transport's buffer is over its high-water mark (checked against ``limit``)
        self.paused = False
        #: bytes that may be queued without looking at the transport's buffer: ``limit`` less
        #: the buffer's high-water mark while writing is not paused (the buffer is under the
        #: mark then), 0 while it is (then every write looks)
        self.room_unpaused = self.room = self.LIMIT - 64 * 1024
        self.flusher = flusher_for(self.loop)
        self.drop_reason: str | None = None
        self.limit = self.LIMIT
        #: the edge guard counting this TCP connection (handed over by HttpProtocol at the
        #: upgrade; released once, when the connection is lost), and the IP it counts it under
        self.edge: EdgeGuard | None = None
        self.edge_ip: str | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvicorn's way in; :class:`HttpProtocol` uses :meth:`adopt`)
        self.adopt(transport, UNKNOWN, UNKNOWN)  # type: ignore[arg-type]

    def adopt(self, transport: asyncio.Transport, server: Any, client: Any) -> None:
        """Take ``transport`` over; ``server`` and ``client`` are its addresses, or
        :data:`UNKNOWN` for one to look up when asked for."""
        self.server_state.connections.add(self)
        self.transport = transport
        self._server = server
        self._client = client

    @property
    def client(self) -> tuple[str, int] | None:
        """The peer's address (looked up once, when first asked for: logs, an ASGI scope)."""
        return address(self, "_client", get_remote_addr)  # type: ignore[no-any-return]

    @property
    def server(self) -> tuple[str, int | None] | None:
        """Our address (looked up once, when first asked for)."""
        return address(self, "_server", get_local_addr)  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        edge = self.edge
        if edge is not None:
            self.edge = None
            edge.release(self.edge_ip)
        code = 1005 if self.handshake_complete else 1006
        self.handshake_complete = True
        self.disconnected = True
        self.pending = None
        self.queued = 0
        self.rest = None
        self.fragments = None
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self._wake_writer()
        self._closed(code, "")
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        self.paused = True
        self.room = 0

    def resume_writing(self) -> None:
        self.paused = False
        self.room = self.room_unpaused
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's server is stopping: close with 1012 (service restart)."""
        if self.close_sent:
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
            return
        if self.handshake_complete:
            if not self.flush():  # dropped: what was queued was over the limit
                return
            self.close_sent = True
            self.transport.write(close_frame(1012))
            self._closed(1012, "")
        else:
            self._respond(500, b"Internal Server Error")
        self.transport.close()

    # -- the opening handshake -----------------------------------------------------------------

    def upgrade(
        self, method: str, url: bytes, headers: list[tuple[bytes, bytes]], scope: Any
    ) -> None:
        """Answer an upgrade request httptools parsed (``scope`` is its HTTP scope)."""
        key = version = None
        subprotocols: list[str] = []
        for name, value in headers:
            if name == b"sec-websocket-key":
                key = value
            elif name == b"sec-websocket-version":
                version = value
            elif name == b"sec-websocket-protocol":
                subprotocols.extend(t.strip() for t in value.decode("latin-1").split(","))
        if method != "GET":
            self._refuse(405, "a WebSocket handshake must be a GET request\n")
            return
        if version is None or version.strip() != b"13":
            self._refuse(
                426,
                "unsupported or missing Sec-WebSocket-Version (this server speaks 13)\n",
                [(b"Sec-WebSocket-Version", b"13")],
            )
            return
        try:
            raw_key = base64.b64decode(key or b"", validate=True)
        except (binascii.Error, ValueError):
            raw_key = b""
        if len(raw_key) != 16:
            self._refuse(400, "missing or invalid Sec-WebSocket-Key (must be 16 bytes, base64)\n")
            return
        accept = accept_key(key or b"")
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        root_path = scope.get("root_path", "")
        self.response = (101, [], accept)
        config = self.config
        direct = getattr(config, "relay_acceptor", UNKNOWN)  # (looked up once per server)
        if direct is UNKNOWN:
            direct = config.relay_acceptor = direct_acceptor(self.app)
        if direct is not None and not root_path and direct(self, path, query, headers):
            return  # taken without ASGI: no scope, no inbox, no task (see accept_detached)
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if scope.get("scheme") == "https" else "ws",
            "server": self.server,
            "client": self.client,
            "root_path": root_path,
            "path": root_path + path,
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": scope.get("state", {}),
            "extensions": {"websocket.http.response": {}, EXTENSION: self},
        }
        inbox = self.inbox = Inbox()
        inbox.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def refuse_with(self, answer: bytes) -> None:
        """Answer the handshake with ``answer`` (a whole HTTP response: relay.wire.guard's refusals)
        instead of upgrading, and close."""
        self.response = None
        self.handshake_complete = True
        self.close_sent = True
        self.transport.write(answer)
        self.transport.close()

    def _refuse(
        self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        ws_log.warning("refused a websocket handshake from %s: %d %s", client, status, text.strip())
        self.handshake_complete = True
        self.close_sent = True
        self._respond(status, text.encode(), headers)
        self.transport.close()

    def _respond(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """An HTTP response instead of the upgrade (then the connection closes)."""
        names = {name.lower() for name, _ in headers or ()}
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase(status).encode())]
        for name, value in [*self.server_state.default_headers, *(headers or ())]:
            lines.append(name + b": " + value + b"\r\n")
        if b"content-type" not in names:
            lines.append(b"content-type: text/plain; charset=utf-8\r\n")
        lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        lines.append(body)
        self.transport.write(b"".join(lines))

    # -- ASGI ----------------------------------------------------------------------------------

    async def run_asgi(self) -> None:
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            log.exception("Exception in ASGI application")
            self._send_500()
        else:
            if not self.handshake_complete:
                log.error("ASGI callable returned without completing handshake.")
                self._send_500()
            elif result is not None:
                log.error("ASGI callable should return None, but returned %r.", result)
        self.scope = None
        if self.on_message is not None and not self.close_sent:
            return  # detached: the connection lives on without the task
        if self.close_timer is None:
            self.transport.close()

    def _send_500(self) -> None:
        if not self.handshake_complete:
            self.handshake_complete = True
            self.close_sent = True
            self._respond(500, b"Internal Server Error")

    async def receive(self) -> dict[str, Any]:
        inbox = self.inbox
        if inbox is None:  # detached: nothing comes this way any more
            return {"type": "websocket.disconnect", "code": 1005}
        message = await inbox.get()
        if self.holds & HOLD_INBOX and inbox.empty():
            self.release(HOLD_INBOX)
        return message  # type: ignore[no-any-return]

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if self.disconnected:
            raise ClientDisconnected()
        if not self.handshake_complete:
            self._send_handshake(kind, message)
            return
        if self.close_sent:
            raise ClientDisconnected()
        if self.pending is not None and not self.flush():
            raise ClientDisconnected()  # dropped: what was queued was over the limit
        if self.paused and not self.disconnected:
            waiter = self.waiter = self.loop.create_future()
            await waiter
            if self.disconnected or self.close_sent:
                raise ClientDisconnected()
        if kind == "websocket.send":
            data = message.get("bytes")
            out = binary_frame(data) if data is not None else text_frame(message.get("text") or "")
            if not self.write_bounded(out):
                raise ClientDisconnected()
        elif kind == "websocket.close":
            self.close(message.get("code", 1000), message.get("reason") or "")
        else:
            raise RuntimeError(
                f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {kind!r}."
            )

    def _send_handshake(self, kind: str, message: Any) -> None:
        response = self.response
        if kind == "websocket.accept" and response is not None and response[0] == 101:
            self.response = None
            if self.transport.is_closing():
                return
            lines = [SWITCHING, response[2], b"\r\n"]
            for name, value in self.server_state.default_headers:
                lines += [name, b": ", value, b"\r\n"]
            for name, value in message.get("headers") or ():
                lines += [name, b": ", value, b"\r\n"]
            subprotocol = message.get("subprotocol")
            if subprotocol:
                lines += [b"Sec-WebSocket-Protocol: ", subprotocol.encode(), b"\r\n"]
            lines.append(b"\r\n")
            self.handshake_complete = True
            self.transport.write(b"".join(lines))
            if ws_log.isEnabledFor(logging.DEBUG):
                ws_log.debug(
                    "%s - websocket %s [accepted]", self.client, self.scope and self.scope["path"]
                )
        elif kind == "websocket.close":
            self.response = None
            self.handshake_complete = True
            self.close_sent = True
            self._closed(1006, "")
            self._respond(403, b"")
            self.transport.close()
        elif (
            kind == "websocket.http.response.start" and response is not None and response[0] == 101
        ):
            status = message["status"]
            if not 100 <= status < 600:
                raise RuntimeError(f"Invalid HTTP status code {status} in response.")
            self.response = (status, list(message.get("headers") or ()), b"")
        elif kind == "websocket.http.response.body" and response and response[0] != 101:
            body = response[2] + message.get("body", b"")
            self.response = (response[0], response[1], body)
            if not message.get("more_body", False):
                self.response = None
                self.handshake_complete = True
                self.close_sent = True
                self._closed(1006, "")
                self._respond(response[0], body, response[1])
                self.transport.close()
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} during the websocket handshake.")

    def accept_detached(
        self,
        first: bytes,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
    ) -> None:
        """Complete the handshake without ASGI (a :data:`DIRECT` acceptor, from ``upgrade``):
        write the 101 answer and ``first`` (a frame) in one piece, then deliver every message
        to ``on_message`` and the end to ``on_close``, as :meth:`detach` does."""
        response = self.response
        assert response is not None and response[0] == 101
        self.response = None
        lines = [SWITCHING, response[2], b"\r\n"]
        for name, value in self.server_state.default_headers:
            lines += [name, b": ", value, b"\r\n"]
        lines += [b"\r\n", first]
        self.handshake_complete = True
        self.on_message = on_message
        self.on_close = on_close
        self.transport.write(b"".join(lines))
        if ws_log.isEnabledFor(logging.DEBUG):
            ws_log.debug("%s - websocket [accepted]", self.client)

    def detach(
        self, on_message: Callable[[str | bytes], None], on_close: Callable[[], None]
    ) -> None:
        """From now on, deliver messages to ``on_message`` and the end to ``on_close``.

        Messages already received and not yet read go first, in order. The application's
        ASGI task may then return: the connection stays open until it closes or is closed.
        """
        inbox = self.inbox
        self.inbox = None
        self.on_message = on_message
        self.on_close = on_close
        if inbox is not None:
            while not inbox.empty():
                item = inbox.get_nowait()
                if item["type"] == "websocket.receive":
                    text = item.get("text")
                    on_message(text if text is not None else item["bytes"])
                elif item["type"] == "websocket.disconnect":
                    self._closed(1005, "")
                    break
        if self.disconnected:
            self._closed(1006, "")
        if self.holds & HOLD_INBOX:
            self.release(HOLD_INBOX)

    def _closed(self, code: int, reason: str) -> None:
        """Tell the application (once, when detached) that the connection is over."""
        on_close = self.on_close
        if on_close is not None:
            self.on_close = None
            self.on_message = None
            on_close()
        elif self.inbox is not None:
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})

    # -- frames in -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # bytes are charged to the IP's bucket a few KiB at a time: a small read (most of
        # them) costs an addition here, not the bucket's arithmetic
        unmetered = self.unmetered + len(data)
        if unmetered < METER_EVERY:
            self.unmetered = unmetered
        else:
            self.unmetered = 0
            self.meter(unmetered)
        rest = self.rest
        if rest is not None:
            # a frame's first part is waiting: gather reads in place (amortized linear, where
            # ``rest + data`` copied everything so far on every read) until the part of the
            # frame that was missing is there, then parse the whole once
            rest += data
            if len(rest) < self.need:
                return
            self.rest = None
            data = bytes(rest)
        elif data[:1] == b"\x81" and self.fragments is None and self.on_message is not None:
            # the commonest read, alone: exactly one whole, final, masked text frame under
            # 64 KiB, no message in fragments, nothing left over (93 bytecodes where the
            # general loop below, which takes everything else, runs 155)
            n = len(data)
            b1 = data[1] if n > 1 else 0
            if 0x80 < b1 < 0xFE:
                head = 6
                size = b1 - 0x80
            elif b1 == 0xFE and n >= 8:
                head = 8
                size = (data[2] << 8) | data[3]
            else:
                head = size = 0
            if head and n == head + size and size <= self.max_size and not self.close_sent:
                try:
                    text = apply_mask(data[head:], data[head - 4 : head]).decode()
                except UnicodeDecodeError:
                    self.fail(1007, "a text message that is not UTF-8")
                    return
                self.on_message(text)
                return
        n = len(data)
        pos = 0
        want = 0  # (where the frame that does not fit in ``data`` would end, at least)
        while n - pos >= 2 and not self.close_sent:
            if self.holds & HOLD_RATE:
                # refused for its rate by an earlier frame of this read: the rest waits, read
                # but not handled, until the hold ends (release hands it back here)
                want = -1
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            if b0 & 0x70:
                self.fail(1002, "reserved bits set (no extension was negotiated)")
                return
            if not b1 & 0x80:
                self.fail(1002, "a client frame must be masked")
                return
            size = b1 & 0x7F
            head = pos + 6
            if size == 126:
                if n - pos < 8:
                    want = pos + 8
                    break
                size = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = pos + 8
            elif size == 127:
                if n - pos < 14:
                    want = pos + 14
                    break
                size = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = pos + 14
            opcode = b0 & 0x0F
            if opcode == 0:
                # a continuation: its size on the wire, header included, counts toward the
                # message's limit (so an empty fragment is not free), and a message has at
                # most MAX_FRAGMENTS of them (the running total keeps this O(1) per frame)
                total = self.fragment_size + (head - pos) + size
                if total > self.max_size:
                    self.fail(1009, f"message over {self.max_size} bytes")
                    return
                if self.fragments is not None and len(self.fragments) >= MAX_FRAGMENTS:
                    self.fail(1009, f"message in over {MAX_FRAGMENTS} fragments")
                    return
            elif opcode < 8:
                if size > self.max_size:
                    self.fail(1009, f"message over {self.max_size} bytes")
                    return
                total = (head - pos) + size
            end = head + size
            if end > n:
                want = end
                break
            payload = apply_mask(data[head:end], data[head - 4 : head]) if size else b""
            pos = end
            if opcode >= 8:
                if not b0 & 0x80 or size > 125:
                    self.fail(1002, "a control frame must be final and at most 125 bytes")
                    return
                if opcode == 0x8:
                    self._on_close_frame(payload)
                    return
                if opcode == 0x9:
                    # queued like any frame: a client that pings and never reads is held to
                    # ``limit`` (the loop ends once it is dropped)
                    self.write_frame(frame(0xA, payload))
                elif opcode != 0xA:
                    self.fail(1002, f"unknown opcode {opcode}")
                    return
                continue
            if opcode == 0:
                fragments = self.fragments
                if fragments is None:
                    self.fail(1002, "a continuation frame without a message to continue")
                    return
                fragments.append(payload)
                self.fragment_size = total
                if not b0 & 0x80:
                    continue
                self.fragments = None
                self.fragment_size = 0
                opcode = self.fragment_op
                payload = b"".join(fragments)
            elif opcode > 2:
                self.fail(1002, f"unknown opcode {opcode}")
                return
            elif self.fragments is not None:
                self.fail(1002, "a new message before the last one's final frame")
                return
            elif not b0 & 0x80:
                self.fragments = [payload]
                self.fragment_size = total
                self.fragment_op = opcode
                continue
            if opcode == 1:
                try:
                    message: str | bytes = payload.decode()
                except UnicodeDecodeError:
                    self.fail(1007, "a text message that is not UTF-8")
                    return
            else:
                message = payload
            on_message = self.on_message
            if on_message is not None:
                on_message(message)
            elif self.inbox is not None:
                kind = "text" if opcode == 1 else "bytes"
                self.inbox.put_nowait({"type": "websocket.receive", kind: message})
                self.hold(HOLD_INBOX)
        if pos < n and not self.close_sent:
            self.rest = bytearray(memoryview(data)[pos:])
            self.need = 0 if want < 0 else want - pos if want > pos else 2

    def _on_close_frame(self, payload: bytes) -> None:
        if len(payload) == 1:
            self.fail(1002, "a close frame with a one-byte payload")
            return
        code = int.from_bytes(payload[:2], "big") if payload else 1005
        reason = payload[2:].decode("utf-8", "replace")
        if self.close_sent:  # the answer to ours: the closing handshake is complete
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
            return
        if not self.flush():  # dropped: what was queued was over the limit
            return
        self.close_sent = True
        self.transport.write(close_frame(code) if payload else frame(0x8, b""))
        self.transport.close()
        self._closed(code, reason)

    def hold(self, reason: int) -> None:
        """Stop reading for ``reason`` (a HOLD_* bit) until :meth:`release` of it."""
        if not self.holds:
            self.transport.pause_reading()
        self.holds |= reason

    def release(self, reason: int) -> None:
        """``reason`` no longer holds reading back; read again when nothing else does."""
        if self.holds & reason:
            self.holds &= ~reason
            if not self.holds and not self.disconnected:
                self.transport.resume_reading()
                if self.rest is not None and not self.need:
                    self.data_received(b"")  # the frames a rate hold left unhandled

    def meter(self, received: int) -> None:
        """Charge ``received`` bytes to the IP's inbound bucket; past its rate, throttle."""
        edge = self.edge
        if edge is None or not edge.inbound_rate.per_s:
            return
        inbound = self.inbound
        if inbound is None:
            inbound = self.inbound = edge.inbound_bucket(self.edge_ip, self)
        debt = inbound.spend(edge.inbound_rate, time.monotonic(), received)
        if debt:
            self.throttle(debt)

    def throttle(self, seconds: float, reason: int = HOLD_INBOUND) -> None:
        """Read nothing for ``seconds``: the client IP sent more than its inbound rate, or
        (``HOLD_RATE``) the client keeps sending what its rate limits refuse."""
        if not self.holds & reason and not self.close_sent:
            self.hold(reason)
            self.loop.call_later(seconds, self.release, reason)
            if self.edge is not None and reason == HOLD_INBOUND:
                self.edge.throttled += 1

    def fail(self, code: int, reason: str) -> None:
        """A protocol error: close with ``code`` at once (RFC 6455 §7.1.7)."""
        if self.close_sent:  # (dropped while reading this input: nothing more to say)
            return
        if ws_log.isEnabledFor(logging.INFO):
            ws_log.info("closing websocket %s: %s", self.client, reason)
        self.pending = None
        self.queued = 0
        self.rest = None
        self.fragments = None
        self.close_sent = True
        self.transport.write(close_frame(code, reason))
        self.transport.close()
        self._closed(code, reason)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (the client's answer, or a timeout, ends it)."""
        if self.close_sent or self.disconnected:
            return
        if not self.flush():  # dropped: what was queued was over the limit
            return
        self.close_sent = True
        # (a close frame is written past the limit: one per connection)
        self.transport.write(close_frame(code, reason))
        if self.holds:  # (read the client's answer, whatever held reading back)
            self.holds = 0
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.CLOSE_TIMEOUT, self.transport.close)
        self._closed(code, reason)

    # -- the fast path -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.handshake_complete and not (self.close_sent or self.disconnected)

    def set_limit(self, limit: int) -> None:
        """Drop the connection once more than ``limit`` bytes wait to be sent to it."""
        self.limit = limit
        # the transport tells us (pause_writing) once its buffer passes this mark; under it,
        # no write has to look at the buffer's size while what it adds fits in ``room``
        high = max(1, min(limit // 2, 64 * 1024))
        self.room_unpaused = limit - high
        if not self.paused:
            self.room = self.room_unpaused
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high=high, low=high // 2)

    def write_frame(self, data: bytes) -> bool:
        """Queue one pre-encoded frame; False when the connection is gone or was dropped.

        Frames are counted as they are queued: once more than ``room`` waits, what waits is
        handed to the transport at once (:meth:`write_bounded`: the kernel takes what it can),
        so one read that makes many frames (replays, answers, pongs) never holds more than
        ``limit`` for a client that does not read; such a client is dropped (:meth:`overflow`).
        """
        if self.close_sent or self.disconnected:
            return False
        flusher = self.flusher
        queued = self.pending
        if queued is None:
            # the first frame since the flush: the flush itself checks it (one frame is
            # bounded), so the commonest case (one frame per connection) counts nothing here
            self.pending = data
            flusher.dirty.append(self)
        elif queued.__class__ is list:
            size = self.queued + len(data)
            if size > self.room:
                return self._write_through(queued, data)
            self.queued = size
            queued.append(data)
        else:
            size = len(queued) + len(data)
            if size > self.room:
                return self._write_through([queued, data])
            self.queued = size
            self.pending = [queued, data]
        if not flusher.scheduled:
            flusher.schedule()
        return True

    def write_now(self, data: bytes) -> bool:
        """Write one frame at once when nothing is queued before it and it fits under
        ``limit`` without looking; else queue it (:meth:`write_frame`)."""
        if self.pending is None and len(data) <= self.room and self.open:
            self.transport.write(data)
            return True
        return self.write_frame(data)

    def buffered(self) -> int:
        """Bytes accepted for this connection and not yet handed to the kernel."""
        queued = self.pending
        if queued is None:
            size = 0
        elif queued.__class__ is bytes:
            size = len(queued)
        else:
            size = sum(map(len, queued))
        return size + self.transport.get_write_buffer_size()

    def _write_through(self, queued: list[bytes], data: bytes | None = None) -> bool:
        """More than ``room`` would be queued: write what is, and ``data``, now (bounded)."""
        self.pending = None  # (the flusher skips it now)
        self.queued = 0
        if data is not None:
            queued.append(data)
        return self.write_bounded(queued)

    def write_bounded(self, frames: list[bytes] | bytes) -> bool:
        """Write ``frames`` in pieces of at most ``room`` bytes (or one frame), each only while
        the transport's buffer (what the kernel did not take) leaves it room under ``limit``:
        else drop the connection (:meth:`overflow`) and return False. A reader that keeps up
        loses nothing however much one loop iteration sends it (the kernel takes it); one that
        does not costs at most ``limit`` (or one frame) past the kernel's buffers."""
        items = [frames] if isinstance(frames, bytes) else frames
        transport = self.transport
        step = max(self.room_unpaused, 1)
        batch: list[bytes] = []
        size = 0
        last = len(items) - 1
        for i, data in enumerate(items):
            batch.append(data)
            size += len(data)
            if size < step and i < last:
                continue
            held = transport.get_write_buffer_size()
            if held and held + size > self.limit:
                self.overflow(held + size)
                return False
            transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
            batch = []
            size = 0
        return True

    def flush(self) -> bool:
        """Write what is queued now (before a frame that does not go through the queue);
        False when that dropped the connection (it was over ``limit``)."""
        queued = self.pending
        if queued is None:
            return True
        self.pending = None
        self.queued = 0
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return True
        return self.write_bounded(queued)

    def overflow(self, size: int | None = None) -> None:
        """The client is not reading: drop it rather than buffer without bound."""
        if size is None:
            size = self.buffered()
        self.pending = None
        self.queued = 0
        self.drop_reason = f"send buffer over its limit ({size} > {self.limit} bytes): slow client"
        self.flusher.slow_dropped += 1
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("dropping websocket %s: %s", client, self.drop_reason)
        self.close_sent = True
        self.transport.abort()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (no close handshake): for a peer that stopped answering."""
        if self.drop_reason is None:
            self.drop_reason = reason
        self.pending = None
        self.queued = 0
        self.close_sent = True
        if not self.disconnected:
            self.transport.abort()


__all__ = [
    "EXTENSION",
    "HOLD_BACKLOG",
    "HOLD_INBOUND",
    "HOLD_INBOX",
    "HOLD_RATE",
    "METER_EVERY",
    "FastWebSocketProtocol",
    "Inbox",
]
