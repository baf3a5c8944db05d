"""Engine.IO / Socket.IO spoken by hand, for the lifecycle and limit tests: a raw websocket on
an asyncio stream (frames written exactly as given, several in one write when asked) and a raw
long-polling session on httpx (which never polls unless told to)."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import httpx
import orjson

from tests.conftest import masked_frame

TIMEOUT = 5.0
WS_PATH = "/socket.io/?EIO=4&transport=websocket"
POLL_PATH = "/socket.io/?EIO=4&transport=polling"


def _unmasked_binary(payload: bytes) -> bytes:
    """A binary client frame masked with the key 0 (legal, and free to build at any size)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x82, 0x80 | n])
    elif n < 65536:
        head = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class RawWs:
    """One websocket to ``/socket.io/``, frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.eio_sid = ""
        self.sid = ""
        self.answer_pings = True

    @classmethod
    async def open(cls, port: int, path: str = WS_PATH) -> RawWs:
        """Open a websocket; with the default path, read the Engine.IO OPEN packet too."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = cls(reader, writer)
        if path == WS_PATH:
            opened = await ws.text()
            assert opened.startswith("0{"), opened
            ws.eio_sid = orjson.loads(opened[1:])["sid"]
        return ws

    def send(self, *texts: str | bytes) -> None:
        """Write one frame per text (bytes: a binary frame), all in one write."""
        self.writer.write(
            b"".join(
                _unmasked_binary(t) if isinstance(t, bytes) else masked_frame(0x1, t.encode())
                for t in texts
            )
        )

    async def frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """The next frame (opcode, payload); (-1, b"") at the end of the stream."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            n = head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return head[0] & 0x0F, await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return -1, b""

    async def text(self, timeout: float = TIMEOUT) -> str:
        """The next text message, answering Engine.IO pings on the way; "" once closed."""
        while True:
            opcode, payload = await self.frame(timeout)
            if opcode in (-1, 0x8):
                return ""
            if opcode != 0x1:
                continue
            text = payload.decode()
            if text == "2" and self.answer_pings:
                self.send("3")
                continue
            return text

    async def connect(self, auth: Any = None) -> str:
        """Socket.IO CONNECT to "/"; the sid it got."""
        self.send("40" + (orjson.dumps(auth).decode() if auth is not None else ""))
        answer = await self.text()
        assert answer.startswith("40{"), answer
        self.sid = orjson.loads(answer[2:])["sid"]
        return self.sid

    async def ack(self, ack_id: int, timeout: float = TIMEOUT) -> Any:
        """The argument of ack ``ack_id`` (other messages are skipped)."""
        prefix = f"43{ack_id}["
        while True:
            text = await self.text(timeout)
            assert text, f"closed while waiting for ack {ack_id}"
            if text.startswith(prefix):
                return orjson.loads(text[len(prefix) - 1 :])[0]

    async def call(self, ack_id: int, event: str, payload: Any) -> Any:
        self.send(f"42{ack_id}" + orjson.dumps([event, payload]).decode())
        return await self.ack(ack_id)

    async def ended(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closed the websocket (close frame or end of stream) within
        ``timeout``; False if it is still open then. Other messages are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                opcode, _ = await self.frame(left)
            except TimeoutError:
                return False
            if opcode in (-1, 0x8):
                return True
        return False

    def abort(self) -> None:
        """Drop the connection: no close frame, no Engine.IO CLOSE."""
        self.writer.transport.abort()
        self.writer.close()

    def close(self) -> None:
        self.writer.close()


class RawPolling:
    """One long-polling session, request by request."""

    def __init__(self, http: httpx.AsyncClient, eio_sid: str) -> None:
        self.http = http
        self.eio_sid = eio_sid
        self.url = f"{POLL_PATH}&sid={eio_sid}"
        self.sid = ""

    @classmethod
    async def open(cls, http: httpx.AsyncClient) -> RawPolling:
        opened = await http.get(POLL_PATH)
        assert opened.status_code == 200 and opened.text.startswith("0{"), opened.text
        return cls(http, orjson.loads(opened.text[1:])["sid"])

    async def post(self, *packets: str) -> httpx.Response:
        return await self.http.post(self.url, content="\x1e".join(packets).encode())

    async def get(self) -> httpx.Response:
        return await self.http.get(self.url)

    async def packets(self) -> list[str]:
        """One poll's packets (the GET must succeed)."""
        r = await self.get()
        assert r.status_code == 200, (r.status_code, r.text)
        return r.text.split("\x1e") if r.text else []

    async def connect(self) -> str:
        assert (await self.post("40")).status_code == 200
        (answer,) = [p for p in await self.packets() if p.startswith("40")]
        self.sid = orjson.loads(answer[2:])["sid"]
        return self.sid

    async def ack(self, ack_id: int) -> Any:
        prefix = f"43{ack_id}["
        while True:
            for p in await self.packets():
                if p.startswith(prefix):
                    return orjson.loads(p[len(prefix) - 1 :])[0]

    async def call(self, ack_id: int, event: str, payload: Any) -> Any:
        r = await self.post(f"42{ack_id}" + orjson.dumps([event, payload]).decode())
        assert r.status_code == 200, (r.status_code, r.text)
        return await self.ack(ack_id)
