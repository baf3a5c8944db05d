"""relay's Engine.IO server: python-engineio's, with fewer tasks and a direct websocket path.

What differs from python-engineio's own ``AsyncServer`` (the wire protocol does not):

- A websocket connection served by :class:`relay.wire.websocket.FastWebSocketProtocol` has no writer
  task and no packet queue: every packet, pre-encoded, becomes a frame written straight to the
  connection (coalesced per loop iteration), in the order it was sent. Polling connections,
  and websockets under another uvicorn protocol, keep python-engineio's queue.
- The reader loop awaits the next message directly (python-engineio wraps every read in a new
  task and a timeout).
- One :class:`PingScheduler` per server pings every connection and closes the silent ones,
  instead of a task per ping and a service task walking every socket every few milliseconds;
  it also closes a session that has no Socket.IO namespace ``connect_timeout`` after it
  opened or left its last one.
- A polling session's queue is bounded in bytes (:class:`relay.wire.polling.SendQueue`), and a
  POST body is read only up to the transport limit.

Lifecycle: a closing or closed session accepts nothing (each way in checks: the websocket
callback, the reader, ``receive``, polling GETs and POSTs, and python-socketio's CONNECT
paths in :mod:`relay.wire.sio`); :meth:`RelaySocket.close` closes its websocket too and forgets the
session, so the "disconnect" handler, and with it relay's disconnect, runs once per session.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import engineio
import orjson
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from relay.errors import BadRequest, RelayError
from relay.wire import frames, polling, websocket
from relay.wire.flusher import flusher_for
from relay.wire.guard import EdgeGuard, forwarded_ip, refusal, refusal_body

log = logging.getLogger("relay.wire.engine")

_MESSAGE = eio_packet.MESSAGE
_PING_FRAME = frames.text_frame(eio_packet.Packet(eio_packet.PING).encode())

#: environ entries only the request that opened a websocket needs
_REQUEST_ONLY = ("asgi.scope", "asgi.receive", "asgi.send", "wsgi.input")

#: reader tasks running (a reference, so none is collected mid-way)
_readers: set[asyncio.Task[None]] = set()

#: sessions being closed as slow clients (a reference, so none is collected mid-way)
_closers: set[asyncio.Task[None]] = set()

#: the ``environ`` key of a response that replaces python-engineio's (a refused POST body)
_RESPONSE = "relay.response"

_UNRESOLVED = object()

#: messages waiting for a connection's reader before it stops reading from the socket
_BACKLOG_PAUSE = 64

#: a PingScheduler entry that checks a session has a Socket.IO namespace (pings count from 0)
_CONNECT_CHECK = -1

#: what decoding a client's malformed packet raises (python-engineio / python-socketio parsers)
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError)


def _brief(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


#: python-engineio clients refuse a long-polling payload of more than 16 packets (and drop the
#: connection), so a poll answers with at most this many; the rest wait for the next poll.
MAX_POLL_PACKETS = 16


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
        """Up to ``length`` bytes of the body (all of it: None), whatever ``Content-Length``
        says or however it is chunked; receiving stops once ``length`` bytes are in, so a
        body over the limit costs neither the memory nor the time of reading it whole."""
        if self.payload is None:
            event = self.event
            chunks: list[bytes] = []
            total = 0
            if event["type"] == "http.request":
                while True:
                    chunk = event.get("body") or b""
                    if chunk:
                        chunks.append(chunk)
                        total += len(chunk)
                    if not event.get("more_body") or (length is not None and total >= length):
                        break
                    event = await self.receive()
                    if event["type"] != "http.request":
                        break
            self.event = event
            self.payload = b"".join(chunks)
        payload = self.payload
        if length is None or len(payload) <= length:
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
        if queue is None:
            queue = polling.SendQueue(server.max_buffer, functools.partial(server.drop_slow, sid))
        self.queue = queue
        self.last_ping = time.time()
        self.connected = False
        self.upgrading = False
        self.upgraded = False
        self.closing = False
        self.closed = False
        self.session: dict[str, Any] = {}
        self.fast: websocket.FastWebSocketProtocol | None = None
        self.ping_seq = 0
        self._fast_candidate: websocket.FastWebSocketProtocol | None = None
        #: messages waiting for the reader task (None while no task runs; a None item: closed)
        self._backlog: collections.deque[str | bytes | None] | None = None
        #: (monotonic) since when it has had no Socket.IO namespace, and whether the
        #: PingScheduler holds a check of that (see RelayEngine.expect_connect)
        self.idle_since = time.monotonic()
        self.connect_check = False

    # -- sending -------------------------------------------------------------------------------

    def push(self, pkt: Any) -> bool:
        """Send ``pkt`` now, without awaiting: a frame on the fast path, else the queue."""
        if self.closed:
            return False
        fast = self.fast
        if fast is not None:
            encoded = pkt.encode()
            if isinstance(encoded, str):
                return fast.write_frame(frames.text_frame(encoded))
            return fast.write_frame(frames.binary_frame(encoded))
        self.queue.put_nowait(pkt)  # (a silent peer is closed by the PingScheduler)
        return True

    async def send(self, pkt: Any) -> None:
        # python-engineio's checks a ping timeout first (the PingScheduler does that job) and
        # raises once the session is closed; a closed session's packets go nowhere
        self.push(pkt)

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """python-engineio's close (the "disconnect" handler, then the CLOSE packet unless
        ``abort``), then the end of the transport: the websocket is closed (a client that sent
        CLOSE and kept its websocket open gets nothing more through it), a parked long-poll
        returns, and the session is forgotten.

        It never waits for the client to fetch the CLOSE packet (python-engineio's ``wait``
        waits on the queue, forever for a client that stopped polling); a client that polls
        later is told its session is gone (400), as python-engineio tells it after a close.
        """
        fast = self.fast
        await super().close(wait=False, abort=abort, reason=reason)
        if not self.closed:
            return  # (another close is under way: that one finishes the job)
        if fast is not None:
            fast.close()
        else:
            self.queue.put_nowait(None)
        sockets = self.server.sockets
        if sockets.get(self.sid) is self:
            del sockets[self.sid]

    async def receive(self, pkt: Any) -> None:
        """A packet from the client; a closing or closed session takes none."""
        if self.closing or self.closed:
            raise eio_exceptions.SocketIsClosedError()
        await super().receive(pkt)

    # -- long-polling --------------------------------------------------------------------------

    async def poll(self) -> list[Any]:
        """The packets for one long-poll response (python-engineio's, capped)."""
        queue = self.queue
        wait = self.server.ping_interval + self.server.ping_timeout
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), wait)
                queue.task_done()
            except (TimeoutError, asyncio.CancelledError):
                raise eio_exceptions.QueueEmpty() from None
            if first is not None:
                break
            if self.closing or self.closed:
                return []
            # a wake-up (relay.wire.transport's, when a Socket.IO connection leaves) for a session
            # that stays open: its client may connect again, and an empty answer is no packet
        packets = [first]
        while len(packets) < MAX_POLL_PACKETS and not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                if self.closing or self.closed:
                    queue.put_nowait(None)  # the close marker stays for the next poll
                    break
                continue
            packets.append(pkt)
        return packets

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        if self.closing or self.closed:
            return self.server._bad_request("the session is closed")
        return await super().handle_get_request(environ)

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        """The packets of a POST body, in order; a body over the transport limit (declared or
        not), or one that is not UTF-8 or not an Engine.IO payload, is refused (413, 400) with
        one log line and changes nothing. The session survives a refused body, as it does a
        client's malformed packet on a websocket."""
        server = self.server
        limit = server.max_http_buffer_size
        if self.closing or self.closed:
            result: list[Any] | polling.Refusal = (400, "the session is closed")
        elif polling.declared_too_large(environ, limit):
            result = (413, f"a POST body may be at most {limit} bytes")
        else:
            result = polling.post_packets(await environ["wsgi.input"].read(limit + 1), limit)
        if isinstance(result, tuple):
            log.info("refused a POST from %s: %s (%d)", self.sid, result[1], result[0])
            environ[_RESPONSE] = polling.refusal_response(result)
            return
        for pkt in result:
            try:
                await self.receive(pkt)
            except eio_exceptions.UnknownPacketError:
                pass  # (as on the websocket: a PING or NOOP from a client changes nothing)
            except eio_exceptions.SocketIsClosedError:
                return  # (the payload closed it: what follows the CLOSE is not taken)
            except _MALFORMED as exc:
                log.info("%s sent a malformed packet: %s", self.sid, _brief(exc))
            except Exception:
                log.exception("error handling a packet from %s", self.sid)

    # -- pings ---------------------------------------------------------------------------------

    def schedule_ping(self) -> None:
        # like python-engineio: only after the previous ping was answered (or at open)
        if self.last_ping:
            self.last_ping = None
            self.server.pings.schedule(self)

    # -- websocket -----------------------------------------------------------------------------

    async def _upgrade_websocket(self, environ: dict[str, Any]) -> Any:
        scope = environ.get("asgi.scope") or {}
        candidate = (scope.get("extensions") or {}).get(websocket.EXTENSION)
        if isinstance(candidate, websocket.FastWebSocketProtocol):
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
            if not await self._probe(ws) or self.closing or self.closed:
                return  # (closed during the upgrade: the websocket ends with this task)
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
                self.fast.hold(websocket.HOLD_BACKLOG)
            return
        if data == "3":  # PONG: the commonest packet of an idle connection, handled inline
            self.schedule_ping()  # (a closed session's is never sent: PingScheduler)
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
        if self.closing:  # (set first, and never unset, on every way a session closes)
            return True  # a closed session accepts nothing
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
                        fast.release(websocket.HOLD_BACKLOG)
        finally:
            self._backlog = None

    async def _handle(self, data: str | bytes) -> bool:
        """One message from the websocket; False when the connection must end."""
        if self.closing or self.closed or len(data) > self.server.max_http_buffer_size:
            return False  # (a closed session accepts nothing: its websocket ends)
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
            return not self.closing
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
        return not self.closing  # (a CLOSE packet: the websocket ends too)

    async def _finish(self, fast: websocket.FastWebSocketProtocol | None) -> None:
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
    has not answered ``ping_timeout`` after a ping is closed (reason ``ping timeout``). The same
    buckets hold the connect checks (:meth:`expect_connect`): a session still without a
    Socket.IO namespace ``connect_timeout`` after it opened or left its last one is closed.
    Buckets are a second wide (a quarter of the shortest interval when that is under four
    seconds). They hold session ids, not sessions: a session that ends is freed at once, not
    when its next heartbeat falls due (up to ``ping_interval`` later, for every connection of a
    close storm).
    """

    def __init__(self, server: RelayEngine) -> None:
        self.server = server
        shortest = min(server.ping_interval, server.ping_timeout, server.connect_timeout)
        self.tick = max(0.01, min(1.0, shortest / 4))
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

    def expect_connect(self, sock: RelaySocket, delay: float) -> None:
        """Check ``delay`` from now that ``sock`` has a Socket.IO namespace (else close it)."""
        self._at(delay, sock, _CONNECT_CHECK)

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
            elif seq == _CONNECT_CHECK:
                await self._check_connected(sock)
            elif seq == sock.ping_seq and sock.last_ping:  # that ping was never answered
                await self._expire(sock)

    async def _check_connected(self, sock: RelaySocket) -> None:
        server = self.server
        has_namespace = server.has_namespace
        if has_namespace is None or has_namespace(sock.sid):
            sock.connect_check = False  # (leaving its namespace schedules the next check)
            return
        left = sock.idle_since + server.connect_timeout - time.monotonic()
        if left > 0:  # it left a namespace since this check was scheduled
            self.expect_connect(sock, left)
            return
        sock.connect_check = False
        log.debug("closing %s: no Socket.IO CONNECT within %ss", sock.sid, server.connect_timeout)
        try:
            await sock.close(wait=False, abort=False, reason=server.reason.SERVER_DISCONNECT)
        except Exception:
            log.exception("closing %s without a namespace", sock.sid)

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

    def __init__(
        self,
        *args: Any,
        max_buffer: int = 4 * 1024 * 1024,
        connect_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: bytes one connection may have waiting to be sent (websocket and polling alike)
        self.max_buffer = max_buffer
        #: seconds a session may go without a Socket.IO namespace (at open, or after leaving)
        self.connect_timeout = connect_timeout
        #: whether a session has a Socket.IO namespace (given by the Socket.IO layer; None: the
        #: connect timeout does not apply)
        self.has_namespace: Callable[[str], bool] | None = None
        self.start_service_task = False  # the PingScheduler does its job
        self._async = {**self._async, "translate_request": translate_request}
        self.pings = PingScheduler(self)
        #: the transport edge's limits (relay.wire.guard): asked about every new session (the
        #: per-IP connect rate); None when the application has none
        self.edge: EdgeGuard | None = None
        #: why a new long-polling session is refused (several worker processes share the
        #: port, and a polling session's requests could reach any of them); None: allowed
        self.polling_refused: str | None = None
        self._message_now: Any = _UNRESOLVED
        #: (the coroutine registered with ``on("connect")``, the same as a plain function of
        #: (sid, environ) that accepts every connection): while that coroutine is the handler,
        #: ``accept_websocket`` may take a websocket connect without ASGI (relay.wire.sio)
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
        self, fast: websocket.FastWebSocketProtocol, query: bytes, headers: Any, path: str
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
        edge = self.edge
        if edge is not None and edge.rates.rate.enabled:
            ip = forwarded_ip(headers) if edge.trust_proxy else None
            if ip is None:
                client = fast.client
                ip = client[0] if client else "?"
            error = edge.session(ip)
            if error is not None:
                fast.refuse_with(refusal(error))
                return True
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
        fast.accept_detached(frames.text_frame(opened), sock._on_frame, sock._on_close)
        sock.schedule_ping()
        self._check_connect_of(sock)
        return True

    async def _handle_connect(
        self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None
    ) -> Any:
        edge = self.edge
        if edge is not None and edge.rates.rate.enabled:
            error = edge.session(self._client_ip(environ, edge.trust_proxy))
            if error is not None:
                return _error_answer(error)
        if transport == "polling" and self.polling_refused is not None:
            return _error_answer(BadRequest(self.polling_refused))
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
        self._check_connect_of(sock)
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

    @staticmethod
    def _client_ip(environ: dict[str, Any], trust_proxy: bool) -> str:
        """A request's client IP: the socket's peer, or behind a trusted proxy the last
        ``X-Forwarded-For`` entry."""
        if trust_proxy:
            forwarded = environ.get("HTTP_X_FORWARDED_FOR")
            if forwarded:
                return str(forwarded).rsplit(",", 1)[-1].strip()[:64] or "?"
        client = (environ.get("asgi.scope") or {}).get("client")
        return str(client[0]) if client else "?"

    def _check_connect_of(self, sock: RelaySocket) -> None:
        """A new session: it has ``connect_timeout`` to connect to a Socket.IO namespace."""
        if self.has_namespace is not None:
            sock.connect_check = True
            self.pings.expect_connect(sock, self.connect_timeout)

    def expect_connect(self, sid: str) -> None:
        """Session ``sid`` left a Socket.IO namespace: if it is left with none, it has
        ``connect_timeout`` from now to connect again (called by the Socket.IO layer; a
        session that is closing, or still has a namespace, is not touched)."""
        sock = self.sockets.get(sid)
        if sock is None or sock.closing or sock.closed:
            return
        sock.idle_since = time.monotonic()
        if not sock.connect_check and self.has_namespace is not None:
            sock.connect_check = True
            self.pings.expect_connect(sock, self.connect_timeout)

    def drop_slow(self, sid: str, reason: str) -> None:
        """Close polling session ``sid``, whose queue went over ``max_buffer`` (``reason``
        says by how much), as a slow client: from a task, since this is called from inside a
        delivery (a broadcast's loop over the room's members)."""
        sock = self.sockets.get(sid)
        if sock is None or sock.closing or sock.closed:
            return
        log.warning("dropping polling session %s: %s", sid, reason)
        flusher_for(asyncio.get_running_loop()).slow_dropped += 1
        task = asyncio.get_running_loop().create_task(_close_slow(sock, reason))
        _closers.add(task)
        task.add_done_callback(_closers.discard)

    def _get_socket(self, sid: str) -> RelaySocket:
        # python-engineio's raises KeyError for a closed session (and forgets it), which its
        # POST path does not catch (an HTTP 500 with a traceback); relay's sessions refuse
        # requests themselves once closed (400), and close() forgets them
        sock: RelaySocket = self.sockets[sid]
        return sock

    async def _make_response(self, response_dict: dict[str, Any], environ: dict[str, Any]) -> Any:
        # a refused POST body: the session's own answer instead of python-engineio's "OK"
        refused = environ.pop(_RESPONSE, None)
        return await super()._make_response(refused or response_dict, environ)

    async def shutdown(self) -> None:
        self.pings.stop()
        await super().shutdown()


async def _close_slow(sock: RelaySocket, reason: str) -> None:
    try:
        await sock.close(wait=False, abort=True, reason=reason)
    except Exception:
        log.exception("closing %s as a slow client", sock.sid)


def _error_answer(error: RelayError) -> dict[str, Any]:
    """python-engineio's response dict carrying ``error`` as the contract's error body."""
    headers = [("Content-Type", "application/json")]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers.append(("Retry-After", str(max(1, round(retry_after + 0.5)))))
    status = f"{error.http_status} {HTTPStatus(error.http_status).phrase}"
    return {"status": status, "headers": headers, "response": refusal_body(error)}


__all__ = ["PingScheduler", "RelayEngine", "RelaySocket"]
