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
import hashlib
import logging
import struct
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected, get_local_addr, get_remote_addr, is_ssl

from relay.edge import EdgeGuard, forwarded_ip, guard_of, refusal
from relay.errors import BadRequest
from relay.limits import Bucket

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover  (a websockets built without its C extension)
    # the same XOR in pure Python: linear too (one big-integer XOR), about 10x slower
    from websockets.utils import apply_mask

#: why a connection's reading is paused (FastWebSocketProtocol.holds): reading resumes when no
#: reason is left. The ASGI inbox has unread messages; the Engine.IO reader's backlog is long
#: (relay.engine); the client IP is over its inbound byte rate (relay.edge)
HOLD_INBOX = 1
HOLD_BACKLOG = 2
HOLD_INBOUND = 4
#: the connection's events were refused ``rate_limited`` (relay.service): reading pauses, so a
#: client that ignores the answer costs the server a read a while, not a parse and an ack per
#: event it sends
HOLD_RATE = 8

#: bytes received by a connection between two charges to its IP's inbound bucket (relay.edge):
#: the rate is kept to within this much per connection, and a small read costs an addition
METER_EVERY = 16 * 1024

EXTENSION = "relay.fastws"

log = logging.getLogger("relay.fastws")

#: the logger of every websocket connection's own lines ("connection open", "[accepted]"):
#: two formatted log lines per connect are a good part of a connect storm's CPU, so they show
#: only at debug level (``relay serve --log-level debug``); warnings and errors always do
ws_log = logging.getLogger("relay.ws")
if ws_log.level == logging.NOTSET:
    ws_log.setLevel(logging.WARNING)

#: fragments one message may arrive in: official clients send every message in one frame, so
#: this only stops a flood of tiny fragments (each also counts its header toward ``max_size``)
MAX_FRAGMENTS = 1024

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

    __slots__ = ("dirty", "loop", "scheduled", "slow_dropped")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[FastWebSocketProtocol] = []
        self.scheduled = False
        #: connections (websocket and polling) dropped as slow clients on this loop: one
        #: loop per server, so this is the server's count (relay.metrics reads it)
        self.slow_dropped = 0

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
            try:  # (free unless it raises; one bad connection must not stall the others)
                # the bound: what fits in ``room`` is written in one piece without looking;
                # more (a broadcast's frames are counted only here) goes in bounded pieces
                if queued.__class__ is bytes:
                    if len(queued) <= proto.room:
                        proto.transport.write(queued)
                    else:
                        proto.write_bounded(queued)
                else:
                    proto.queued = 0
                    if sum(map(len, queued)) <= proto.room:
                        proto.transport.write(b"".join(queued))
                    else:
                        proto.write_bounded(queued)
            except RuntimeError:  # the transport closed under us: connection_lost follows
                pass
            except Exception:
                log.exception("writing to a websocket failed")


_flushers: dict[asyncio.AbstractEventLoop, Flusher] = {}

#: the attribute by which an ASGI application (or one it wraps, as ``.app``: uvicorn's proxy
#: headers middleware) may take a websocket before ASGI sees it: a callable of (protocol, path,
#: raw query, headers) that returns True when it answered with
#: :meth:`FastWebSocketProtocol.accept_detached` (or refused), False to let ASGI have it
DIRECT = "accept_websocket"


def direct_acceptor(app: Any) -> Callable[..., bool] | None:
    """``app``'s :data:`DIRECT` acceptor, or that of an application it wraps; or None."""
    for _ in range(8):
        hook = getattr(app, DIRECT, None)
        if hook is not None:
            return hook  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        # one per loop (tests run servers in threads); closed loops are forgotten
        for old in [lp for lp in _flushers if lp.is_closed()]:
            del _flushers[old]
        flusher = _flushers[loop] = Flusher(loop)
    return flusher


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
        #: the client IP's inbound byte bucket (relay.edge), shared with its other connections:
        #: looked up when the connection has received METER_EVERY bytes
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
        #: broadcast adds, :mod:`relay.transport`, are counted by the flush); 0 otherwise
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
        return _address(self, "_client", get_remote_addr)  # type: ignore[no-any-return]

    @property
    def server(self) -> tuple[str, int | None] | None:
        """Our address (looked up once, when first asked for)."""
        return _address(self, "_server", get_local_addr)  # type: ignore[no-any-return]

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
        accept = base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())  # type: ignore[union-attr]
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
        """Answer the handshake with ``answer`` (a whole HTTP response: relay.edge's refusals)
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
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status).encode())]
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
            lines = [_SWITCHING, response[2], b"\r\n"]
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
        lines = [_SWITCHING, response[2], b"\r\n"]
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


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(0x8, code.to_bytes(2, "big") + reason.encode()[:123])


#: an address not looked up yet
UNKNOWN: Any = object()


def _address(proto: Any, attr: str, lookup: Callable[[Any], Any]) -> Any:
    """``proto``'s address kept in ``attr``, looked up from its transport the first time."""
    value = getattr(proto, attr)
    if value is UNKNOWN:
        value = lookup(proto.transport)
        setattr(proto, attr, value)
    return value


