"""One swarm connection over websocket (our own lean RFC 6455 client) or HTTP long-polling.

A :class:`Client` is the Socket.IO state machine; its transport only moves text. Deliveries
(``42["message",...]``) skip the state machine and go straight to the swarm's sink as bytes.
The websocket side is a plain ``asyncio.Protocol`` on the event loop's own TCP transport,
chosen over picows and ``websockets`` by measurement (see benchmarks/loadgen_cpu.py
``transport``): the common read (one whole text frame) costs a few byte compares.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import aiohttp

from relay.loadtest import protocol
from relay.loadtest.protocol import DELIVERY_PREFIX, ProtocolError

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_FRAME = 16 * 1024 * 1024
CLOSE_WAIT = 5.0  # seconds a closing client waits for the server's end of the handshake
_rand = random.Random()
#: Linux only; elsewhere ACKs stay as the kernel sends them
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def delay_acks(sock: Any) -> None:
    """Let the kernel delay this socket's ACKs (Linux: ``TCP_QUICKACK`` off = "pingpong" mode).

    A swarm client only receives, and by default Linux ACKs every small pushed segment as soon
    as it is read: that ACK's trip through loopback, including the server socket's ``tcp_ack``,
    was a third of the client's CPU per delivery (perf on benchmarks/loadgen_cpu.py
    ``transport``). With ACKs delayed, the kernel ACKs every second segment, or when its
    delayed-ACK timer (40 ms) fires: half the ACKs under load. It can only add latency to a
    server that leaves Nagle on, which Socket.IO servers do not (uvicorn/uvloop, and Node's
    ``ws`` and ``http``, set ``TCP_NODELAY``). The kernel leaves the mode when that timer fires,
    so the swarm sets it again once a second. ``sock`` is the transport's socket, or None.
    """
    if _QUICKACK is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 0)


class Sink(Protocol):
    """Where a client reports what it hears."""

    def on_delivery(self, local: int, frame: bytes) -> None: ...

    def on_ack(self, client: Client, token: Any, ok: bool, code: str | None) -> None: ...

    def on_closed(self, client: Client) -> None: ...


class ConnectError(Exception):
    """A client could not connect; the message says why."""


class Client:
    """Socket.IO v5 over one Engine.IO v4 connection (default namespace)."""

    def __init__(self, idx: int, local: int, room: int, sink: Sink, node: int = 0) -> None:
        self.idx = idx
        self.local = local
        self.room = room
        #: which of the run's URLs (cluster nodes) it connects to
        self.node = node
        self.sink = sink
        self.sid: str | None = None
        self.joined = False
        self.closed = False
        self.acks: dict[int, Any] = {}
        self.next_ack = 0
        self._ready: asyncio.Future[str] | None = None
        self.connect_us = 0

    # -- transport hooks ------------------------------------------------------------------
    def send(self, text: str) -> None:
        raise NotImplementedError

    async def open(self, url: str, auth: dict[str, Any] | None, timeout: float) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- protocol -------------------------------------------------------------------------
    def on_frame(self, data: bytes) -> None:
        """One Engine.IO packet as bytes."""
        if data.startswith(DELIVERY_PREFIX):
            self.sink.on_delivery(self.local, data)
            return
        self.on_packet(data.decode())

    def on_packet(self, text: str) -> None:
        if not text:
            return
        kind = text[0]
        if kind == "2":
            self.send(protocol.PONG + text[1:])
        elif kind == "4":
            self._on_message(text)
        elif kind == "1":
            self._fail("server closed the connection")

    def _on_message(self, text: str) -> None:
        try:
            sio_type, ack_id, data = protocol.parse_message(text)
        except (ProtocolError, ValueError) as exc:
            self._fail(f"bad packet: {exc}")
            return
        if sio_type == "3" and ack_id is not None:
            token = self.acks.pop(ack_id, None)
            if token is not None:
                ok, code = protocol.ack_result(data)
                if callable(token):
                    token(ok, code, data)
                else:
                    self.sink.on_ack(self, token, ok, code)
        elif sio_type == "0":
            sid = data.get("sid") if isinstance(data, dict) else None
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(str(sid))
        elif sio_type == "4":
            self._fail(f"connect_error {orjson_text(data)}")
        elif sio_type == "1":
            self._fail("server disconnected the socket")

    def _fail(self, why: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ConnectError(why))

    async def _await_sid(self, started_ns: int, timeout: float) -> None:
        assert self._ready is not None
        try:
            self.sid = await asyncio.wait_for(self._ready, timeout)
        except TimeoutError:
            raise ConnectError(f"no Socket.IO CONNECT within {timeout:g}s") from None
        self.connect_us = (time.perf_counter_ns() - started_ns) // 1000

    def request(self, event: str, payload: Any, token: Any) -> None:
        """Emit ``event`` with an ack; ``token`` is a callback or a value for the sink."""
        self.next_ack += 1
        self.acks[self.next_ack] = token
        self.send(protocol.event_packet(event, payload, self.next_ack))

    def delay_acks(self) -> None:
        """See :func:`delay_acks`; a no-op but for websocket clients."""

    def lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._fail("connection closed")
            self.sink.on_closed(self)


def orjson_text(data: Any) -> str:
    import orjson

    return orjson.dumps(data).decode()[:200]


class _WSProtocol(asyncio.Protocol):
    """RFC 6455, client side, on the event loop's own TCP transport: just what Engine.IO needs.

    Why not a websocket library: the swarm's cost is per received frame, and most reads carry
    exactly one small text frame. Here that case is a few byte comparisons in
    :meth:`data_received` and one call into the sink: no frame object, no payload copy, no
    library callback layers. Measured (benchmarks/loadgen_cpu.py ``transport``, same sitting):
    picows cost ~7 µs of user CPU per frame with an empty handler, a bare uvloop protocol ~2.5.
    Everything else (split or coalesced frames, fragments, ping, close) takes :meth:`_parse`.
    """

    def __init__(self, client: WSClient, host: str, target: str) -> None:
        self.client = client
        self.local = client.local
        self.deliver = client.sink.on_delivery
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.sock: Any = None
        #: set by :meth:`WSClient.close`: done once the transport has flushed and closed
        self.gone: asyncio.Future[None] | None = None
        self.fragments: list[bytes] | None = None
        self.key = base64.b64encode(_rand.getrandbits(128).to_bytes(16, "big"))
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\n\r\n"
        ).encode()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        # Frames can arrive before create_connection returns to the client's coroutine.
        self.client.proto = self
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """The hot path: one whole, unfragmented text frame carrying one delivery."""
        if self.upgraded and not self.buf and len(data) > 4 and data[0] == 0x81:
            n = data[1]
            if n < 126:
                if len(data) == n + 2 and data.startswith(DELIVERY_PREFIX, 2):
                    self.deliver(self.local, data)
                    return
            elif (
                n == 126
                and len(data) == ((data[2] << 8) | data[3]) + 4
                and data.startswith(DELIVERY_PREFIX, 4)
            ):
                self.deliver(self.local, data)
                return
        self._parse(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectError(f"connection closed during upgrade: {exc}"))
        self.transport = None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        self.client.lost()

    # -- the general path -----------------------------------------------------------------
    def _parse(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                if len(data) > 16384:
                    self._abort("oversized upgrade response")
                return
            if not self._upgrade(data[:end]):
                return
            data = data[end + 4 :]
        i = 0
        size = len(data)
        deliver = self.deliver
        local = self.local
        while size - i >= 2:
            b0 = data[i]
            n = data[i + 1]
            if n & 0x80:
                self._abort("the server masked a frame")
                return
            head = 2
            if n == 126:
                if size - i < 4:
                    break
                n = (data[i + 2] << 8) | data[i + 3]
                head = 4
            elif n == 127:
                if size - i < 10:
                    break
                n = int.from_bytes(data[i + 2 : i + 10], "big")
                head = 10
                if n > MAX_FRAME:
                    self._abort(f"frame of {n} bytes")
                    return
            end = i + head + n
            if end > size:
                break
            start = i + head
            i = end
            if b0 == 0x81 and data.startswith(DELIVERY_PREFIX, start):
                # Several deliveries in one read (a busy swarm): no per-frame calls but this.
                deliver(local, data[start:end])
                continue
            self._frame(b0, data[start:end])
            if self.transport is None:
                return
        if i < size:
            self.buf = data[i:]

    def _frame(self, b0: int, payload: bytes) -> None:
        op = b0 & 0x0F
        fin = b0 & 0x80
        if op == 1 or op == 2:
            if fin:
                self._message(payload)
            else:
                self.fragments = [payload]
        elif op == 0:
            if self.fragments is None:
                self._abort("continuation frame without a start")
                return
            self.fragments.append(payload)
            if fin:
                whole, self.fragments = b"".join(self.fragments), None
                self._message(whole)
        elif op == 9:
            self.send_frame(0xA, payload)
        elif op == 8:
            self.send_frame(0x8, payload[:2])
            self._abort("")
        # op 10 (pong) needs nothing

    def _message(self, payload: bytes) -> None:
        if payload.startswith(DELIVERY_PREFIX):
            self.deliver(self.local, payload)
        else:
            self.client.on_packet(payload.decode())

    def _upgrade(self, head: bytes) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self._abort(f"websocket upgrade refused: {lines[0][:120]}")
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            self._abort("websocket upgrade: wrong Sec-WebSocket-Accept")
            return False
        self.upgraded = True
        # uvloop builds a new socket object per get_extra_info call: keep this one
        self.sock = self.transport.get_extra_info("socket") if self.transport else None
        delay_acks(self.sock)
        if not self.opened.done():
            self.opened.set_result(None)
        return True

    def _abort(self, why: str) -> None:
        if why and not self.opened.done():
            self.opened.set_exception(ConnectError(why))
        t = self.transport
        self.transport = None
        if t is not None:
            t.close()

    def send_frame(self, op: int, payload: bytes) -> None:
        """One masked frame (clients must mask; the XOR runs on big ints, in C)."""
        t = self.transport
        if t is None:
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | op, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | op, 0xFE)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | op, 0xFF)) + n.to_bytes(8, "big")
        mask = _rand.getrandbits(32).to_bytes(4, "big")
        key = (mask * ((n >> 2) + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        t.write(head + mask + body)


class WSClient(Client):
    """Engine.IO straight over websocket (no polling handshake first), as clients with
    ``transports: ['websocket']`` do."""

    proto: _WSProtocol | None = None

    def delay_acks(self) -> None:
        p = self.proto
        if p is not None and p.transport is not None:
            delay_acks(p.sock)

    def send(self, text: str) -> None:
        p = self.proto
        if p is not None and not self.closed:
            p.send_frame(0x1, text.encode())

    def on_packet(self, text: str) -> None:
        if text.startswith("0{") and self.sid is None:
            self.send(self._connect)
            return
        super().on_packet(text)

    async def open(self, url: str, auth: dict[str, Any] | None, timeout: float) -> None:
        self._connect = protocol.connect_packet(auth)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        started = time.perf_counter_ns()
        parts = urlsplit(protocol.endpoint(url, "websocket"))
        secure = parts.scheme == "wss"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        target = f"{parts.path or '/'}?{parts.query}"
        proto = _WSProtocol(self, parts.netloc, target)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: proto, host, port, ssl=_client_ssl() if secure else None
                )
                await proto.opened
        except TimeoutError:
            proto._abort("")
            raise ConnectError(f"websocket not open within {timeout:g}s") from None
        except ConnectError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from None
        await self._await_sid(started, timeout)

    async def close(self) -> None:
        """Leave: Socket.IO DISCONNECT, a close frame, then the rest of the closing handshake
        (the server's close frame, answered in :meth:`_WSProtocol._frame`, ends the TCP
        connection), within :data:`CLOSE_WAIT` seconds. Closing the socket at once would make
        the kernel answer with a reset whenever a frame was still unread (a presence event,
        say), and a reset can destroy the goodbye before the server reads it: the server
        would then hold a dropped connection for recovery instead of a client that left."""
        p = self.proto
        self.closed = True
        if p is not None and p.transport is not None:
            p.gone = gone = asyncio.get_running_loop().create_future()
            p.send_frame(0x1, b"41")
            p.send_frame(0x8, (1000).to_bytes(2, "big"))
            try:
                await asyncio.wait_for(gone, CLOSE_WAIT)
            except TimeoutError:
                p._abort("")


def _client_ssl() -> ssl.SSLContext:
    return ssl.create_default_context()


#: what browsers send: Node's engine.io reads an octet-stream POST as binary and drops the session
TEXT_BODY = {"Content-Type": "text/plain;charset=UTF-8"}


class PollingClient(Client):
    """Engine.IO long-polling: one GET parked at all times, POSTs serialised with batching."""

    session: aiohttp.ClientSession

    def __init__(self, idx: int, local: int, room: int, sink: Sink, node: int = 0) -> None:
        super().__init__(idx, local, room, sink, node)
        self._out: list[str] = []
        self._posting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._base = ""

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send(self, text: str) -> None:
        if self.closed:
            return
        self._out.append(text)
        if not self._posting:
            self._posting = True
            self._spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self._out and not self.closed:
                body, self._out = protocol.RECORD_SEPARATOR.join(self._out), []
                async with self._post(body) as r:
                    await r.read()
                    if r.status != 200:
                        self.lost()
        except aiohttp.ClientError:
            self.lost()
        finally:
            self._posting = False

    def _post(self, body: str) -> Any:
        return self.session.post(self._base, data=body.encode(), headers=TEXT_BODY)

    async def _poll(self) -> None:
        on_packet = self.on_packet
        on_frame = self.on_frame
        try:
            while not self.closed:
                async with self.session.get(self._base) as r:
                    if r.status != 200:
                        break
                    body = await r.read()
                for part in body.split(b"\x1e"):
                    if part.startswith(DELIVERY_PREFIX):
                        on_frame(part)
                    elif part:
                        on_packet(part.decode())
        except aiohttp.ClientError:
            pass
        self.lost()

    async def open(self, url: str, auth: dict[str, Any] | None, timeout: float) -> None:
        self._ready = asyncio.get_running_loop().create_future()
        started = time.perf_counter_ns()
        base = protocol.endpoint(url, "polling")
        try:
            async with asyncio.timeout(timeout):
                async with self.session.get(base) as r:
                    body = await r.text()
                    if r.status != 200:
                        raise ConnectError(f"HTTP {r.status}: {body[:200]}")
        except TimeoutError:
            raise ConnectError(f"no polling handshake within {timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from None
        packets = protocol.split_payload(body)
        try:
            hs = protocol.parse_open(packets[0] if packets else "")
        except (ProtocolError, ValueError, KeyError) as exc:
            raise ConnectError(str(exc)) from None
        self._base = f"{base}&sid={hs.sid}"
        self._spawn(self._poll())
        self.send(protocol.connect_packet(auth))
        await self._await_sid(started, timeout)

    async def close(self) -> None:
        if self.closed:
            return
        self._out.append("41")
        self._out.append("1")
        with _suppress():
            async with asyncio.timeout(2):
                body = protocol.RECORD_SEPARATOR.join(self._out)
                async with self._post(body) as r:
                    await r.read()
        self.closed = True
        for task in list(self._tasks):
            task.cancel()


class _suppress:
    """Closing is best effort: the server may already be gone."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, (OSError, aiohttp.ClientError, TimeoutError))


Factory = Callable[[int, int, int, Sink, int], Client]
