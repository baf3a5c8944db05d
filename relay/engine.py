"""relay's Engine.IO server: python-engineio's, with fewer tasks and a direct websocket path.

What differs from python-engineio's own ``AsyncServer`` (the wire protocol does not):

- A websocket connection served by :class:`relay.fastws.FastWebSocketProtocol` has no writer
  task and no packet queue: every packet, pre-encoded, becomes a frame written straight to the
  connection (coalesced per loop iteration), in the order it was sent. Polling connections,
  and websockets under another uvicorn protocol, keep python-engineio's queue.
- The reader loop awaits the next message directly (python-engineio wraps every read in a new
  task and a timeout).
- One :class:`PingScheduler` per server pings every connection and closes the silent ones,
  instead of a task per ping and a service task walking every socket every few milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import engineio
import orjson
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_socket import AsyncSocket

from relay import fastws

log = logging.getLogger("relay.engine")

_MESSAGE = eio_packet.MESSAGE
_PING_FRAME = fastws.text_frame(eio_packet.Packet(eio_packet.PING).encode())

#: environ entries only the request that opened a websocket needs
_REQUEST_ONLY = ("asgi.scope", "asgi.receive", "asgi.send", "wsgi.input")

#: reader tasks running (a reference, so none is collected mid-way)
_readers: set[asyncio.Task[None]] = set()

_UNRESOLVED = object()

#: messages waiting for a connection's reader before it stops reading from the socket
_BACKLOG_PAUSE = 64

#: what decoding a client's malformed packet raises (python-engineio / python-socketio parsers)
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError)


def _brief(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


#: python-engineio clients refuse a long-polling payload of more than 16 packets (and drop the
#: connection), so a poll answers with at most this many; the rest wait for the next poll.
MAX_POLL_PACKETS = 16


class _Payload(eio_payload.Payload):  # type: ignore[misc]
    # python-engineio's default (16) rejects a POST batching more packets, which clients do
    # under load; the body's byte limit (max_http_buffer_size) is the bound that matters.
    max_decode_packets = 1 << 20


class _Body:
    """``environ["wsgi.input"]``: the request body, read from the ASGI receive channel.

    python-engineio defines this class inside ``translate_request``, so every request creates
    a class (CPU, and a type object of a few KB that lives as long as a websocket does).
    """

    __slots__ = ("event", "payload", "receive")

    def __init__(self, event: dict[str, Any], receive: Any) -> None:
        self.event = event
        self.payload: bytes | None = None
        self.receive = receive

    async def read(self, length: int | None = None) -> bytes:
        if self.payload is None and self.event["type"] == "http.request":
            self.payload = self.event.get("body") or b""
            while self.event.get("more_body"):
                self.event = await self.receive()
                if self.event["type"] == "http.request" and (
                    length is None or len(self.payload) < length
                ):
                    self.payload += self.event.get("body") or b""
        payload = self.payload or b""
        if length is None:
            self.payload = b""
            return payload
        self.payload = payload[length:]
        return payload[:length]


async def translate_request(scope: Any, receive: Any, send: Any) -> dict[str, Any]:
    """python-engineio's ASGI scope -> environ, with one body class for every request."""
    event = await receive()
    if event["type"] not in ("http.request", "websocket.connect"):
        return {}
    path = scope["path"]
    query_string = ""
    raw = scope.get("query_string")
    if raw:
        with contextlib.suppress(UnicodeDecodeError):
            query_string = raw.decode("utf-8")
    environ = _environ(scope.get("method", "GET"), path, query_string, scope["headers"])
    environ["wsgi.input"] = _Body(event, receive)
    environ["asgi.receive"] = receive
    environ["asgi.send"] = send
    environ["asgi.scope"] = scope
    return environ


#: header name -> its environ key, for the names seen first (every connect has the same few)
_ENVIRON_KEYS: dict[bytes, str] = {}
_ENVIRON_KEYS_MAX = 256


def _environ_key(name: bytes) -> str:
    key = name.upper().decode("utf-8")
    if key in ("CONTENT-TYPE", "CONTENT-LENGTH"):
        return key.replace("-", "_")
    return "HTTP_" + key.replace("-", "_")


