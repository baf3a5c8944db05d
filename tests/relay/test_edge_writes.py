"""RELAY_MAX_BUFFER holds on every write to a websocket, not only while its transport is paused.

A client that never reads used to make the server queue whatever one read asked for, with no
check until the next iteration's flush: history replays (20 joins with ``since: 0`` in one
write held 563 MB), ``presence`` answers on a big room, and pongs (written straight to the
transport). Each attack here runs against ``relay serve`` in its own process, from a raw socket
that never reads; the server must drop that client as a slow client, keep its peak RSS within
a bound far under what the attack used to cost, and keep serving everyone else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import socketio

from tests.conftest import RelayProcess, masked_frame, start_relay_process, wait_for

MB = 1024 * 1024
#: the limits whose own tests live elsewhere (rates), off so that only the buffer bound acts
ENV = {"RELAY_JOIN_RATE": "0", "RELAY_PUBLISH_RATE": "0", "RELAY_API_RATE": "0"}


def _memory_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) for k, v in re.findall(r"(VmRSS|VmHWM):\s+(\d+) kB", status)}


class PeakRss:
    """The server's peak RSS growth (MB) over a block: VmHWM after, less VmRSS before (the peak
    is reset first where the kernel allows, so setup's own peak does not count)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.growth_mb = 0.0

    @contextmanager
    def measure(self) -> Iterator[PeakRss]:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _memory_kb(self.pid)["VmRSS"]
        yield self
        self.growth_mb = (_memory_kb(self.pid)["VmHWM"] - before) / 1024


def _raw_client(port: int, auth: bytes = b"", rcvbuf: int | None = 4096) -> socket.socket:
    """A raw websocket with Socket.IO connected to "/" (``rcvbuf``: a small receive buffer, so
    what it does not read stays on the server's side)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(masked_frame(0x1, b"40" + auth))
    return sock


def _event(ack: int, name: str, payload: object) -> bytes:
    return masked_frame(0x1, b"42%d" % ack + orjson.dumps([name, payload]))


def _send_until_dropped(sock: socket.socket, data: bytes, timeout: float = 60) -> bool:
    """Send ``data``; True when the server dropped the connection before taking it all."""
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


class Bystander:
    """A python-socketio client in its own room: it must keep being served during an attack."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient()
        self.got: list[object] = []
        self.sio.on("message", lambda env: self.got.append(env["data"]))

    async def __aenter__(self) -> Bystander:
        await self.sio.connect(self.url, transports=["websocket"])
        assert (await self.sio.call("join", {"room": "bystanders"}, timeout=10))["ok"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sio.disconnect()

    async def still_served(self) -> None:
        n = len(self.got)
        ack = await self.sio.call("publish", {"room": "bystanders", "data": n}, timeout=10)
        assert ack["ok"], ack
        await wait_for(lambda: len(self.got) > n and self.got[-1] == n, timeout=10)


async def _dropped(relay: RelayProcess) -> None:
    await wait_for(lambda: any("slow client" in line for line in relay.lines), timeout=30)


async def test_a_replay_flood_that_is_never_read_is_dropped() -> None:
    relay = start_relay_process(env=ENV)
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=30) as http:
            for _ in range(200):  # a room of 200 x 60 KB messages: 12 MB to replay per join
                r = await http.post("/api/v1/rooms/big/events", json={"data": "x" * 60_000})
                assert r.status_code == 200, r.text
        async with Bystander(relay.url) as bystander:
            sock = await asyncio.to_thread(_raw_client, relay.port)
            flood = b"".join(
                _event(2 * i + 1, "join", {"room": "big", "since": 0})
                + _event(2 * i + 2, "leave", {"room": "big"})
                for i in range(20)
            )  # 1.4 KB asking for 240 MB
            with PeakRss(relay.proc.pid).measure() as peak:
                await asyncio.to_thread(sock.sendall, flood)
                await _dropped(relay)
            sock.close()
            assert peak.growth_mb < 100, f"server RSS peaked {peak.growth_mb:.0f} MB higher"
            await bystander.still_served()
    finally:
        relay.stop()


async def test_presence_answers_that_are_never_read_are_bounded() -> None:
    relay = start_relay_process(env=ENV)
    stop = threading.Event()
    members: list[socket.socket] = []
    try:
        # a room of 500 members named with 64 characters: each presence answer is ~48 KB
        for i in range(500):
            user = (f"member{i:04d}-" + "m" * 64)[:64]
            sock = await asyncio.to_thread(
                _raw_client, relay.port, orjson.dumps({"user": user}), None
            )
            sock.sendall(_event(1, "join", {"room": "crowd"}))
            members.append(sock)
        reader = threading.Thread(target=_read_all, args=(members, stop), daemon=True)
        reader.start()  # (the members read: only the attacker does not)
        async with Bystander(relay.url) as bystander:

            async def crowd() -> int:
                ack = await bystander.sio.call("presence", {"room": "crowd"}, timeout=10)
                return len(ack["members"])

            count = 0
            while count < 500:
                count = await crowd()
            sock = await asyncio.to_thread(_raw_client, relay.port)
            flood = b"".join(_event(i, "presence", {"room": "crowd"}) for i in range(2500))
            with PeakRss(relay.proc.pid).measure() as peak:  # 2,500 answers: 120 MB
                await asyncio.to_thread(sock.sendall, flood)
                await _dropped(relay)
            sock.close()
            assert peak.growth_mb < 60, f"server RSS peaked {peak.growth_mb:.0f} MB higher"
            await bystander.still_served()
            assert await crowd() == 500  # the members were not dropped with the attacker
    finally:
        stop.set()
        for sock in members:
            sock.close()
        relay.stop()


def _read_all(socks: list[socket.socket], stop: threading.Event) -> None:
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(0.1):
                try:
                    if not key.fileobj.recv(65536):  # type: ignore[union-attr]
                        sel.unregister(key.fileobj)
                except OSError:
                    sel.unregister(key.fileobj)


async def test_pings_whose_pongs_are_never_read_are_bounded() -> None:
    relay = start_relay_process(env=ENV)
    try:
        async with Bystander(relay.url) as bystander:
            sock = await asyncio.to_thread(_raw_client, relay.port)
            ping = masked_frame(0x9, b"p" * 125)
            chunk = ping * (MB // len(ping))
            with PeakRss(relay.proc.pid).measure() as peak:
                dropped = False
                for _ in range(100):  # up to 100 MB of pings, as long as the server takes them
                    dropped = await asyncio.to_thread(_send_until_dropped, sock, chunk)
                    if dropped:
                        break
                assert dropped, "the server took 100 MB of pings and answered every one"
                await _dropped(relay)
            sock.close()
            assert peak.growth_mb < 60, f"server RSS peaked {peak.growth_mb:.0f} MB higher"
            await bystander.still_served()
    finally:
        relay.stop()