def _peer(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """The peer's (host, port): what uvicorn's ``get_remote_addr`` gives a TCP transport, with
    one look-up instead of a socket object's."""
    info = transport.get_extra_info("peername")
    if info.__class__ is tuple and len(info) == 2:  # (IPv4: IPv6 has four fields)
        return info
    return get_remote_addr(transport)  # type: ignore[arg-type]


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol, handing an upgrade to :class:`FastWebSocketProtocol`.

    uvicorn's own upgrade re-serializes the request for the websocket protocol to parse again;
    this hands over what httptools parsed. It also unhooks the parser, which holds the protocol
    (a reference cycle that would otherwise wait for a full garbage collection), and looks the
    connection's addresses up only when something asks for them (an HTTP request's scope, a
    log line): two system calls and a socket object per connection that a websocket taken
    without ASGI never needs.
    """

    _lazy_server: Any = UNKNOWN
    _lazy_client: Any = UNKNOWN

    @property
    def server(self) -> tuple[str, int | None] | None:
        return _address(self, "_lazy_server", get_local_addr)  # type: ignore[no-any-return]

    @server.setter
    def server(self, value: tuple[str, int | None] | None) -> None:
        self._lazy_server = value

    @property
    def client(self) -> tuple[str, int] | None:
        return _address(self, "_lazy_client", get_remote_addr)  # type: ignore[no-any-return]

    @client.setter
    def client(self, value: tuple[str, int] | None) -> None:
        self._lazy_client = value

    #: this request's ``_should_upgrade`` (uvicorn asks twice per upgrade request)
    _upgrade_answer: bool | None = None

    def _should_upgrade(self) -> bool:
        answer = self._upgrade_answer
        if answer is None:
            answer = self._upgrade_answer = super()._should_upgrade()
        return answer

    def on_message_begin(self) -> None:
        # uvicorn's, with the addresses filled in once the request is not an upgrade
        if not self._watched and self._edge is not None:
            # a keep-alive connection's next request: its headers are on the clock again
            self._watched = True
            self._edge.watch(self, self.loop)
        self._upgrade_answer = None
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": UNKNOWN,
            "client": UNKNOWN,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_headers_complete(self) -> None:
        edge = self._edge
        if edge is not None and edge.trust_proxy and self._edge_ip is None:
            # behind a proxy the client's IP is known only now: the last X-Forwarded-For entry
            # (the peer's address without one), counted for as long as this TCP connection
            client = self.client
            ip = forwarded_ip(self.headers) or (client[0] if client else "?")
            answer = edge.admit(ip)
            if answer is not None:
                self._refuse(answer)
                raise _Refused  # (ends this read's parse: see data_received)
            self._edge_ip = ip
        scope = self.scope
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is scope:  # an HTTP request (its task not begun)
            scope["server"] = self.server
            scope["client"] = self.client
            if self._watched:  # the body gets the same time again (a slow POST)
                edge.watch(self, self.loop)  # type: ignore[union-attr]
        elif self._watched:  # an upgrade: the websocket's own timeouts take over
            self._watched = False
            edge.unwatch(self)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self._watched:
            self._watched = False
            self._edge.unwatch(self)  # type: ignore[union-attr]
        super().on_message_complete()

    # -- the edge: connection caps and the header timeout (relay.edge) --------------------------

    #: the guard counting this connection (None: not counted), and the IP counted under
    _edge: EdgeGuard | None = None
    _edge_ip: str | None = None
    #: the guard's header timeout runs: the request's headers (or body) are not all in yet
    _watched = False
    #: the client IP's inbound byte bucket (relay.edge; looked up once the connection has
    #: received METER_EVERY bytes), what it received since it was last charged, and whether
    #: reading is paused to keep to its rate
    _inbound: Bucket | None = None
    _unmetered = 0
    _throttled = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's, with the addresses left to look up (see the class's docstring), then the
        # edge's count: the connection is refused, or counted (and its request on the clock)
        self.connections.add(self)
        self.transport = transport
        self.flow = _Flow(transport, self)  # (uvicorn's, aware of the inbound rate's pause)
        self._lazy_server = self._lazy_client = UNKNOWN
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            client = self.client
            prefix = f"{client[0]}:{client[1]} - " if client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        config: Any = self.config
        edge = getattr(config, "relay_edge", UNKNOWN)  # (looked up once per server)
        if edge is UNKNOWN:
            edge = config.relay_edge = guard_of(self.app)
        if edge is None:
            return
        ip = None
        if edge.ip_at_accept:
            client = self._lazy_client = _peer(transport)  # (the one look-up: kept for scopes)
            ip = client[0] if client else "?"
        refused = edge.accept(self, ip, self.loop)
        if refused is not None:
            self._refuse(refused)
            return
        self._edge = edge
        self._edge_ip = ip
        self._watched = True

    def _refuse(self, answer: bytes) -> None:
        """Answer with the edge's refusal and close (the count is released on close)."""
        self.transport.write(answer)
        self.transport.close()

    def timed_out(self) -> None:
        """The request's headers or body did not arrive in time (the guard's sweep): close,
        answering 408 when nothing of a response has been sent on this request."""
        self._watched = False
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            seconds = self._edge.header_timeout if self._edge is not None else 0
            error = BadRequest(
                f"the request did not arrive in full within {seconds:g} s"
                " (RELAY_HEADER_TIMEOUT): closing the connection"
            )
            transport.write(refusal(error, 408))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # (the application's receive() says so; send() is a no-op)
            cycle.message_event.set()
        transport.close()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, where a request the edge refused once its headers were in ends the parse,
        # and the client IP's inbound rate may stop reading for a while
        unmetered = self._unmetered + len(data)
        if unmetered < METER_EVERY:
            self._unmetered = unmetered
        else:
            self._unmetered = 0
            self._meter(unmetered)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                return  # answered and closing
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

    def _meter(self, received: int) -> None:
        """Charge ``received`` bytes to the IP's inbound bucket; past its rate, stop reading
        until the debt is paid."""
        edge = self._edge
        if edge is None or not edge.inbound_rate.per_s:
            return
        inbound = self._inbound
        if inbound is None:
            inbound = self._inbound = edge.inbound_bucket(self._edge_ip, self)
        debt = inbound.spend(edge.inbound_rate, time.monotonic(), received)
        if debt and not self._throttled:
            self._throttled = True
            self.transport.pause_reading()
            self.loop.call_later(debt, self._unthrottle)
            edge.throttled += 1

    def _unthrottle(self) -> None:
        transport = self.transport
        if transport is None or transport.get_protocol() is not self:
            return  # upgraded meanwhile: the websocket protocol holds its own pause
        self._throttled = False
        if not self.flow.read_paused and not transport.is_closing():
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        edge = self._edge
        if edge is not None:
            self._edge = None
            edge.release(self._edge_ip)
            if self._watched:
                self._watched = False
                edge.unwatch(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        cls = self.ws_protocol_class
        edge = self._edge
        if cls is None or not issubclass(cls, FastWebSocketProtocol):
            if edge is not None:  # (another protocol cannot carry the count: released here)
                self._edge = None
                edge.release(self._edge_ip)
            super().handle_websocket_upgrade()
        else:
            self.connections.discard(self)
            protocol = cls(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            transport = self.transport
            protocol.adopt(transport, self._lazy_server, self._lazy_client)
            if edge is not None:  # the count follows the connection: released when it closes
                self._edge = None
                protocol.edge = edge
                protocol.edge_ip = self._edge_ip
                protocol.inbound = self._inbound
                protocol.unmetered = self._unmetered
                if self._throttled and self._inbound is not None:
                    # reading is paused for the rate: the websocket's own hold takes it over
                    self._throttled = False
                    protocol.holds = HOLD_INBOUND
                    debt = max(0.0, -self._inbound.tokens) / edge.inbound_rate.per_s
                    self.loop.call_later(debt, protocol.release, HOLD_INBOUND)
            transport.set_protocol(protocol)
            protocol.upgrade(self.scope["method"], self.url, self.headers, self.scope)
        self.parser = None  # type: ignore[assignment]
        self.cycle = None  # type: ignore[assignment]


class _Flow(FlowControl):
    """uvicorn's flow control, which leaves reading paused while the inbound rate holds it."""

    def __init__(self, transport: asyncio.Transport, owner: HttpProtocol) -> None:
        super().__init__(transport)
        self._owner = owner

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self._owner._throttled:
                self._transport.resume_reading()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the edge refused."""


__all__ = [
    "DIRECT",
    "EXTENSION",
    "MAX_FRAGMENTS",
    "UNKNOWN",
    "FastWebSocketProtocol",
    "Flusher",
    "HttpProtocol",
    "Inbox",
    "binary_frame",
    "close_frame",
    "direct_acceptor",
    "flusher_for",
    "frame",
    "text_frame",
]