def _add_headers(environ: dict[str, Any], headers: Any) -> None:
    """A request's headers as WSGI environ entries (``HTTP_*``, ``CONTENT_*``)."""
    keys = _ENVIRON_KEYS
    for name, value in headers:
        key = keys.get(name)
        try:
            if key is None:
                key = _environ_key(name)
                if len(keys) < _ENVIRON_KEYS_MAX:
                    keys[name] = key
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if key in environ and key[0] == "H":  # a repeated HTTP_* header: joined, as WSGI does
            text = f"{environ[key]},{text}"
        environ[key] = text


def websocket_environ(path: str, query: str, headers: Any) -> dict[str, Any]:
    """The environ of a websocket request taken without ASGI (``RelayEngine.accept_websocket``):
    what ``translate_request`` makes, less the request's ASGI objects."""
    return _environ("GET", path, query, headers)


def _environ(method: str, path: str, query: str, headers: Any) -> dict[str, Any]:
    """The WSGI-style environ python-engineio reads, without the request's body or ASGI
    objects."""
    environ: dict[str, Any] = {
        "wsgi.async": True,
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "RAW_URI": f"{path}?{query}" if query else path,
        "SCRIPT_NAME": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "SERVER_NAME": "asgi",
        "SERVER_PORT": "0",
    }
    _add_headers(environ, headers)
    return environ


class _NoQueue:
    """The packet queue of a session on relay's websocket fast path, which has none.

    python-engineio gives every session an ``asyncio.Queue`` (four deques, ~2.5 KB); a fast
    websocket writes every packet straight away, so once it is one its queue is this shared,
    always empty stand-in (a stray close marker put here has nobody to wake).
    """

    def put_nowait(self, item: Any) -> None:
        pass

    async def put(self, item: Any) -> None:
        pass

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def get_nowait(self) -> Any:
        raise asyncio.QueueEmpty

    async def get(self) -> Any:
        raise asyncio.QueueEmpty

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        pass


_NO_QUEUE = _NoQueue()


