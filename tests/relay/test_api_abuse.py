"""The HTTP API under hostile use: responses nobody reads, payloads nested to the limit,
cross-site publishes, and a secret without a key."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from relay.core import envelope
from relay.settings import Settings
from tests.conftest import ROOT, serve_in_thread, start_relay_process, wait_for

API_KEY = "abuse-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _rss_kb(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert m is not None
    return int(m.group(1))


def _unread_request(port: int, path: str) -> socket.socket:
    """Send a GET with a tiny receive buffer, read the first bytes of the answer, then stop."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
    )
    sock.settimeout(10)
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    return sock


async def test_history_pages_nobody_reads_hold_a_chunk_not_the_page() -> None:
    relay = start_relay_process(env={"RELAY_API_KEY": API_KEY, "RELAY_API_RATE": "0"})
    sockets: list[socket.socket] = []
    try:
        big = "z" * 60_000
        async with httpx.AsyncClient(base_url=relay.url, headers=AUTH, timeout=30) as http:
            for i in range(1000):  # 60 MB of history in one room (under the 64 MiB default)
                r = await http.post("/api/v1/rooms/big/events", json={"data": [i, big]})
                assert r.status_code == 200, r.text
        before = _rss_kb(relay.proc.pid)
        for _ in range(10):  # each page is the whole room: 60 MB that is never read
            sockets.append(_unread_request(relay.port, "/api/v1/rooms/big/history?limit=1000"))
        # every request is in its streaming loop now (its first bytes arrived); the old code
        # had written its whole 60 MB answer into the transport's buffer by then
        async with httpx.AsyncClient(base_url=relay.url, headers=AUTH, timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
        grown_mb = (_rss_kb(relay.proc.pid) - before) / 1024
        assert grown_mb < 100, f"RSS grew {grown_mb:.0f} MB for 10 unread history pages"
    finally:
        for sock in sockets:
            sock.close()
        relay.stop()


async def test_history_pages_stream_every_message_in_order() -> None:
    with serve_in_thread(Settings(api_key=API_KEY)) as live:
        async with httpx.AsyncClient(base_url=live.url, headers=AUTH, timeout=10) as http:
            for i in range(40):
                await http.post("/api/v1/rooms/paged/events", json={"data": i})
            r = await http.get("/api/v1/rooms/paged/history?since=3&limit=33")
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            body = r.json()
            assert body["room"] == "paged"
            assert [m["data"] for m in body["messages"]] == list(range(3, 36))
            assert [m["offset"] for m in body["messages"]] == list(range(4, 37))


async def test_data_nested_to_the_limit_pages_fine() -> None:
    # 252-254 levels used to make every history page holding it answer 500 (the page's own
    # nesting pushed the envelope past the encoder's depth)
    with serve_in_thread(Settings(api_key=API_KEY)) as live:
        async with httpx.AsyncClient(base_url=live.url, headers=AUTH, timeout=10) as http:
            for depth in (252, 253, envelope.MAX_DEPTH):
                data = orjson.loads("[" * depth + "]" * depth)
                r = await http.post("/api/v1/rooms/deep/events", json={"data": data})
                assert r.status_code == 200, r.text
            r = await http.get("/api/v1/rooms/deep/history")
            assert r.status_code == 200, r.text
            got = json.loads(r.text)["messages"]
            assert [m["offset"] for m in got] == [1, 2, 3]
            assert got[2]["data"] == orjson.loads("[" * 254 + "]" * 254)


async def test_a_cross_site_form_cannot_publish() -> None:
    # A web page can POST text/plain or a form to any origin without a preflight; JSON only
    # means a browser must ask first (CORS), and relay's API does not answer that.
    with serve_in_thread(Settings()) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            for headers, body in [
                ({"content-type": "text/plain"}, b'{"data": 1}'),
                ({"content-type": "application/x-www-form-urlencoded"}, b"data=1"),
                ({"content-type": "multipart/form-data; boundary=x"}, b"--x--"),
                ({}, b'{"data": 1}'),
            ]:
                r = await http.post("/api/v1/rooms/xsite/events", content=body, headers=headers)
                assert r.status_code == 415 and r.json()["error"]["code"] == "bad_request"
            r = await http.post(
                "/api/v1/rooms/xsite/events",
                content=b'{"data": 1}',
                headers={"content-type": "application/json; charset=utf-8"},
            )
            assert r.status_code == 200 and r.json()["offset"] == 1  # nothing before it counted


def test_a_secret_without_an_api_key_refuses_to_start_with_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "RELAY_SECRET": "s3cret", "PORT": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "RELAY_API_KEY" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
async def test_an_open_relay_on_a_public_interface_warns_loudly(host: str, warned: bool) -> None:
    relay = start_relay_process(env={"RELAY_HOST": host})
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
        text = "".join(relay.lines)
        assert ("OPEN MODE ON A PUBLIC INTERFACE" in text) is warned, text
    finally:
        relay.stop()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_client_leaving_mid_body_is_not_an_internal_error() -> None:
    logger = logging.getLogger("relay.api")
    records = _Records()
    with serve_in_thread(Settings()) as live:
        # (after start-up: uvicorn's logging setup resets the handlers of relay's loggers)
        logger.addHandler(records)
        logger.setLevel(logging.DEBUG)
        try:
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", live.port)) as sock:
                    sock.sendall(
                        b"POST /api/v1/rooms/r/events HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                        b'{"data": '
                    )
            await wait_for(lambda: len(records.records) >= 3, timeout=10)
            assert all(r.levelno == logging.DEBUG for r in records.records), [
                r.getMessage() for r in records.records
            ]
            assert all(r.exc_info is None for r in records.records)
        finally:
            logger.removeHandler(records)
            logger.setLevel(logging.NOTSET)
