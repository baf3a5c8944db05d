"""Frames in at the transport edge: what a message in fragments, or a frame in small reads,
costs the server is linear in the bytes received, and bounded before any login.

Before: each continuation frame re-summed every earlier fragment, and an empty one never
reached the size limit (20,000 empty fragments cost 9 CPU seconds and stalled the event loop);
a frame that arrived in small reads was re-copied whole on every read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import websockets.speedups
import websockets.utils

from relay.wire.frames import MAX_FRAGMENTS
from relay.wire.websocket import FastWebSocketProtocol
from tests.conftest import ROOT, start_relay_process
from tests.conftest import masked_frame as frame


class _Transport:
    """What the protocol writes, and whether it closed (no socket: CPU is the protocol's)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close_code(self) -> int | None:
        for data in self.written:
            if data[0] == 0x88:  # our close frame (unmasked, short)
                return int.from_bytes(data[2:4], "big")
        return None


def _protocol(max_size: int) -> tuple[FastWebSocketProtocol, list[Any], _Transport]:
    config = SimpleNamespace(loaded=True, loaded_app=None, ws_max_size=max_size)
    proto = FastWebSocketProtocol(config, SimpleNamespace(), {}, asyncio.get_running_loop())
    transport = _Transport()
    proto.transport = transport  # type: ignore[assignment]
    proto.handshake_complete = True
    got: list[Any] = []
    proto.on_message = got.append
    proto.on_close = lambda: got.append("<closed>")
    return proto, got, transport


@pytest.mark.parametrize("reads", ["one read", "a read per frame"])
async def test_a_flood_of_empty_fragments_is_cut_off_cheaply(reads: str) -> None:
    proto, got, transport = _protocol(max_size=1024 * 1024)
    empties = [frame(0x0, b"", fin=False)] * 20_000  # 120 KB: 9 CPU seconds before
    chunks = [frame(0x1, b"x", fin=False), *empties]
    if reads == "one read":
        chunks = [b"".join(chunks)]
    spent = time.thread_time()
    for chunk in chunks:
        proto.data_received(chunk)
    spent = time.thread_time() - spent
    assert transport.close_code() == 1009, "a message in too many fragments is refused"
    assert got == ["<closed>"]
    assert spent < 1.0, f"{spent:.2f} CPU seconds for {len(empties)} empty fragments"


async def test_empty_fragments_count_toward_the_size_limit() -> None:
    # 6 bytes of header each: 200 of them pass a 1,000-byte limit (before, none ever did)
    proto, got, transport = _protocol(max_size=1000)
    proto.data_received(frame(0x1, b"x", fin=False) + frame(0x0, b"", fin=False) * 200)
    assert transport.close_code() == 1009
    assert got == ["<closed>"]


async def test_a_message_in_fragments_within_the_limits_arrives() -> None:
    proto, got, transport = _protocol(max_size=1024 * 1024)
    parts = [b"p%d," % i for i in range(MAX_FRAGMENTS)]
    frames = [frame(0x1, parts[0], fin=False)]
    frames += [frame(0x0, p, fin=False) for p in parts[1:-1]]
    frames.append(frame(0x0, parts[-1]))
    proto.data_received(b"".join(frames))
    assert got == [b"".join(parts).decode()]
    # and the next message starts from zero: its fragments are counted afresh
    proto.data_received(frame(0x1, b"a", fin=False) + frame(0x0, b"b"))
    assert got[-1] == "ab" and transport.close_code() is None
    # one fragment more than the cap is refused
    one_too_many = [frames[0], *frames[1:-1], frame(0x0, b"!", fin=False), frame(0x0, b"!")]
    assert len(one_too_many) == MAX_FRAGMENTS + 1
    proto.data_received(b"".join(one_too_many))
    assert transport.close_code() == 1009


async def test_a_frame_in_small_reads_costs_linear_cpu() -> None:
    # 8 MB in 100-byte reads: before, every read copied all that came before it (3 * 10^11
    # bytes copied in all: 9 CPU seconds); now each byte is copied a fixed number of times
    # (0.03 s)
    proto, got, transport = _protocol(max_size=16 * 1024 * 1024)
    payload = os.urandom(8 * 1000 * 1000)
    data = frame(0x2, payload)
    spent = time.thread_time()
    for i in range(0, len(data), 100):
        proto.data_received(data[i : i + 100])
    spent = time.thread_time() - spent
    assert got == [payload] and transport.close_code() is None
    assert spent < 1.0, f"{spent:.2f} CPU seconds for one 8 MB frame in 100-byte reads"


async def test_frames_split_anywhere_still_arrive_in_order() -> None:
    proto, got, transport = _protocol(max_size=1024 * 1024)
    texts = ["a" * n for n in (0, 1, 125, 126, 127, 65535, 65536, 70000)]
    data = b"".join(frame(0x1, t.encode()) for t in texts)
    for size in (1, 7, 13, 4096):
        got.clear()
        for i in range(0, len(data), size):
            proto.data_received(data[i : i + size])
        assert got == texts, size
    assert transport.close_code() is None


# -- against a live relay -------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _websocket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
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
    return sock


def _until_closed(sock: socket.socket, timeout: float) -> None:
    """Read until the server ends the connection (or fail after ``timeout`` seconds)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


async def test_a_fragment_flood_does_not_stall_the_server() -> None:
    relay = start_relay_process()
    try:
        sock = await asyncio.to_thread(_websocket, relay.port)
        cpu_before = _cpu_seconds(relay.proc.pid)
        flood = frame(0x1, b"x", fin=False) + frame(0x0, b"", fin=False) * 30_000  # 180 KB

        def send() -> None:
            with contextlib.suppress(OSError):  # (the server closes as soon as it is over)
                sock.sendall(flood)

        sending = asyncio.create_task(asyncio.to_thread(send))
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as http:
            started = time.monotonic()
            health = await http.get("/healthz")
            waited = time.monotonic() - started
        await sending
        await asyncio.to_thread(_until_closed, sock, 30)
        sock.close()
        spent = _cpu_seconds(relay.proc.pid) - cpu_before
        assert health.status_code == 200
        assert waited < 5, f"/healthz took {waited:.1f} s during the flood"
        assert spent < 2, f"the server spent {spent:.1f} CPU seconds on 180 KB of fragments"
    finally:
        relay.stop()


# -- without websockets' C extension ----------------------------------------------------------


def test_the_pure_python_mask_gives_the_same_bytes() -> None:
    for n in (0, 1, 2, 3, 4, 5, 125, 126, 4097, 65536, 1_000_003):
        data, mask = os.urandom(n), os.urandom(4)
        expected = websockets.speedups.apply_mask(data, mask)
        assert websockets.utils.apply_mask(data, mask) == expected, n


def test_relay_runs_without_websockets_speedups() -> None:
    script = """
import asyncio, sys
from types import SimpleNamespace
sys.modules["websockets.speedups"] = None  # as if websockets were built without it
import websockets.utils
from relay.wire import frames, websocket
from tests.conftest import masked_frame

assert frames.apply_mask is websockets.utils.apply_mask

async def main():
    config = SimpleNamespace(loaded=True, loaded_app=None, ws_max_size=1 << 20)
    proto = websocket.FastWebSocketProtocol(config, SimpleNamespace(), {})
    got = []
    proto.on_message = got.append
    text = "h\u00e9llo" * 1000
    proto.data_received(masked_frame(0x1, b"40"))  # the one-whole-frame shortcut
    proto.data_received(masked_frame(0x1, text.encode()))  # the general loop (16-bit length)
    assert got == ["40", text], got
    print("ok")

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
