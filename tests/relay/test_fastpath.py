"""relay's fast path: pre-encoded websocket frames, one ping scheduler, O(1) disconnects."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import socketio
from websockets.frames import Frame

from relay.settings import Settings
from relay.wire.frames import text_frame
from relay.wire.sio import RelayManager
from tests.conftest import LiveRelay, serve_in_thread, wait_for


def _parse(data: bytes) -> Frame:
    """Parse one server frame with the websockets library's own (independent) parser."""

    def reader(n: int) -> Any:
        nonlocal data
        chunk, data = data[:n], data[n:]
        if False:  # pragma: no cover - makes this a generator
            yield
        return chunk

    gen = Frame.parse(reader, mask=False)
    try:
        while True:
            next(gen)
    except StopIteration as done:
        frame: Frame = done.value
        return frame


def test_frames_match_the_rfc_for_every_length_class() -> None:
    for size in (0, 1, 125, 126, 65535, 65536, 70000):
        body = "é" * (size // 2) + "x" * (size % 2)
        frame = _parse(text_frame(body))
        assert frame.fin and frame.opcode.name == "TEXT"
        assert frame.data.decode() == body


async def test_websocket_clients_get_the_fast_path_in_order(live_relay: LiveRelay) -> None:
    ws, poll, upgraded = (socketio.AsyncClient() for _ in range(3))
    got: dict[str, list[int]] = {"ws": [], "poll": [], "upgraded": []}
    for name, client in (("ws", ws), ("poll", poll), ("upgraded", upgraded)):
        client.on("message", lambda env, name=name: got[name].append(env["data"]))
    await ws.connect(live_relay.url, transports=["websocket"])
    await poll.connect(live_relay.url, transports=["polling"])
    await upgraded.connect(live_relay.url)  # polling first, then the upgrade
    try:
        eio = live_relay.app.state.sio.eio
        await wait_for(lambda: eio.sockets[upgraded.eio.sid].fast is not None)
        assert eio.sockets[ws.eio.sid].fast is not None
        assert eio.sockets[poll.eio.sid].fast is None
        for client in (ws, poll, upgraded):
            assert (await client.call("join", {"room": "burst"}))["ok"] is True
        # a burst: many publishes handled in one loop iteration get coalesced into one write
        acks = await asyncio.gather(
            *(ws.call("publish", {"room": "burst", "data": i}) for i in range(200))
        )
        assert [a["offset"] for a in acks] == list(range(1, 201))
        await wait_for(lambda: all(len(v) == 200 for v in got.values()), timeout=20)
        assert got["ws"] == got["poll"] == got["upgraded"] == list(range(200))
    finally:
        for client in (ws, poll, upgraded):
            await client.disconnect()


async def test_pings_keep_live_clients_and_drop_silent_ones() -> None:
    settings = Settings(ping_interval=0.2, ping_timeout=0.4)
    with serve_in_thread(settings) as live:
        # no reconnection: a reconnect attempt would open a new session behind the test's back
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(live.url, transports=["websocket"])
        eio = live.app.state.sio.eio
        sock = eio.sockets[client.eio.sid]
        try:
            # the client answers: several ping cycles pass and it stays connected
            await wait_for(lambda: sock.ping_seq >= 4, timeout=10)
            assert client.connected and not sock.closed
            # a client that stops answering pings is closed, and forgotten by the server
            real_send = client.eio._send_packet

            async def no_pong(pkt: Any) -> None:
                if pkt.packet_type != 3:  # PONG
                    await real_send(pkt)

            client.eio._send_packet = no_pong
            await wait_for(lambda: sock.closed, timeout=10)
            await wait_for(lambda: client.eio.sid not in eio.sockets, timeout=10)
            assert len(live.relay.registry) == 0
        finally:
            await client.disconnect()
            # dropped by the server, the client leaves its websocket and HTTP session to the
            # GC: close both here, so no unclosed-connection warning lands on a later test
            ws = getattr(client.eio, "ws", None)
            if ws is not None and not ws.closed:
                await ws.close()
            http = getattr(client.eio, "http", None)
            if http is not None and not http.closed:
                await http.close()


def test_manager_disconnect_walks_only_the_clients_rooms() -> None:
    manager = RelayManager()
    manager.rooms = {}
    for i in range(50):
        manager.basic_enter_room(f"s{i}", "/", None, eio_sid=f"e{i}")
        manager.basic_enter_room(f"s{i}", "/", f"s{i}", eio_sid=f"e{i}")
    manager.basic_enter_room("s1", "/", "shared")
    manager.basic_enter_room("s2", "/", "shared")
    manager.basic_disconnect("s1", "/")
    assert "s1" not in manager.rooms["/"]
    assert "s1" not in manager.rooms["/"][None]
    assert dict(manager.rooms["/"]["shared"]) == {"s2": "e2"}
    for i in range(50):
        manager.basic_disconnect(f"s{i}", "/")
    assert manager.rooms == {}
    assert manager._entered == {}


def test_manager_disconnect_leaves_the_rooms_python_socketio_would() -> None:
    # RelayManager writes BaseManager.basic_leave_room out for speed: against python-socketio's
    # own disconnect, over random rooms and orders (nobody else may enter a sid's own room)
    rng = random.Random(7)
    for _ in range(200):
        ours, theirs = RelayManager(), socketio.AsyncManager()
        ours.rooms, theirs.rooms = {}, {}
        sids = [f"s{i}" for i in range(6)]
        for manager in (ours, theirs):
            for sid in sids:
                manager.basic_enter_room(sid, "/", None, eio_sid="e" + sid)
                manager.basic_enter_room(sid, "/", sid, eio_sid="e" + sid)
        for _ in range(rng.randrange(12)):
            sid, room = rng.choice(sids), rng.choice("abc")
            for manager in (ours, theirs):
                manager.basic_enter_room(sid, "/", room)
        for sid in rng.sample(sids, rng.randrange(1, len(sids) + 1)):
            ours.basic_disconnect(sid, "/")
            socketio.base_manager.BaseManager.basic_disconnect(theirs, sid, "/")

            def plain(rooms: dict[str, Any]) -> dict[str, Any]:
                return {ns: {r: dict(m) for r, m in by.items()} for ns, by in rooms.items()}

            assert plain(ours.rooms) == plain(theirs.rooms)
            for room_sids in ours.rooms.get("/", {}).values():  # the inverse maps too
                assert dict(room_sids.inverse) == {e: s for s, e in room_sids.items()}


async def test_websocket_environ_headers_as_python_engineio_translates_them() -> None:
    # relay builds a websocket's environ itself (names cached per header): the same HTTP_* and
    # CONTENT_* entries as python-engineio's translate_request, repeats joined, bad bytes skipped
    from engineio.async_drivers.asgi import translate_request

    from relay.wire import engine
    from relay.wire.engine import websocket_environ

    headers = [
        (b"host", b"127.0.0.1"),
        (b"upgrade", b"websocket"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"X-Forwarded-For", b"10.0.0.2"),  # another case: a name of its own in the cache
        (b"x-forwarded-for", b"10.0.0.3"),
        (b"content-type", b"text/plain"),
        (b"content-type", b"application/json"),  # (overwrites, never joins)
        (b"content-length", b"0"),
        (b"x-latin", b"caf\xe9"),  # not UTF-8: skipped
        (b"x-\xff", b"skipped too"),
        (b"cookie", b"a=1"),
    ]
    for _ in range(2):  # the second time from the cache
        ours = websocket_environ("/socket.io/", "EIO=4&transport=websocket", headers)

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        scope = {"path": "/socket.io/", "query_string": b"", "headers": headers}
        theirs = await translate_request(scope, receive, None)
        wanted = {k: v for k, v in theirs.items() if k.startswith(("HTTP_", "CONTENT_"))}
        assert {k: v for k, v in ours.items() if k.startswith(("HTTP_", "CONTENT_"))} == wanted
        assert ours["HTTP_X_FORWARDED_FOR"] == "10.0.0.1,10.0.0.2,10.0.0.3"
    # a client inventing header names cannot grow the cache; the names past it still translate
    many = [(b"x-made-up-%d" % i, b"v") for i in range(2 * engine._ENVIRON_KEYS_MAX)]
    environ = websocket_environ("/socket.io/", "", many)
    assert len(engine._ENVIRON_KEYS) <= engine._ENVIRON_KEYS_MAX
    assert environ[f"HTTP_X_MADE_UP_{2 * engine._ENVIRON_KEYS_MAX - 1}"] == "v"
