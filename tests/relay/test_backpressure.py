"""A client that stops reading is dropped at RELAY_MAX_BUFFER; everyone else keeps receiving."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path

import socketio

from tests.conftest import RelayProcess, masked_frame, start_relay_process, wait_for

MAX_BUFFER = 256 * 1024
PAYLOAD = "x" * 16_000
MESSAGES = 2_500  # 40 MB to every member: far beyond the limit, the kernel's buffers and more


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+)", status)
    assert m is not None
    return int(m.group(1))


def _stalled_client(port: int, room: str) -> socket.socket:
    """Connect over a raw websocket, join ``room``, and never read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
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
    sock.settimeout(10)
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(masked_frame(0x1, b"40"))  # Socket.IO CONNECT to "/"
    sock.sendall(masked_frame(0x1, ('421["join",{"room":"' + room + '"}]').encode()))
    return sock


async def test_a_stalled_reader_is_dropped_and_others_keep_up() -> None:
    relay: RelayProcess = start_relay_process(
        # history kept short so RSS shows buffering, not the room's (legitimate) history; the
        # publisher publishes as fast as it can (the rates have tests of their own)
        env={
            "RELAY_MAX_BUFFER": str(MAX_BUFFER),
            "RELAY_HISTORY_SIZE": "10",
            "RELAY_PUBLISH_RATE": "0",
            "RELAY_JOIN_RATE": "0",
        }
    )
    stalled: socket.socket | None = None
    pub, reader = socketio.AsyncClient(), socketio.AsyncClient()
    try:
        got: list[int] = []
        done = asyncio.Event()

        def on_message(env: dict[str, object]) -> None:
            got.append(len(str(env["data"])))
            if len(got) == MESSAGES:
                done.set()

        reader.on("message", on_message)
        await pub.connect(relay.url, transports=["websocket"])
        await reader.connect(relay.url, transports=["websocket"])
        assert (await reader.call("join", {"room": "firehose"}))["ok"] is True
        stalled = await asyncio.to_thread(_stalled_client, relay.port, "firehose")

        async def members() -> int:
            ack = await pub.call("presence", {"room": "firehose"})
            return len(ack["members"])

        # the raw client's join is in flight: poll the room (no sleep-and-hope)
        count = 0
        deadline = asyncio.get_running_loop().time() + 10
        while count < 2 and asyncio.get_running_loop().time() < deadline:
            count = await members()
        assert count == 2, "the raw client never joined"
        rss_before = _rss_kb(relay.proc.pid)

        # publish at full speed, a window of acks in flight at a time
        window = 50
        for start in range(0, MESSAGES, window):
            acks = await asyncio.gather(
                *(
                    pub.call("publish", {"room": "firehose", "data": PAYLOAD}, timeout=30)
                    for _ in range(start, min(MESSAGES, start + window))
                )
            )
            assert all(a["ok"] for a in acks)
        await asyncio.wait_for(done.wait(), 60)
        rss_after = _rss_kb(relay.proc.pid)

        # the reader got everything, the stalled client was dropped, with a reason in the log
        assert got == [len(PAYLOAD)] * MESSAGES
        assert await members() == 1
        await wait_for(lambda: any("slow client" in line for line in relay.lines), timeout=10)
        metrics = await asyncio.to_thread(_text, f"{relay.url}/metrics")
        assert "relay_slow_clients_dropped_total 1.0" in metrics.splitlines(), metrics
        # 40 MB went to the stalled client's room; the server kept at most its limit of it
        growth_mb = (rss_after - rss_before) / 1024
        assert growth_mb < 20, f"server RSS grew {growth_mb:.1f} MB"
    finally:
        await pub.disconnect()
        await reader.disconnect()
        if stalled is not None:
            stalled.close()
        relay.stop()
        _close_output(relay)


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _close_output(relay: RelayProcess) -> None:
    """Let the fixture's output-draining thread reach EOF, then close the pipe."""
    for thread in threading.enumerate():
        if thread.name.endswith("(_drain)"):
            thread.join(timeout=10)
    if relay.proc.stdout is not None:
        relay.proc.stdout.close()
