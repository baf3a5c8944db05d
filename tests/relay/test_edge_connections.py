"""TCP connections at the edge: the header timeout (slowloris), the caps in total and per IP, the
per-IP connect rate, X-Forwarded-For behind a trusted proxy, and counts that never leak.

Before, a client could hold a connection open forever by never finishing its headers, and open
as many as it liked.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import orjson
import pytest
import socketio

from relay.limits import OFF, Rate
from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread, wait_for
from tests.relay.conftest import close_client

Response = tuple[int, dict[str, str], bytes]


class Http:
    """One raw HTTP/1.1 connection (keep-alive), or what the server said when it refused it."""

    def __init__(self, port: int, send: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        if send:
            self.sock.sendall(send)

    def request(self, path: str = "/healthz", headers: str = "") -> Response:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: relay\r\n{headers}\r\n".encode())
        return self.response()

    def response(self) -> Response:
        """The next response on this connection (by its content-length)."""
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(fields.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, fields, body

    def closed(self) -> bool:
        """Whether the server closed the connection (waiting up to the socket's timeout)."""
        try:
            self._more()
        except EOFError:
            return True
        return False

    def _more(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _refused(port: int, headers: str = "") -> Response:
    """Connect and read the refusal the server answers with (a request first, with headers)."""
    conn = Http(port)
    try:
        if headers:
            return conn.request("/healthz", headers)
        return conn.response()  # (refused at accept: the answer comes before any request)
    finally:
        conn.close()


def _edge(port: int) -> dict[str, Any]:
    conn = Http(port)
    try:
        status, _, body = conn.request("/healthz", "Connection: close\r\n")
    finally:
        conn.close()
    assert status == 200, body
    return orjson.loads(body)["edge"]  # type: ignore[no-any-return]


def _error(response: Response, status: int, code: str, setting: str) -> None:
    got, fields, body = response
    assert got == status, (got, body)
    assert fields["content-type"] == "application/json"
    error = orjson.loads(body)["error"]
    assert error["code"] == code, error
    assert setting in error["message"], error


async def _no_leak(live: LiveRelay) -> None:
    """Every connection but the one asking has been released."""

    def settled() -> bool:
        edge = _edge(live.port)
        return (edge["connections"], edge["ips"], edge["busiest_ip_connections"]) == (1, 1, 1)

    await wait_for(settled, timeout=10, interval=0.05)
    assert _edge(live.port)["waiting_for_request"] == 0


async def test_a_request_that_never_completes_is_closed_after_the_header_timeout() -> None:
    settings = Settings(header_timeout=0.5, connect_rate=OFF)
    with serve_in_thread(settings, edge_limits=True) as live:
        port = live.port
        silent = Http(port)  # sends nothing at all
        half = Http(port, b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")  # half its headers
        body = b"POST /api/v1/rooms/r/events HTTP/1.1\r\nHost: relay\r\n"
        body += b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"data"'
        slow_post = Http(port, body)  # headers in, 7 of 100 bytes of body
        kept = Http(port)
        assert kept.request()[0] == 200  # a keep-alive request served, then half of the next
        kept.sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        sio = socketio.AsyncClient()
        await sio.connect(live.url, transports=["websocket"])  # (upgraded: not a slow request)
        try:
            for conn in (silent, half, slow_post, kept):
                response = await asyncio.to_thread(conn.response)  # (within the socket timeout)
                _error(response, 408, "bad_request", "RELAY_HEADER_TIMEOUT")
                assert await asyncio.to_thread(conn.closed)
                conn.close()
            edge = _edge(port)
            assert edge["header_timeouts"] == 4, edge
            ack = await sio.call("join", {"room": "still-here"}, timeout=10)
            assert ack["ok"], ack
        finally:
            await sio.disconnect()
        await _no_leak(live)


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    # uvicorn's timeout_keep_alive, between requests, still works with relay's HTTP protocol
    with serve_in_thread(timeout_keep_alive=1) as live:
        conn = Http(live.port)
        assert conn.request()[0] == 200
        assert await asyncio.to_thread(conn.closed)  # (within the socket's 10 s timeout)
        conn.close()


async def test_past_the_per_ip_cap_new_connections_get_429_and_old_ones_keep_working() -> None:
    settings = Settings(max_connections_per_ip=3, connect_rate=OFF)
    with serve_in_thread(settings, edge_limits=True) as live:
        port = live.port
        held = [Http(port) for _ in range(2)]
        for conn in held:
            assert conn.request()[0] == 200
        sio = socketio.AsyncClient()  # a websocket counts as the connection it upgraded
        await sio.connect(live.url, transports=["websocket"])
        try:
            refusal = await asyncio.to_thread(_refused, port)
            _error(refusal, 429, "rate_limited", "RELAY_MAX_CONNECTIONS_PER_IP")
            assert "127.0.0.1" in orjson.loads(refusal[2])["error"]["message"]
            for conn in held:  # the earlier connections are untouched
                assert conn.request()[0] == 200
            assert (await sio.call("join", {"room": "r"}, timeout=10))["ok"]
        finally:
            await sio.disconnect()
        # the websocket's close released its place: a new connection gets in
        await wait_for(lambda: _healthz_status(port) == 200, timeout=10, interval=0.05)
        for conn in held:
            conn.close()
        await _no_leak(live)
        assert _edge(port)["refused"]["max_connections_per_ip"] >= 1


def _healthz_status(port: int) -> int:
    conn = Http(port)
    try:
        return conn.request("/healthz", "Connection: close\r\n")[0]
    except EOFError:
        return 0
    finally:
        conn.close()


async def test_past_the_total_cap_new_connections_get_503() -> None:
    settings = Settings(
        max_connections=2, max_connections_per_ip=0, connect_rate=OFF, inbound_rate=OFF
    )
    with serve_in_thread(settings, edge_limits=True) as live:
        held = [Http(live.port) for _ in range(2)]
        for conn in held:
            assert conn.request()[0] == 200
        refusal = await asyncio.to_thread(_refused, live.port)
        _error(refusal, 503, "unavailable", "RELAY_MAX_CONNECTIONS")
        assert held[0].request()[0] == 200
        held[0].close()
        await wait_for(lambda: _healthz_status(live.port) == 200, timeout=10, interval=0.05)
        held[1].close()
        await wait_for(lambda: _edge(live.port)["connections"] == 1, timeout=10, interval=0.05)
        edge = _edge(live.port)
        assert edge["refused"] == {
            "max_connections": 1,
            "max_connections_per_ip": 0,
            "connect_rate": 0,
        }
        assert edge["max_connections"] == 2 and edge["ips"] is None  # (no per-IP limit: no look-up)


def _ws_handshake(port: int, headers: str = "") -> Response:
    """A websocket handshake on /socket.io/ (a new Engine.IO session); the 101's head, or the
    refusal."""
    conn = Http(port)
    try:
        conn.sock.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: relay\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"{headers}\r\n"
            ).encode()
        )
        return conn.response()
    finally:
        conn.close()


async def test_new_sessions_per_ip_are_rate_limited_not_http_requests() -> None:
    settings = Settings(connect_rate=Rate(0.1, 3), max_connections_per_ip=0)
    with serve_in_thread(settings, edge_limits=True) as live:
        # HTTP requests on new TCP connections are not new clients (Node's long-polling and a
        # serverless function calling the API open one per request): never rate limited
        for _ in range(10):
            assert _healthz_status(live.port) == 200
        # new Engine.IO sessions are: the burst over polling and websocket, then 429
        async with httpx.AsyncClient(base_url=live.url) as http:
            for _ in range(2):
                r = await http.get("/socket.io/?EIO=4&transport=polling")
                assert r.status_code == 200 and r.text.startswith("0{"), r.text
            assert (await asyncio.to_thread(_ws_handshake, live.port))[0] == 101
            r = await http.get("/socket.io/?EIO=4&transport=polling")
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "rate_limited"
            assert "RELAY_CONNECT_RATE" in r.json()["error"]["message"]
        refusal = await asyncio.to_thread(_ws_handshake, live.port)
        _error(refusal, 429, "rate_limited", "RELAY_CONNECT_RATE")
        assert int(refusal[1]["retry-after"]) >= 1
        assert orjson.loads(refusal[2])["error"]["retry_after_ms"] > 0
        # (the official clients see a connect_error and retry with backoff)
        client = socketio.AsyncClient(reconnection=False)
        try:
            with pytest.raises(socketio.exceptions.ConnectionError):
                await client.connect(live.url, transports=["websocket"], wait_timeout=5)
        finally:
            await close_client(client)
        edge = live.app.state.edge.describe()
        assert edge["refused"]["connect_rate"] == 3 and edge["connect_rate"] == "0.1/s,3"


async def test_behind_a_trusted_proxy_sessions_are_rated_by_forwarded_ip() -> None:
    settings = Settings(trust_proxy=True, connect_rate=Rate(0.1, 1), max_connections_per_ip=0)
    with serve_in_thread(settings, edge_limits=True) as live:
        for ip in ("203.0.113.7", "198.51.100.1"):
            head = f"X-Forwarded-For: 192.0.2.99, {ip}\r\n"
            assert (await asyncio.to_thread(_ws_handshake, live.port, head))[0] == 101
        refusal = await asyncio.to_thread(
            _ws_handshake, live.port, "X-Forwarded-For: 203.0.113.7\r\n"
        )
        _error(refusal, 429, "rate_limited", "RELAY_CONNECT_RATE")
        assert "203.0.113.7" in orjson.loads(refusal[2])["error"]["message"]


async def test_behind_a_trusted_proxy_the_forwarded_ip_is_counted() -> None:
    settings = Settings(trust_proxy=True, max_connections_per_ip=2, connect_rate=OFF)
    with serve_in_thread(settings, edge_limits=True) as live:
        port = live.port
        first = "X-Forwarded-For: 203.0.113.7\r\n"
        held = [Http(port) for _ in range(2)]
        for conn in held:
            assert conn.request("/healthz", first)[0] == 200
        # the last entry is the one the proxy saw; what the client put before it is ignored
        refusal = await asyncio.to_thread(
            _refused, port, "X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n"
        )
        _error(refusal, 429, "rate_limited", "RELAY_MAX_CONNECTIONS_PER_IP")
        assert "203.0.113.7" in orjson.loads(refusal[2])["error"]["message"]
        other = Http(port)  # another client behind the same proxy: counted apart
        assert other.request("/healthz", "X-Forwarded-For: 198.51.100.1\r\n")[0] == 200
        # a connection is counted under the IP of its first request, for as long as it lasts
        assert held[0].request("/healthz", "X-Forwarded-For: 198.51.100.1\r\n")[0] == 200

        def counts() -> tuple[int, int, int]:
            edge = _edge(port)  # (this request, without the header, is 127.0.0.1's)
            return edge["ips"], edge["busiest_ip_connections"], edge["connections"]

        await wait_for(lambda: counts() == (3, 2, 4), timeout=10, interval=0.05)
        for conn in [*held, other]:
            conn.close()
        await _no_leak(live)


async def test_every_way_a_connection_ends_releases_its_count() -> None:
    settings = Settings(header_timeout=0.3, max_connections_per_ip=50, connect_rate=OFF)
    with serve_in_thread(settings, edge_limits=True) as live:
        port = live.port
        clients = [socketio.AsyncClient() for _ in range(3)]
        await clients[0].connect(live.url, transports=["websocket"])
        await clients[1].connect(live.url, transports=["polling"])
        await clients[2].connect(live.url)  # polling, then upgraded to a websocket
        conns = [Http(port) for _ in range(3)]
        for conn in conns:
            assert conn.request()[0] == 200
        timed_out = Http(port, b"GET / HTTP/1.1\r\n")
        bad = Http(port, b"NOT HTTP AT ALL\r\n\r\n")  # answered 400 by uvicorn
        refused_upgrade = Http(
            port,
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: relay\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )  # no Sec-WebSocket-Key: refused with a 400 by the websocket protocol
        assert (await asyncio.to_thread(refused_upgrade.response))[0] == 400
        assert (await asyncio.to_thread(bad.response))[0] == 400
        assert (await asyncio.to_thread(timed_out.response))[0] == 408
        edge = _edge(port)
        assert edge["connections"] >= 7, edge
        for sio in clients:
            await sio.disconnect()
        for conn in [*conns, timed_out, bad, refused_upgrade]:
            conn.close()
        await _no_leak(live)
