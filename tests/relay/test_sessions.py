"""The lifecycle of a session: a closed session accepts nothing, and every way a connection
ends runs relay's disconnect exactly once (issue 11: ghost connections).

Each test drives a raw client (websocket frames or polling requests, exactly as written) and
then checks the server's own records: relay's registry, the Engine.IO sessions, the
Socket.IO manager, and a ledger of ``Relay.connect`` / ``Relay.disconnect`` calls.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread, wait_for
from tests.relay.conftest import Peers, unique
from tests.relay.raw import TIMEOUT, RawPolling, RawWs


@dataclass
class Ledger:
    """Every ``Relay.connect`` and ``Relay.disconnect`` (sid, recoverable) of one relay."""

    connects: list[str] = field(default_factory=list)
    disconnects: list[tuple[str, bool]] = field(default_factory=list)

    def attach(self, relay: Any, monkeypatch: pytest.MonkeyPatch) -> Ledger:
        connect, disconnect = relay.connect, relay.disconnect

        def connecting(sid: str, *args: Any, **kwargs: Any) -> Any:
            self.connects.append(sid)
            return connect(sid, *args, **kwargs)

        def disconnecting(sid: str, recoverable: bool = False) -> None:
            self.disconnects.append((sid, recoverable))
            disconnect(sid, recoverable)

        monkeypatch.setattr(relay, "connect", connecting)
        monkeypatch.setattr(relay, "disconnect", disconnecting)
        return self

    def times_disconnected(self, sid: str) -> int:
        return sum(1 for s, _ in self.disconnects if s == sid)

    def each_once(self) -> bool:
        """Every connection that was made was disconnected, exactly once."""
        counts = Counter(s for s, _ in self.disconnects)
        return set(counts) == set(self.connects) and all(n == 1 for n in counts.values())


@pytest.fixture
def ledger(live_relay: LiveRelay, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    return Ledger().attach(live_relay.relay, monkeypatch)


def leftovers(live: LiveRelay, eio_sid: str, *sids: str) -> list[str]:
    """Where a gone connection would still be remembered."""
    sio = live.app.state.sio
    places = {
        "engine.io session": eio_sid in sio.eio.sockets,
        "environ": eio_sid in sio.environ,
        "manager": sio.manager.sid_from_eio_sid(eio_sid, "/") is not None,
        "binary packet": eio_sid in sio._binary_packet,
    }
    for sid in sids:
        places[f"relay member {sid}"] = live.relay.registry.get(sid) is not None
        places[f"rooms entered {sid}"] = ("/", sid) in sio.manager._entered
    return [name for name, left in places.items() if left]


async def gone(live: LiveRelay, eio_sid: str, *sids: str) -> None:
    """Wait (with a deadline) until nothing of the connection is left in the server."""
    try:
        await wait_for(lambda: not leftovers(live, eio_sid, *sids), timeout=TIMEOUT)
    except AssertionError:
        raise AssertionError(f"still held: {leftovers(live, eio_sid, *sids)}") from None


async def healthz_connections(live: LiveRelay) -> int:
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
        return int((await http.get("/healthz")).json()["connections"])


def _left(room: str, sid: str) -> Any:
    return lambda e, p: e == "presence" and p["action"] == "leave" and p["member"]["sid"] == sid


# -- the ghost, and a closed session's input -------------------------------------------------


@pytest.mark.parametrize("one_write", [False, True], ids=["separate", "one-write"])
async def test_a_close_packet_ends_the_websocket_and_nothing_after_it_connects(
    live_relay: LiveRelay, connect_ws: Peers, ledger: Ledger, one_write: bool
) -> None:
    """The ghost of issue 11: CLOSE (``1``) on a websocket that stays open, then CONNECT and
    join. The connection must end (its websocket closed by the server), its leave heard, and
    the CONNECT after the CLOSE must create nothing."""
    room = unique()
    watcher = await connect_ws()
    await watcher.ok("join", {"room": room})
    before = await healthz_connections(live_relay)
    ws = await RawWs.open(live_relay.port)
    sid = await ws.connect()
    assert (await ws.call(1, "join", {"room": room}))["ok"] is True
    await watcher.until(lambda e, p: e == "presence" and p["action"] == "join")
    after_close = ("40", '422["join",{"room":"' + room + '"}]')
    if one_write:  # (queued behind the CLOSE for the same reader)
        ws.send("1", *after_close)
    else:
        ws.send("1")
        await watcher.until(_left(room, sid))
        ws.send(*after_close)
    assert await ws.ended(), "the server left the websocket open after an Engine.IO CLOSE"
    if one_write:
        await watcher.until(_left(room, sid))
    await gone(live_relay, ws.eio_sid, sid)
    assert ledger.connects == [watcher.sid, sid], "a closed session accepted a CONNECT"
    assert ledger.disconnects == [(sid, True)]  # (no goodbye from Socket.IO: recoverable)
    presence = await watcher.call("presence", {"room": room})
    assert [m["sid"] for m in presence["members"]] == [watcher.sid]
    assert await healthz_connections(live_relay) == before
    ws.close()


async def test_a_polling_session_closed_by_its_client_takes_no_more_requests(
    live_relay: LiveRelay, ledger: Ledger
) -> None:
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        session = await RawPolling.open(http)
        sid = await session.connect()
        assert (await session.post("1")).status_code == 200
        later = await session.post("40")
        assert later.status_code == 400, (later.status_code, later.text)
        assert (await session.get()).status_code == 400
        await gone(live_relay, session.eio_sid, sid)
    assert ledger.connects == [sid]
    assert ledger.disconnects == [(sid, True)]


async def test_what_follows_a_close_in_one_post_is_not_taken(
    live_relay: LiveRelay, ledger: Ledger
) -> None:
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        session = await RawPolling.open(http)
        sid = await session.connect()
        room = unique()
        r = await session.post("1", "40", '421["join",{"room":"' + room + '"}]')
        assert r.status_code == 200
        await gone(live_relay, session.eio_sid, sid)
    assert ledger.connects == [sid]
    assert ledger.disconnects == [(sid, True)]
    assert not live_relay.relay.registry.occupied(room)


async def test_a_close_during_the_upgrade_ends_the_session_for_good(
    live_relay: LiveRelay, ledger: Ledger
) -> None:
    """Polling, then the websocket probe; the client closes over polling before UPGRADE.
    The websocket must not take over the closed session (it would accept a CONNECT)."""
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        session = await RawPolling.open(http)
        sid = await session.connect()
        ws = await RawWs.open(
            live_relay.port, f"/socket.io/?EIO=4&transport=websocket&sid={session.eio_sid}"
        )
        ws.send("2probe")
        assert await ws.text() == "3probe"
        assert (await session.post("1")).status_code == 200
        ws.send("5", "40")
        assert await ws.ended(), "a closed session was upgraded"
        await gone(live_relay, session.eio_sid, sid)
        ws.close()
    assert ledger.connects == [sid]
    assert ledger.disconnects == [(sid, True)]


# -- siblings: each way a connection ends ----------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_disconnect_then_connect_again_on_one_session(
    live_relay: LiveRelay, ledger: Ledger, transport: str
) -> None:
    """The protocol lets a client leave "/" (``41``) and connect again on the same Engine.IO
    session: that works, and both connections are cleaned up, once each."""
    room = unique()
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        client: RawWs | RawPolling
        if transport == "websocket":
            client = await RawWs.open(live_relay.port)
        else:
            client = await RawPolling.open(http)
        first = await client.connect()
        assert (await client.call(1, "join", {"room": room}))["ok"] is True
        if isinstance(client, RawWs):
            client.send("41")
        else:
            assert (await client.post("41")).status_code == 200
        await wait_for(lambda: ledger.times_disconnected(first) == 1)
        second = await client.connect()
        assert second != first
        ack = await client.call(2, "join", {"room": room})
        assert ack["ok"] is True and ack["members"] == 1
        if isinstance(client, RawWs):
            client.abort()
        else:
            assert (await client.post("1")).status_code == 200
        await gone(live_relay, client.eio_sid, first, second)
    assert ledger.connects == [first, second]
    assert ledger.disconnects == [(first, False), (second, True)]


async def test_a_second_connect_changes_nothing(live_relay: LiveRelay, ledger: Ledger) -> None:
    ws = await RawWs.open(live_relay.port)
    sid = await ws.connect()
    ws.send("40")
    assert (await ws.text()).startswith("44")
    assert (await ws.call(1, "join", {"room": unique()}))["ok"] is True
    ws.abort()
    await gone(live_relay, ws.eio_sid, sid)
    assert ledger.connects == [sid]
    assert ledger.disconnects == [(sid, True)]


async def test_a_transport_lost_with_messages_waiting_is_disconnected_once(
    live_relay: LiveRelay, ledger: Ledger
) -> None:
    """Many messages, then the end of the stream, in one write: the reader task still holds
    messages when the websocket closes."""
    room = unique()
    ws = await RawWs.open(live_relay.port)
    sid = await ws.connect()
    events = [f'42{i}["join",{{"room":"{room}-{i % 7}"}}]' for i in range(1, 200)]
    ws.send(*events, "1", "40", *events)
    ws.abort()
    await gone(live_relay, ws.eio_sid, sid)
    assert ledger.connects == [sid]
    assert ledger.disconnects == [(sid, True)]
    assert not any(live_relay.relay.registry.occupied(f"{room}-{i}") for i in range(7))


@pytest.fixture
def quick_pings(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LiveRelay, Ledger]]:
    """A relay whose heartbeat gives up on a silent client within a second."""
    with serve_in_thread(Settings(ping_interval=0.3, ping_timeout=0.3)) as live:
        yield live, Ledger().attach(live.relay, monkeypatch)


@pytest.fixture
def quick_connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LiveRelay, Ledger]]:
    """A relay with a short connect timeout (and the default heartbeat)."""
    with serve_in_thread(Settings(connect_timeout=1.0)) as live:
        yield live, Ledger().attach(live.relay, monkeypatch)


async def test_a_ping_timeout_disconnects_once(quick_pings: tuple[LiveRelay, Ledger]) -> None:
    live, ledger = quick_pings
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
        ws = await RawWs.open(live.port)
        ws.answer_pings = False
        ws_sid = await ws.connect()
        session = await RawPolling.open(http)
        polling_sid = await session.connect()  # (and then it never polls again)
        assert await ws.ended(), "a websocket that never answered a ping is still open"
        await gone(live, ws.eio_sid, ws_sid)
        await gone(live, session.eio_sid, polling_sid)
        assert (await session.get()).status_code == 400
    assert sorted(ledger.connects) == sorted([ws_sid, polling_sid])
    assert sorted(ledger.disconnects) == sorted([(ws_sid, True), (polling_sid, True)])
    ws.close()


async def test_a_session_that_never_connects_is_closed(
    quick_connect: tuple[LiveRelay, Ledger],
) -> None:
    """``RELAY_CONNECT_TIMEOUT``: an Engine.IO session without a Socket.IO CONNECT is closed;
    one that connected, opened at the same time, is not."""
    live, ledger = quick_connect
    sockets = live.app.state.sio.eio.sockets
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
        connected = await RawWs.open(live.port)
        sid = await connected.connect()
        idle = await RawWs.open(live.port)
        idle_polling = await RawPolling.open(http)
        assert await idle.ended(), "a session that never connected is still open"
        await wait_for(lambda: idle_polling.eio_sid not in sockets)
        assert (await idle_polling.get()).status_code == 400
        assert connected.eio_sid in sockets
        assert (await connected.call(1, "join", {"room": unique()}))["ok"] is True
        connected.abort()
        await gone(live, connected.eio_sid, sid)
    assert ledger.connects == [sid] and ledger.each_once()
    idle.close()


async def test_a_session_left_without_a_namespace_is_closed(
    quick_connect: tuple[LiveRelay, Ledger],
) -> None:
    """After a Socket.IO DISCONNECT from the client, or from the server, the Engine.IO session
    has the connect timeout to connect again."""
    live, ledger = quick_connect
    sio = live.app.state.sio
    ws = await RawWs.open(live.port)
    by_client = await ws.connect()
    ws.send("41")
    assert await ws.ended(), "a session the client left without a namespace is still open"
    await gone(live, ws.eio_sid, by_client)
    ws.close()

    ws = await RawWs.open(live.port)
    by_server = await ws.connect()
    loop = sio.eio.sockets[ws.eio_sid].fast.loop
    done = asyncio.run_coroutine_threadsafe(sio.disconnect(by_server), loop)
    await asyncio.wrap_future(done)
    assert (await ws.text()).startswith("41")
    assert await ws.ended(), "a session the server left without a namespace is still open"
    await gone(live, ws.eio_sid, by_server)
    assert ledger.connects == [by_client, by_server]
    assert ledger.disconnects == [(by_client, False), (by_server, False)]
    ws.close()


async def test_shutdown_disconnects_each_connection_once(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger()
    with serve_in_thread() as live:
        ledger.attach(live.relay, monkeypatch)
        peers = Peers(live.url, "websocket")
        room = unique()
        clients = [await peers(), await peers(transports=["polling"])]
        for client in clients:
            await client.ok("join", {"room": room})
        ws = await RawWs.open(live.port)
        await ws.connect()
    assert len(ledger.connects) == 3 and ledger.each_once(), ledger
    await peers.close()
    ws.close()
