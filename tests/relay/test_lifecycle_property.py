"""A property of the whole lifecycle: whatever a client does, in whatever order, the server
holds exactly the connections that are really open, and relay's disconnect runs exactly once
for each connection it made (issue 11: "ghost connections").

Hypothesis drives random sequences of open / Socket.IO CONNECT / join / Socket.IO DISCONNECT /
Engine.IO CLOSE / transport loss over raw websockets and raw long-polling sessions, against
one live relay. Each client keeps a model of what the server should hold (its session, its
sid, its rooms); after each sequence the test waits, with a deadline, for the server's own
records (relay's registry, the Engine.IO sessions, the Socket.IO manager) to equal the model,
then drops every client and checks that nothing is left and that the ledger of
``Relay.connect`` / ``Relay.disconnect`` calls pairs each connect with one disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread, wait_for
from tests.relay.raw import TIMEOUT, RawPolling, RawWs
from tests.relay.test_sessions import Ledger

OPS = ("open", "connect", "join", "sio_disconnect", "eio_close", "lose")
CLIENTS = 3
ROOMS = ("a", "b")


@dataclass
class Client:
    """One raw client and what the server should hold for it."""

    transport: str
    eio_sid: str = ""
    #: "open" (a session, no namespace), "connected" (a sid), "gone" (we ended it)
    state: str = "open"
    sid: str = ""
    rooms: set[str] = field(default_factory=set)
    inbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    ws: RawWs | None = None
    session: RawPolling | None = None
    task: asyncio.Task[None] | None = None
    acks: int = 0

    async def open(self, live: LiveRelay, http: httpx.AsyncClient) -> None:
        if self.transport == "websocket":
            self.ws = await RawWs.open(live.port)
            self.eio_sid = self.ws.eio_sid
            self.task = asyncio.create_task(self._read_ws(self.ws))
        else:
            self.session = await RawPolling.open(http)
            self.eio_sid = self.session.eio_sid
            self.task = asyncio.create_task(self._poll(self.session))

    async def _read_ws(self, ws: RawWs) -> None:
        # (RawWs.text answers the server's pings)
        while text := await ws.text(timeout=3600):
            self.inbox.put_nowait(text)

    async def _poll(self, session: RawPolling) -> None:
        while True:
            r = await session.get()
            if r.status_code != 200:
                return
            for packet in r.text.split("\x1e") if r.text else ():
                if packet == "2":
                    await session.post("3")
                elif packet == "1":
                    return
                else:
                    self.inbox.put_nowait(packet)

    async def send(self, *packets: str) -> None:
        if self.ws is not None:
            self.ws.send(*packets)
        else:
            assert self.session is not None
            r = await self.session.post(*packets)
            assert r.status_code in (200, 400), (r.status_code, r.text)

    async def expect(self, prefix: str) -> str:
        while True:
            text = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            if text.startswith(prefix):
                return text

    async def stop(self) -> None:
        """Drop the transport, as a network failure would (no goodbye of any kind)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.ws is not None:
            self.ws.abort()
        self.state = "gone"
        self.rooms.clear()


async def step(
    clients: list[Client | None], live: LiveRelay, http: httpx.AsyncClient, op: Any
) -> None:
    index, name, transport, room = op
    client = clients[index]
    if name == "open" or client is None:
        if client is None or client.state == "gone":
            if client is not None:
                await client.stop()
            clients[index] = client = Client(transport)
            await client.open(live, http)
        return
    if client.state == "gone":
        return
    if name == "connect":
        await client.send("40")
        if client.state == "open":
            client.sid = orjson.loads((await client.expect("40{"))[2:])["sid"]
            client.state = "connected"
        else:
            await client.expect("44")
    elif name == "join":
        client.acks += 1
        event = orjson.dumps(["join", {"room": ROOMS[room]}]).decode()
        await client.send(f"42{client.acks}{event}")
        if client.state == "connected":
            prefix = f"43{client.acks}["
            ack = orjson.loads((await client.expect(prefix))[len(prefix) - 1 :])
            assert ack[0]["ok"] is True, ack
            client.rooms.add(ROOMS[room])
    elif name == "sio_disconnect":
        await client.send("41")
        client.state = "open"
        client.sid = ""
        client.rooms.clear()
    elif name == "eio_close":
        await client.send("1")
        client.state = "gone"
        client.rooms.clear()
    elif name == "lose":
        await client.stop()


