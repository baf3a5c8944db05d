"""relay's own websocket protocol (relay.wire.websocket): the handshake, raw frames, and clean-up.

A raw client on a real socket checks the wire; python-socketio clients check that connecting
and leaving many times leaves nothing behind in the server.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import os
import weakref
from typing import Any

import socketio

from relay.wire import engine, websocket
from tests.conftest import LiveRelay, masked_frame, wait_for

PATH = "/socket.io/?EIO=4&transport=websocket"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _request(
    port: int, key: bytes | None = None, version: bytes | None = b"13", method: str = "GET"
) -> bytes:
    lines = [
        f"{method} {PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    if key is not None:
        lines.append("Sec-WebSocket-Key: " + key.decode())
    if version is not None:
        lines.append("Sec-WebSocket-Version: " + version.decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    assert not b1 & 0x80, "server frames are never masked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


async def _http_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.strip().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(_request(port, key))
    status, headers, _ = await _http_answer(reader)
    assert status == 101
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    assert headers["sec-websocket-accept"] == expected
    assert "sec-websocket-extensions" not in headers  # permessage-deflate stays off
    opcode, payload = await _read_frame(reader)
    assert opcode == 0x1 and payload.startswith(b'0{"sid"')  # the Engine.IO OPEN packet
    return reader, writer


async def test_a_bad_key_is_refused_with_a_clear_400(live_relay: LiveRelay) -> None:
    for key in (None, b"not base64!", base64.b64encode(b"too short")):
        reader, writer = await asyncio.open_connection("127.0.0.1", live_relay.port)
        writer.write(_request(live_relay.port, key))
        status, _, body = await _http_answer(reader)
        assert status == 400
        assert b"Sec-WebSocket-Key" in body
        assert await reader.read() == b""  # and the connection closes
        writer.close()


async def test_a_bad_version_is_refused_with_426_naming_13(live_relay: LiveRelay) -> None:
    for version in (None, b"8"):
        reader, writer = await asyncio.open_connection("127.0.0.1", live_relay.port)
        key = base64.b64encode(os.urandom(16))
        writer.write(_request(live_relay.port, key, version))
        status, headers, body = await _http_answer(reader)
        assert status == 426
        assert headers["sec-websocket-version"] == "13"
        assert b"Sec-WebSocket-Version" in body
        writer.close()


async def test_raw_frames_fragments_ping_and_close(live_relay: LiveRelay) -> None:
    reader, writer = await _open(live_relay.port)
    try:
        # the Socket.IO CONNECT "40" in two fragments, with a ping between them
        writer.write(masked_frame(0x1, b"4", fin=False))
        writer.write(masked_frame(0x9, b"hi"))
        writer.write(masked_frame(0x0, b"0"))
        assert await _read_frame(reader) == (0xA, b"hi")
        opcode, payload = await _read_frame(reader)
        assert opcode == 0x1 and payload.startswith(b'40{"sid"')
        # the client closes: the server answers with the same code, then the socket ends
        writer.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
        opcode, payload = await _read_frame(reader)
        assert opcode == 0x8 and payload[:2] == (1000).to_bytes(2, "big")
        assert await reader.read() == b""
    finally:
        writer.close()


async def test_protocol_errors_close_with_their_code(live_relay: LiveRelay) -> None:
    cases: list[tuple[bytes, int]] = [
        (b"\x81\x02" + b"40", 1002),  # unmasked client frame
        (masked_frame(0x1, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (bytes([0xC1]) + masked_frame(0x1, b"x")[1:], 1002),  # a reserved bit (no extensions)
        (masked_frame(0x0, b"x"), 1002),  # a continuation with nothing to continue
    ]
    for data, code in cases:
        reader, writer = await _open(live_relay.port)
        try:
            writer.write(data)
            opcode, payload = await _read_frame(reader)
            assert opcode == 0x8
            assert int.from_bytes(payload[:2], "big") == code, data
            assert await reader.read() == b""
        finally:
            writer.close()


def _per_connection_state(live: LiveRelay) -> dict[str, Any]:
    sio = live.app.state.sio
    protocols = [
        c
        for c in live.server.server_state.connections
        if isinstance(c, websocket.FastWebSocketProtocol)
    ]
    return {
        "engine.io sessions": len(sio.eio.sockets),
        "socket.io environs": len(sio.environ),
        "websocket protocols": len(protocols),
        "rooms entered": len(sio.manager._entered),
        "reader tasks": len(engine._readers),
    }


async def test_many_connects_and_closes_leave_nothing_behind(live_relay: LiveRelay) -> None:
    empty = {key: 0 for key in _per_connection_state(live_relay)}
    await wait_for(lambda: _per_connection_state(live_relay) == empty)
    for _ in range(3):
        clients = [socketio.AsyncClient(reconnection=False) for _ in range(20)]
        await asyncio.gather(
            *(c.connect(live_relay.url, transports=["websocket"]) for c in clients)
        )
        assert (await clients[0].call("join", {"room": "lifecycle"}))["ok"] is True
        state = _per_connection_state(live_relay)
        assert state["engine.io sessions"] == 20
        assert state["websocket protocols"] == 20
        # an idle connection holds no task (the reader runs only while messages wait)
        await wait_for(lambda: not engine._readers)
        await asyncio.gather(*(c.disconnect() for c in clients))
        await wait_for(lambda: _per_connection_state(live_relay) == empty)


async def test_a_session_that_ends_is_freed_at_once(live_relay: LiveRelay) -> None:
    """Nothing keeps an ended session alive (the heartbeat scheduler held every one until its
    next ping fell due, 25 s later), and freeing it needs no garbage collection: no cycles."""
    sockets = live_relay.app.state.sio.eio.sockets
    gc.disable()  # (the test process's collector; the server thread shares it)
    try:
        for transport in ("websocket", "polling"):
            before = set(sockets)
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(live_relay.url, transports=[transport])
            assert (await client.call("join", {"room": "freed"}))["ok"] is True
            (eio_sid,) = set(sockets) - before
            ref = weakref.ref(sockets[eio_sid])
            await client.disconnect()
            await wait_for(lambda sid=eio_sid: sid not in sockets)
            await wait_for(lambda ref=ref: ref() is None)
    finally:
        gc.enable()


async def test_raw_disconnects_are_cleaned_up_too(live_relay: LiveRelay) -> None:
    before = len(live_relay.app.state.sio.eio.sockets)
    writers = []
    for _ in range(10):
        reader, writer = await _open(live_relay.port)
        writer.write(masked_frame(0x1, b"40"))
        _, payload = await _read_frame(reader)
        assert payload.startswith(b'40{"sid"')
        writers.append(writer)
    assert len(live_relay.app.state.sio.eio.sockets) == before + 10
    for writer in writers:
        writer.transport.abort()  # no close frame: the connection just drops
    await wait_for(lambda: len(live_relay.app.state.sio.eio.sockets) == before)
    await wait_for(
        lambda: (
            not any(
                isinstance(c, websocket.FastWebSocketProtocol)
                for c in live_relay.server.server_state.connections
            )
        )
    )