class RelaySocket(AsyncSocket):  # type: ignore[misc]
    """One Engine.IO session; ``fast`` is its websocket once it has one."""

    server: RelayEngine
    queue: Any
    last_ping: float | None
    connected: bool
    upgraded: bool
    upgrading: bool
    closing: bool
    closed: bool

    def __init__(self, server: RelayEngine, sid: str, queue: Any = None) -> None:
        # BaseSocket's, except that a websocket taken without ASGI gets no asyncio.Queue
        self.server = server
        self.sid = sid
        self.queue = server.create_queue() if queue is None else queue
        self.last_ping = time.time()
        self.connected = False
        self.upgrading = False
        self.upgraded = False
        self.closing = False
        self.closed = False
        self.session: dict[str, Any] = {}
        self.fast: fastws.FastWebSocketProtocol | None = None
        self.ping_seq = 0
        self._fast_candidate: fastws.FastWebSocketProtocol | None = None
        #: messages waiting for the reader task (None while no task runs; a None item: closed)
        self._backlog: collections.deque[str | bytes | None] | None = None

    # -- sending -------------------------------------------------------------------------------

    def push(self, pkt: Any) -> bool:
        """Send ``pkt`` now, without awaiting: a frame on the fast path, else the queue."""
        if self.closed:
            return False
        fast = self.fast
        if fast is not None:
            encoded = pkt.encode()
            if isinstance(encoded, str):
                return fast.write_frame(fastws.text_frame(encoded))
            return fast.write_frame(fastws.binary_frame(encoded))
        self.queue.put_nowait(pkt)  # (a silent peer is closed by the PingScheduler)
        return True

    async def send(self, pkt: Any) -> None:
        if self.fast is not None:
            if not self.closed:
                self.push(pkt)
            return
        await super().send(pkt)

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        fast = self.fast
        await super().close(wait=wait and fast is None, abort=abort, reason=reason)
        if fast is not None and not abort and fast.open:
            # after the CLOSE packet, close the websocket too, in case the client never does
            with contextlib.suppress(Exception):
                await fast.send({"type": "websocket.close", "code": 1000})

    # -- long-polling --------------------------------------------------------------------------

    async def poll(self) -> list[Any]:
        """The packets for one long-poll response (python-engineio's, capped)."""
        queue = self.queue
        try:
            first = await asyncio.wait_for(
                queue.get(), self.server.ping_interval + self.server.ping_timeout
            )
            queue.task_done()
        except (TimeoutError, asyncio.CancelledError):
            raise eio_exceptions.QueueEmpty() from None
        if first is None:
            return []
        packets = [first]
        while len(packets) < MAX_POLL_PACKETS and not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)  # the close marker stays for the next poll
                break
            packets.append(pkt)
        return packets

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        length = int(environ.get("CONTENT_LENGTH", "0"))
        if length > self.server.max_http_buffer_size:
            raise eio_exceptions.ContentTooLongError()
        body = (await environ["wsgi.input"].read(length)).decode("utf-8")
        for pkt in _Payload(encoded_payload=body).packets:
            await self.receive(pkt)

    # -- pings ---------------------------------------------------------------------------------

    def schedule_ping(self) -> None:
        # like python-engineio: only after the previous ping was answered (or at open)
        if self.last_ping:
            self.last_ping = None
            self.server.pings.schedule(self)

    # -- websocket -----------------------------------------------------------------------------

    async def _upgrade_websocket(self, environ: dict[str, Any]) -> Any:
        scope = environ.get("asgi.scope") or {}
        candidate = (scope.get("extensions") or {}).get(fastws.EXTENSION)
        if isinstance(candidate, fastws.FastWebSocketProtocol):
            self._fast_candidate = candidate
        result = await super()._upgrade_websocket(environ)
        if self.fast is not None:
            # detached: python-socketio keeps this environ for the connection's lifetime, and
            # the request's ASGI objects (scope, headers list, channels) are of no further use
            for key in _REQUEST_ONLY:
                environ.pop(key, None)
        return result

    async def _websocket_handler(self, ws: Any) -> None:
        fast = self._fast_candidate
        self._fast_candidate = None
        if fast is None:
            await super()._websocket_handler(ws)
            return
        if self.connected:
            if not await self._probe(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        fast.set_limit(self.server.max_buffer)
        self.fast = fast
        # what was queued before the switch (the OPEN packet, early acks) goes first, in order
        while not self.queue.empty():
            pkt = self.queue.get_nowait()
            self.queue.task_done()
            if pkt is not None:
                self.push(pkt)
        self.queue = _NO_QUEUE
        # from here on the protocol calls us back; the ASGI task (and every coroutine frame
        # of the request that opened this websocket) ends, so an idle connection holds none
        fast.detach(self._on_frame, self._on_close)

    def _on_frame(self, data: str | bytes | None) -> None:
        """A message from the websocket (None: it closed), called by the protocol."""
        backlog = self._backlog
        if backlog is not None:  # a reader is at work: in order, after what it has
            backlog.append(data)
            if len(backlog) > _BACKLOG_PAUSE and self.fast is not None:
                self.fast.transport.pause_reading()
            return
        if data == "3":  # PONG: the commonest packet of an idle connection, handled inline
            self.schedule_ping()
            return
        if data is None and self._finish_now():
            return
        if type(data) is str and data[:1] == "4" and self._handled_now(data):
            return
        self._backlog = collections.deque((data,))
        task = asyncio.get_running_loop().create_task(self._drain())
        _readers.add(task)
        task.add_done_callback(_readers.discard)

    def _handled_now(self, data: str) -> bool:
        """An Engine.IO MESSAGE that Socket.IO can handle without awaiting (relay's events on
        the default namespace: see ``RelaySocketIO.handle_message_now``), handled here: no task,
        no coroutine. Only called with no backlog, so a connection's messages keep their order.
        """
        server = self.server
        now = server._message_now
        if now is _UNRESOLVED:
            now = server.message_now()
        if now is None or len(data) > server.max_http_buffer_size:
            return False
        try:
            return bool(now(self.sid, data[1:]))
        except _MALFORMED as exc:
            # a client's garbage: one line, no traceback (a flood must stay cheap)
            log.info("%s sent a malformed packet: %s", self.sid, _brief(exc))
        except Exception:
            log.exception("error handling a message from %s", self.sid)
        return True

    def _on_close(self) -> None:
        self._on_frame(None)

    def _finish_now(self) -> bool:
        """``_finish`` without awaiting, when the Engine.IO "disconnect" handler has a plain
        twin (``RelayEngine.disconnect_now``) that can do its job; False, having done nothing,
        when it cannot (then ``_finish`` runs in a task). Only called with no backlog.
        """
        fast = self.fast
        if fast is None:
            return False
        if not self.closed and not self.closing:
            pair = self.server.disconnect_now
            if pair is None or self.server.handlers.get("disconnect") is not pair[0]:
                return False
            reason = fast.drop_reason or self.server.reason.TRANSPORT_CLOSE
            self.closing = True  # (as AsyncSocket.close(abort=True) does)
            try:
                if not pair[1](self.sid, reason):
                    self.closing = False
                    return False
            except Exception:
                log.exception("closing %s", self.sid)
            self.closed = True
        self.fast = None
        fast.close()
        sockets = self.server.sockets
        if sockets.get(self.sid) is self:
            del sockets[self.sid]
        return True

    async def _drain(self) -> None:
        """Handle the messages that arrived, in order, then end (a task per burst, not per
        connection)."""
        backlog = self._backlog
        assert backlog is not None
        fast = self.fast
        try:
            while backlog:
                data = backlog.popleft()
                if data is None or not await self._handle(data):
                    await self._finish(fast)
                    return
                if fast is not None and len(backlog) == _BACKLOG_PAUSE // 2:
                    with contextlib.suppress(Exception):
                        fast.transport.resume_reading()
        finally:
            self._backlog = None

    async def _handle(self, data: str | bytes) -> bool:
        """One message from the websocket; False when the connection must end."""
        if len(data) > self.server.max_http_buffer_size:
            return False
        if data == "3":
            self.schedule_ping()
            return True
        on_message = self.server.handlers.get("message")
        if on_message is not None and type(data) is str and data[:1] == "4":
            # an Engine.IO MESSAGE: straight to Socket.IO, no packet object, no closure
            try:
                await on_message(self.sid, data[1:])
            except _MALFORMED as exc:
                # a client's garbage: one line, no traceback (a flood must stay cheap)
                log.info("%s sent a malformed packet: %s", self.sid, _brief(exc))
            except Exception:
                log.exception("error handling a message from %s", self.sid)
            return True
        try:
            await self.receive(eio_packet.Packet(encoded_packet=data))
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            return False
        except _MALFORMED as exc:
            log.info("%s sent a malformed packet: %s", self.sid, _brief(exc))
        except Exception:
            log.exception("error handling a packet from %s", self.sid)
        return True

    async def _finish(self, fast: fastws.FastWebSocketProtocol | None) -> None:
        """The websocket ended (or must): close the session, forget it, close the socket."""
        if fast is None or self.fast is not fast:
            return
        reason = fast.drop_reason or self.server.reason.TRANSPORT_CLOSE
        try:
            await self.close(wait=False, abort=True, reason=reason)
        except Exception:
            log.exception("closing %s", self.sid)
        self.fast = None
        fast.close()
        sockets = self.server.sockets
        if sockets.get(self.sid) is self:
            del sockets[self.sid]

    async def _probe(self, ws: Any) -> bool:
        """The polling -> websocket upgrade handshake (PING probe, PONG probe, UPGRADE)."""
        self.upgrading = True
        try:
            pkt = eio_packet.Packet(encoded_packet=await ws.wait())
            if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                return False
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            pkt = eio_packet.Packet(encoded_packet=await ws.wait())
            if pkt.packet_type != eio_packet.UPGRADE:
                return False
        except OSError:
            return False
        finally:
            self.upgrading = False
        self.upgraded = True
        # the NOOP for the last poll may still sit in the queue; the websocket must not get it
        kept = []
        while not self.queue.empty():
            queued = self.queue.get_nowait()
            self.queue.task_done()
            if queued is not None and queued.packet_type != eio_packet.NOOP:
                kept.append(queued)
        for queued in kept:
            self.queue.put_nowait(queued)
        return True


class PingScheduler:
    """Engine.IO heartbeats for every connection from one task, in time buckets.

    A connection is pinged ``ping_interval`` after it opened or answered the last ping; one that
    has not answered ``ping_timeout`` after a ping is closed (reason ``ping timeout``). Buckets
    are a second wide (a quarter of the shorter interval when that is under four seconds).
    They hold session ids, not sessions: a session that ends is freed at once, not when its
    next heartbeat falls due (up to ``ping_interval`` later, for every connection of a close
    storm).
    """

    def __init__(self, server: RelayEngine) -> None:
        self.server = server
        self.tick = max(0.01, min(1.0, min(server.ping_interval, server.ping_timeout) / 4))
        self._due: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._next = 0

    def _slot(self, delay: float) -> int:
        return int((time.monotonic() + delay) / self.tick) + 1

    def _at(self, delay: float, sock: RelaySocket, seq: int) -> None:
        self._due[self._slot(delay)].append((sock.sid, seq))
        if self._task is None or self._task.done():
            self._next = self._slot(0) - 1
            self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-pings")

    def schedule(self, sock: RelaySocket) -> None:
        """Ping ``sock`` one interval from now."""
        self._at(self.server.ping_interval, sock, 0)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._due.clear()

    async def _run(self) -> None:
        while self._due:
            await asyncio.sleep(self.tick)
            now = self._slot(0) - 1
            while self._next <= now:
                batch = self._due.pop(self._next, None)
                self._next += 1
                if batch:
                    await self._fire(batch)

    async def _fire(self, batch: list[tuple[str, int]]) -> None:
        ping = eio_packet.Packet(eio_packet.PING)
        now = time.time()
        sockets = self.server.sockets
        for sid, seq in batch:
            sock = sockets.get(sid)
            if sock is None or sock.closing or sock.closed:
                continue
            if seq == 0:  # time to ping
                sock.ping_seq += 1
                sock.last_ping = now
                fast = sock.fast
                if fast is not None:
                    fast.write_frame(_PING_FRAME)  # encoded once for every connection
                else:
                    sock.push(ping)
                self._at(self.server.ping_timeout, sock, sock.ping_seq)
            elif seq == sock.ping_seq and sock.last_ping:  # that ping was never answered
                await self._expire(sock)

    async def _expire(self, sock: RelaySocket) -> None:
        fast = sock.fast
        try:
            await sock.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)
        except Exception:
            log.exception("closing %s after a ping timeout", sock.sid)
        if fast is not None:
            fast.abort("ping timeout")
        self.server.sockets.pop(sock.sid, None)