def server_view(live: LiveRelay, clients: list[Client]) -> dict[str, Any]:
    """What the server holds, in the model's terms."""
    sio = live.app.state.sio
    registry = live.relay.registry
    expected_sids = [c.sid for c in clients if c.state == "connected"]
    manager = sio.manager.rooms.get("/", {}).get(None) or {}
    return {
        "engine.io sessions": set(sio.eio.sockets),
        "relay connections": len(registry),
        "relay rooms": {
            sid: sorted(m.rooms) for sid in expected_sids if (m := registry.get(sid)) is not None
        },
        "socket.io connections": set(manager),
    }


def model_view(clients: list[Client]) -> dict[str, Any]:
    connected = [c for c in clients if c.state == "connected"]
    return {
        "engine.io sessions": {c.eio_sid for c in clients if c.state != "gone"},
        "relay connections": len(connected),
        "relay rooms": {c.sid: sorted(c.rooms) for c in connected},
        "socket.io connections": {c.sid for c in connected},
    }


def _agrees(live: LiveRelay, clients: list[Client]) -> bool:
    try:
        return server_view(live, clients) == model_view(clients)
    except RuntimeError:  # (changed size during iteration: the server thread is at work)
        return False


async def settle(live: LiveRelay, clients: list[Client], deadline: float = TIMEOUT) -> None:
    try:
        await wait_for(lambda: _agrees(live, clients), deadline)
    except AssertionError:
        raise AssertionError(
            f"server {server_view(live, clients)} != model {model_view(clients)}"
        ) from None


async def scenario(live: LiveRelay, ledger: Ledger, ops: list[Any]) -> None:
    ledger.connects.clear()
    ledger.disconnects.clear()
    clients: list[Client | None] = [None] * CLIENTS
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
        try:
            for op in ops:
                await step(clients, live, http, op)
            present = [c for c in clients if c is not None]
            await settle(live, present)
        finally:
            # a goodbye (Engine.IO CLOSE) from each client still open: its end is immediate,
            # where a polling client that just stops is found by the heartbeat a second later
            present = [c for c in clients if c is not None]
            for client in present:
                if client.state != "gone":
                    with contextlib.suppress(Exception):
                        await client.send("1")
                await client.stop()
        await settle(live, present)
    assert ledger.each_once(), ledger


@pytest.fixture(scope="module")
def lifecycle_relay() -> Iterator[tuple[LiveRelay, Ledger]]:
    """One relay for every example; its heartbeat finds a client that stopped polling in
    about a second and a half (and leaves a busy test process a second to answer a ping)."""
    with serve_in_thread(Settings(ping_interval=0.3, ping_timeout=1.0)) as live:
        relay = live.relay
        ledger = Ledger()
        patch = pytest.MonkeyPatch()
        ledger.attach(relay, patch)
        try:
            yield live, ledger
        finally:
            patch.undo()


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, CLIENTS - 1),
            st.sampled_from(OPS),
            st.sampled_from(["websocket", "polling"]),
            st.integers(0, len(ROOMS) - 1),
        ),
        min_size=1,
        max_size=14,
    )
)
def test_the_server_holds_exactly_the_connections_that_are_open(
    lifecycle_relay: tuple[LiveRelay, Ledger], ops: list[Any]
) -> None:
    live, ledger = lifecycle_relay
    asyncio.run(scenario(live, ledger, ops))
