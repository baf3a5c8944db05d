"""One swarm connection over websocket (picows) or HTTP long-polling (aiohttp).

A :class:`Client` is the Socket.IO state machine; its transport only moves text. Deliveries
(``42["message",...]``) skip the state machine and go straight to the swarm's sink as bytes.
picows was chosen over ``websockets`` by measurement (see benchmarks/loadgen_cpu.py): its
callbacks run on the protocol's data_received, with no future or task per frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from loadtest import protocol
from loadtest.protocol import DELIVERY_PREFIX, ProtocolError

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE


class Sink(Protocol):
    """Where a client reports what it hears."""

    def on_delivery(self, local: int, frame: bytes) -> None: ...

    def on_ack(self, token: Any, ok: bool, code: str | None) -> None: ...

    def on_closed(self, client: Client) -> None: ...


class ConnectError(Exception):
    """A client could not connect; the message says why."""


class Client:
    """Socket.IO v5 over one Engine.IO v4 connection (default namespace)."""

    def __init__(self, idx: int, local: int, room: int, sink: Sink) -> None:
        self.idx = idx
        self.local = local
        self.room = room
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
                    self.sink.on_ack(token, ok, code)
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

    def lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._fail("connection closed")
            self.sink.on_closed(self)


def orjson_text(data: Any) -> str:
    import orjson

    return orjson.dumps(data).decode()[:200]


class _Listener(WSListener):
    def __init__(self, client: WSClient) -> None:
        super().__init__()
        self.client = client
        self.local = client.local
        self.deliver = client.sink.on_delivery

    def on_ws_connected(self, transport: WSTransport) -> None:
        # Frames can arrive in the same read as the handshake, before ws_connect returns.
        self.client.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == TEXT:
            data = frame.get_payload_as_bytes()
            if data.startswith(DELIVERY_PREFIX):
                self.deliver(self.local, data)
            else:
                self.client.on_packet(data.decode())
        elif frame.msg_type == CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client.lost()


class WSClient(Client):
    """Engine.IO straight over websocket (no polling handshake first), as clients with
    ``transports: ['websocket']`` do."""

    transport: WSTransport | None = None

    def send(self, text: str) -> None:
        t = self.transport
        if t is not None and not self.closed:
            t.send(TEXT, text.encode())

    def on_packet(self, text: str) -> None:
        if text.startswith("0{") and self.sid is None:
            self.send(self._connect)
            return
        super().on_packet(text)

    async def open(self, url: str, auth: dict[str, Any] | None, timeout: float) -> None:
        self._connect = protocol.connect_packet(auth)
        self._ready = asyncio.get_running_loop().create_future()
        started = time.perf_counter_ns()
        try:
            self.transport, _ = await asyncio.wait_for(
                ws_connect(
                    lambda: _Listener(self),
                    protocol.endpoint(url, "websocket"),
                    websocket_handshake_timeout=timeout,
                    enable_auto_pong=True,
                    max_frame_size=2 * 1024 * 1024,
                ),
                timeout,
            )
        except TimeoutError:
            raise ConnectError(f"websocket not open within {timeout:g}s") from None
        except (OSError, Exception) as exc:  # picows raises its own WSError tree too
            raise ConnectError(f"{type(exc).__name__}: {exc}") from None
        await self._await_sid(started, timeout)

    async def close(self) -> None:
        t = self.transport
        self.closed = True
        if t is not None and not t.is_disconnected:
            t.send(TEXT, b"41")
            t.send_close()
            t.disconnect()


class PollingClient(Client):
    """Engine.IO long-polling: one GET parked at all times, POSTs serialised with batching."""

    session: aiohttp.ClientSession

    def __init__(self, idx: int, local: int, room: int, sink: Sink) -> None:
        super().__init__(idx, local, room, sink)
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
                async with self.session.post(self._base, data=body.encode()) as r:
                    await r.read()
                    if r.status != 200:
                        self.lost()
        except aiohttp.ClientError:
            self.lost()
        finally:
            self._posting = False

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
                async with self.session.post(self._base, data=body.encode()) as r:
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


Factory = Callable[[int, int, int, Sink], Client]
