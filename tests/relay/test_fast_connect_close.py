"""Connects and closes without a task: relay's websocket fast paths, against the generic ones.

A websocket on ``/socket.io/`` is opened without ASGI (``RelayEngine.accept_websocket``), its
Socket.IO CONNECT and DISCONNECT are handled straight from the protocol
(``RelaySocketIO.handle_packet_now``), and its end closes the session without a task
(``RelaySocket._finish_now``). Long-polling keeps python-socketio's way. Both must look the
same to clients (presence events, connect_error data) and to relay (disconnect reasons, what
is held for recovery, and nothing left behind).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import socketio

from relay.app import create_app
from relay.core.auth import issue_token
from relay.settings import Settings
from relay.wire import engine, websocket
from tests.conftest import LiveRelay, masked_frame, serve_in_thread, wait_for
from tests.relay.test_lifecycle import _http_answer, _read_frame

ROOM = "fast-paths"


class Calls:
    """Counts calls of a few methods of the server (which runs in another thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts = {"drain": 0, "asgi": 0}
        drain = engine.RelaySocket._drain
        run_asgi = websocket.FastWebSocketProtocol.run_asgi

        async def counted_drain(sock: engine.RelaySocket) -> None:
            self.counts["drain"] += 1
            await drain(sock)

        async def counted_asgi(proto: websocket.FastWebSocketProtocol) -> None:
            self.counts["asgi"] += 1
            await run_asgi(proto)

        monkeypatch.setattr(engine.RelaySocket, "_drain", counted_drain)
        monkeypatch.setattr(websocket.FastWebSocketProtocol, "run_asgi", counted_asgi)


def _leftovers(live: LiveRelay, eio_sid: str, sid: str) -> list[str]:
    """Where a closed connection would still be remembered."""
    sio = live.app.state.sio
    relay = live.relay
    places = {
        "engine.io session": eio_sid in sio.eio.sockets,
        "environ": eio_sid in sio.environ,
        "manager": sio.manager.sid_from_eio_sid(eio_sid, "/") is not None,
        "rooms entered": ("/", sid) in sio.manager._entered,
        "relay member": relay.registry.get(sid) is not None,
        "pending disconnect": sid in sio.manager.pending_disconnect.get("/", ()),
    }
    return [name for name, left in places.items() if left]


@pytest.fixture
def disconnects(live_relay: LiveRelay, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(sid, recoverable) for every ``Relay.disconnect`` the handlers make."""
    relay = live_relay.relay
    seen: list[tuple[str, bool]] = []
    original = relay.disconnect

    def recording(sid: str, recoverable: bool = False) -> None:
        seen.append((sid, recoverable))
        original(sid, recoverable)

    monkeypatch.setattr(relay, "disconnect", recording)
    return seen


async def _watcher(url: str) -> tuple[socketio.AsyncClient, asyncio.Queue[Any]]:
    watcher = socketio.AsyncClient(reconnection=False)
    presence: asyncio.Queue[Any] = asyncio.Queue()
    watcher.on("presence", presence.put)
    await watcher.connect(url, transports=["websocket"])
    assert (await watcher.call("join", {"room": ROOM}))["ok"] is True
    return watcher, presence


async def _next_presence(presence: asyncio.Queue[Any], sid: str, action: str) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(presence.get(), 5)
        if event["member"]["sid"] == sid and event["action"] == action:
            return event  # type: ignore[no-any-return]


async def _leave_over_websocket(live: LiveRelay, joined: Any) -> tuple[str, str]:
    """A websocket client (on the wire, as socket.io-client does it) that joins ``ROOM``
    and then leaves on purpose: DISCONNECT ("41"), then the close frame."""
    reader, writer, opened = await _raw_connect(live.port)
    writer.write(masked_frame(0x1, b"40"))
    _, answer = await _read_frame(reader)
    sid = orjson.loads(answer[2:])["sid"]
    writer.write(masked_frame(0x1, b'421["join",{"room":"%s"}]' % ROOM.encode()))
    _, ack = await _read_frame(reader)
    assert ack.startswith(b'431[{"ok":true')
    await joined(sid)
    writer.write(masked_frame(0x1, b"41") + masked_frame(0x8, (1000).to_bytes(2, "big")))
    opcode, _ = await _read_frame(reader)
    assert opcode == 0x8
    assert await reader.read() == b""
    writer.close()
    return opened["sid"], sid


async def _leave_over_polling(live: LiveRelay, joined: Any) -> tuple[str, str]:
    """The same over long-polling (python-socketio's client: DISCONNECT, then CLOSE)."""
    leaver = socketio.AsyncClient(reconnection=False)
    await leaver.connect(live.url, transports=["polling"])
    sid = leaver.get_sid()
    eio_sid = leaver.eio.sid
    assert (await leaver.call("join", {"room": ROOM}))["ok"] is True
    await joined(sid)
    await leaver.disconnect()
    return eio_sid, sid


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_goodbye_is_the_same_over_both_transports(
    live_relay: LiveRelay,
    disconnects: list[tuple[str, bool]],
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    watcher, presence = await _watcher(live_relay.url)
    calls = Calls(monkeypatch)
    held = len(live_relay.relay.recovery)
    seen: dict[str, Any] = {}

    async def joined(sid: str) -> None:
        seen["join"] = await _next_presence(presence, sid, "join")

    leave = _leave_over_websocket if transport == "websocket" else _leave_over_polling
    try:
        eio_sid, sid = await leave(live_relay, joined)
        left = await _next_presence(presence, sid, "leave")
        assert left["room"] == seen["join"]["room"] == ROOM
        assert left["member"] == seen["join"]["member"]
        await wait_for(lambda: not _leftovers(live_relay, eio_sid, sid))
        # a goodbye ("client namespace disconnect") is not recoverable: nothing is held
        assert disconnects == [(sid, False)]
        assert len(live_relay.relay.recovery) == held
        if transport == "websocket":
            # opened without ASGI; CONNECT, join, DISCONNECT and close handled without a task
            assert calls.counts == {"drain": 0, "asgi": 0}
    finally:
        await watcher.disconnect()


async def _raw_connect(port: int, query: str = "EIO=4&transport=websocket") -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /socket.io/?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status, _, _ = await _http_answer(reader)
    assert status == 101
    opcode, opened = await _read_frame(reader)
    assert opcode == 0x1 and opened[:1] == b"0"
    return reader, writer, orjson.loads(opened[1:])


@pytest.mark.parametrize("goodbye", ["close frame", "dropped"])
async def test_a_websocket_lost_without_a_goodbye_is_recoverable(
    live_relay: LiveRelay, disconnects: list[tuple[str, bool]], goodbye: str
) -> None:
    watcher, presence = await _watcher(live_relay.url)
    try:
        reader, writer, opened = await _raw_connect(live_relay.port)
        assert opened["upgrades"] == [] and opened["pingInterval"] > 0
        eio_sid = opened["sid"]
        writer.write(masked_frame(0x1, b"40"))
        _, answer = await _read_frame(reader)
        assert answer[:2] == b"40"
        connected = orjson.loads(answer[2:])
        sid = connected["sid"]
        assert "pid" in connected  # connection state recovery is on
        writer.write(masked_frame(0x1, b'421["join",{"room":"%s"}]' % ROOM.encode()))
        _, ack = await _read_frame(reader)
        assert ack.startswith(b'431[{"ok":true')
        await _next_presence(presence, sid, "join")
        if goodbye == "close frame":
            writer.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
            opcode, _ = await _read_frame(reader)
            assert opcode == 0x8
        else:
            writer.transport.abort()
        await _next_presence(presence, sid, "leave")
        await wait_for(lambda: not _leftovers(live_relay, eio_sid, sid))
        # a lost transport (Socket.IO's "transport close"): its session is held for recovery
        assert disconnects.count((sid, True)) == 1
        assert live_relay.relay.recovery.find(connected["pid"]) is not None
        writer.close()
    finally:
        await watcher.disconnect()


async def test_a_second_connect_on_one_session_is_refused(live_relay: LiveRelay) -> None:
    reader, writer, _ = await _raw_connect(live_relay.port)
    try:
        writer.write(masked_frame(0x1, b"40"))
        _, answer = await _read_frame(reader)
        assert answer[:2] == b"40"
        writer.write(masked_frame(0x1, b"40"))
        _, again = await _read_frame(reader)
        assert again == b'44"Unable to connect"'  # as python-socketio answers
    finally:
        writer.transport.abort()


@pytest.mark.parametrize(
    "query",
    [
        "EIO=3&transport=websocket",  # an old protocol version
        "EIO=4&transport=websocket&sid=no-such-session",
        "EIO=4&transport=flash",
    ],
)
async def test_requests_the_direct_path_does_not_take_get_the_generic_answer(
    live_relay: LiveRelay, query: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live_relay.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /socket.io/?{query} HTTP/1.1\r\nHost: x\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status, _, _ = await _http_answer(reader)
    assert status != 101
    writer.close()


async def test_an_unrelated_query_parameter_still_takes_the_direct_path(
    live_relay: LiveRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    _, writer, opened = await _raw_connect(live_relay.port, "EIO=4&transport=websocket&t=1")
    try:
        assert opened["sid"] in live_relay.app.state.sio.eio.sockets
        assert calls.counts["asgi"] == 0
    finally:
        writer.transport.abort()


@pytest.fixture(scope="module")
def strict_origins() -> Iterator[LiveRelay]:
    with serve_in_thread(Settings(cors_origins=("http://good.example",))) as live:
        yield live


@pytest.mark.parametrize("origin", ["http://good.example", "http://evil.example"])
async def test_origins_are_still_checked_when_not_everyone_is_allowed(
    strict_origins: LiveRelay, origin: str
) -> None:
    port = strict_origins.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Origin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status, _, _ = await _http_answer(reader)
    assert (status == 101) is (origin == "http://good.example")
    writer.transport.abort()


async def test_http_requests_still_see_their_addresses(live_relay: LiveRelay) -> None:
    # relay.wire.http.HttpProtocol looks the addresses up only for a request that is not an upgrade
    seen: list[Any] = []
    app = live_relay.app
    call = type(app).__call__

    async def spy(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            seen.append((scope["client"], scope["server"]))
        await call(self, scope, receive, send)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(app), "__call__", spy)
        reader, writer = await asyncio.open_connection("127.0.0.1", live_relay.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, _ = await _http_answer(reader)
        writer.close()
    assert status == 200
    ((client, server),) = seen
    assert client[0] == "127.0.0.1" and isinstance(client[1], int)
    assert server == ("127.0.0.1", live_relay.port)


async def test_pre_connect_now_leaves_the_manager_as_pre_connect_does() -> None:
    def state(manager: Any, sid: str) -> Any:
        def named(x: Any) -> Any:
            return "SID" if x == sid else x

        rooms = {
            ns: {named(room): {named(k): v for k, v in m.items()} for room, m in r.items()}
            for ns, r in manager.rooms.items()
        }
        # (relay writes bidict's two dicts itself: the inverse maps must match too)
        inverse = {
            ns: {named(room): {e: named(s) for e, s in m.inverse.items()} for room, m in r.items()}
            for ns, r in manager.rooms.items()
        }
        entered = {(ns, named(s)): {named(x) for x in v} for (ns, s), v in manager._entered.items()}
        pending = {ns: [named(x) for x in v] for ns, v in manager.pending_connect.items()}
        return rooms, inverse, entered, pending

    fast = create_app(Settings()).state.sio.manager
    slow = create_app(Settings()).state.sio.manager
    for manager in (fast, slow):
        manager.initialize()
    sid_fast = fast.pre_connect_now("eio-1", "/")
    sid_slow = await slow.pre_connect("eio-1", "/")
    assert sid_fast and sid_slow
    assert state(fast, sid_fast) == state(slow, sid_slow)
    assert fast.pre_connect_now("eio-1", "/") is None  # that session is connected already
    assert await slow.pre_connect("eio-1", "/") is None
    assert state(fast, sid_fast) == state(slow, sid_slow)
    fast.connect_now(sid_fast, "/")
    await slow.connect(sid_slow, "/")
    assert state(fast, sid_fast) == state(slow, sid_slow)
    assert fast.is_connected(sid_fast, "/") and slow.is_connected(sid_slow, "/")
    assert fast.sid_from_eio_sid("eio-1", "/") == sid_fast


@pytest.fixture
def relay_without_recovery() -> Iterator[LiveRelay]:
    with serve_in_thread(Settings(recovery_ttl=0, secret="s3cret", api_key="k")) as live:
        yield live


async def test_connects_take_the_direct_path_with_recovery_off_too(
    relay_without_recovery: LiveRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CONNECT gate serves with recovery off as well (it has no session to hand back): no
    task, the answer without a ``pid``, and a bad token still refused with its error."""
    live = relay_without_recovery
    calls = Calls(monkeypatch)
    token = issue_token("s3cret", user="ann", ttl_s=60)
    reader, writer, _ = await _raw_connect(live.port)
    try:
        writer.write(masked_frame(0x1, b"40" + orjson.dumps({"token": token})))
        _, answer = await _read_frame(reader)
        assert answer[:2] == b"40"
        connected = orjson.loads(answer[2:])
        assert set(connected) == {"sid"}  # no recovery, so no pid
        assert live.relay.registry.get(connected["sid"]).user == "ann"
        assert calls.counts["drain"] == 0  # handled straight from the frame
    finally:
        writer.transport.abort()
    reader, writer, _ = await _raw_connect(live.port)
    try:
        writer.write(masked_frame(0x1, b'40{"token":"forged"}'))
        _, refused = await _read_frame(reader)
        assert refused[:2] == b"44"
        assert orjson.loads(refused[2:])["data"]["code"] == "unauthorized"
        assert calls.counts["drain"] == 0
    finally:
        writer.transport.abort()