class RelayEngine(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's ASGI server with :class:`RelaySocket` sessions."""

    _async: dict[str, Any]
    sequence_number: int

    def __init__(self, *args: Any, max_buffer: int = 4 * 1024 * 1024, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_buffer = max_buffer
        self.start_service_task = False  # the PingScheduler does its job
        self._async = {**self._async, "translate_request": translate_request}
        self.pings = PingScheduler(self)
        self._message_now: Any = _UNRESOLVED
        #: (the coroutine registered with ``on("connect")``, the same as a plain function of
        #: (sid, environ) that accepts every connection): while that coroutine is the handler,
        #: ``accept_websocket`` may take a websocket connect without ASGI (relay.sio)
        self.connect_now: tuple[Callable[..., Any], Callable[[str, dict[str, Any]], None]] | None
        self.connect_now = None
        #: (the coroutine registered with ``on("disconnect")``, the same as a plain function of
        #: (sid, reason) that returns False when it cannot do the job without awaiting): while
        #: that coroutine is the handler, a websocket that ends runs the plain one (no task)
        self.disconnect_now: tuple[Callable[..., Any], Callable[[str, Any], bool]] | None = None

    def message_now(self) -> Callable[[str, str], bool] | None:
        """The Socket.IO layer's synchronous message handler, if it has one (looked up once:
        python-socketio registers its "message" handler when it is built)."""
        now = self._message_now
        if now is _UNRESOLVED:
            handler = self.handlers.get("message")
            layer = getattr(handler, "__self__", None)
            now = getattr(layer, "handle_packet_now", None) or getattr(
                layer, "handle_message_now", None
            )
            if handler is not None:
                self._message_now = now
        return now  # type: ignore[no-any-return]

    def generate_id(self) -> str:
        # python-engineio's (12 random bytes and a 3-byte sequence number, base64 with "-"
        # and "_"), in one call each
        seq = self.sequence_number
        self.sequence_number = (seq + 1) & 0xFFFFFF
        return base64.urlsafe_b64encode(os.urandom(12) + seq.to_bytes(3, "big")).decode()

    def _opened(self, sid: str, upgrades: list[str]) -> dict[str, Any]:
        """The OPEN packet's data."""
        return {
            "sid": sid,
            "upgrades": upgrades,
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
            "maxPayload": self.max_http_buffer_size,
        }

    def accept_websocket(
        self, fast: fastws.FastWebSocketProtocol, query: bytes, headers: Any, path: str
    ) -> bool:
        """Open an Engine.IO session on a new websocket without ASGI, when that changes nothing
        a client or handler can see: python-socketio's own "connect" handler (which accepts
        every session), a plain query (``EIO=4&transport=websocket``, no ``sid``) and no
        ``Origin`` to check. True: the session is open (the 101 answer and the OPEN packet are
        written, and the websocket delivers to it); False: nothing was done (go the ASGI way).
        """
        pair = self.connect_now
        if pair is None or self.handlers.get("connect") is not pair[0]:
            return False
        if b"%" in query or b"+" in query or "websocket" not in self.transports:
            return False
        eio = transport = None
        for part in query.split(b"&"):
            name, _, value = part.partition(b"=")
            if name == b"EIO":
                eio = eio or value
            elif name == b"transport":
                transport = transport or value
            elif name in (b"sid", b"j"):
                return False
        if eio != b"4" or transport != b"websocket":
            return False
        if self.cors_allowed_origins not in ("*", []) and any(
            name == b"origin" for name, _ in headers
        ):
            return False  # (python-engineio checks it)
        environ = websocket_environ(path, query.decode("latin-1"), headers)
        sid = self.generate_id()
        sock = RelaySocket(self, sid, _NO_QUEUE)
        self.sockets[sid] = sock
        pair[1](sid, environ)
        sock.connected = True
        sock.upgraded = True
        fast.set_limit(self.max_buffer)
        sock.fast = fast
        opened = b"0" + orjson.dumps(self._opened(sid, []))
        fast.accept_detached(fastws.text_frame(opened), sock._on_frame, sock._on_close)
        sock.schedule_ping()
        return True

    async def _handle_connect(
        self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None
    ) -> Any:
        sid = self.generate_id()
        sock = RelaySocket(self, sid)
        self.sockets[sid] = sock
        opened = self._opened(sid, self._upgrades(sid, transport))
        sock.queue.put_nowait(eio_packet.Packet(eio_packet.OPEN, opened))
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        if accepted is not None and accepted is not True:
            self.sockets.pop(sid, None)
            return self._unauthorized(accepted or None)
        sock.schedule_ping()
        if transport == "websocket":
            result = await sock.handle_get_request(environ)
            if sock.closed:
                self.sockets.pop(sid, None)
            return result
        sock.connected = True
        try:
            return self._ok(await sock.poll(), jsonp_index=jsonp_index)
        except eio_exceptions.QueueEmpty:
            return self._bad_request()

    async def shutdown(self) -> None:
        self.pings.stop()
        await super().shutdown()


__all__ = ["PingScheduler", "RelayEngine", "RelaySocket"]
