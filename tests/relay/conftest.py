"""Clients for the relay tests: real python-socketio clients that record every event they get."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import socketio

TIMEOUT = 5.0

_names = itertools.count(1)
_run = os.urandom(3).hex()


def unique(prefix: str = "room") -> str:
    """A room (or user) name no other test uses, so tests can share one relay."""
    return f"{prefix}-{_run}-{next(_names)}"


class Peer:
    """A connected client and everything it received, in order."""

    def __init__(self, sio: socketio.AsyncClient) -> None:
        self.sio = sio
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.disconnected = asyncio.Event()

        async def record(event: str, *args: Any) -> None:
            self.inbox.put_nowait((event, args[0] if len(args) == 1 else args))

        async def gone(*_: Any) -> None:
            self.disconnected.set()

        sio.on("*", record)
        sio.on("disconnect", gone)

    @property
    def sid(self) -> str:
        sid = self.sio.get_sid()
        assert sid is not None
        return str(sid)

    async def call(self, event: str, *args: Any) -> Any:
        """Emit ``event`` and return its ack."""
        return await self.sio.call(event, args[0] if len(args) == 1 else args, timeout=TIMEOUT)

    async def ok(self, event: str, payload: Any) -> dict[str, Any]:
        """Emit ``event`` and return its ack, which must be ``ok``."""
        ack = await self.call(event, payload)
        assert isinstance(ack, dict) and ack.get("ok") is True, ack
        return ack

    async def next(self, timeout: float = TIMEOUT) -> tuple[str, Any]:
        """The next event received, as ``(name, argument)``."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def until(
        self, done: Callable[[str, Any], bool], timeout: float = TIMEOUT
    ) -> list[tuple[str, Any]]:
        """Events received up to and including the first one ``done`` accepts."""
        got: list[tuple[str, Any]] = []
        while True:
            event, arg = await self.next(timeout)
            got.append((event, arg))
            if done(event, arg):
                return got

    async def offsets(self, n: int, timeout: float = TIMEOUT) -> list[int]:
        """The offsets of the next ``n`` messages received (other events skipped)."""
        got: list[int] = []
        while len(got) < n:
            event, arg = await self.next(timeout)
            if event == "message":
                got.append(arg["offset"])
        return got

    async def sentinel(self, sender: Peer, room: str) -> list[tuple[str, Any]]:
        """Have ``sender`` publish a sentinel into ``room`` (which self is in) and return what
        self received before it: proof that nothing else is on its way."""
        token = unique("sentinel")
        await sender.ok("publish", {"room": room, "event": "sentinel", "data": token})
        got = await self.until(lambda e, a: e == "sentinel" and a["data"] == token)
        return got[:-1]

    def pending(self) -> list[tuple[str, Any]]:
        """Whatever is already queued, without waiting."""
        out = []
        while not self.inbox.empty():
            out.append(self.inbox.get_nowait())
        return out


Connect = Callable[..., Awaitable[Peer]]


class Peers:
    """Connects peers to a relay and disconnects them all at the end."""

    def __init__(self, url: str, transport: str) -> None:
        self.url = url
        self.transport = transport
        self.peers: list[Peer] = []

    async def __call__(
        self,
        user: str | None = None,
        *,
        url: str | None = None,
        transports: list[str] | None = None,
        auth: Any = None,
    ) -> Peer:
        sio = socketio.AsyncClient(reconnection=False)
        peer = Peer(sio)
        if auth is None and user is not None:
            auth = {"user": user}
        await sio.connect(
            url or self.url,
            auth=auth,
            transports=transports or [self.transport],
            wait_timeout=TIMEOUT,
        )
        self.peers.append(peer)
        return peer

    async def close(self) -> None:
        for peer in self.peers:
            await close_client(peer.sio)


async def close_client(sio: socketio.AsyncClient) -> None:
    """Disconnect ``sio`` and close its HTTP session, even if the server already dropped it."""
    if sio.connected:
        await sio.disconnect()
    http = sio.eio.http
    if http is not None and not http.closed:
        await http.close()


Connect = Callable[..., Awaitable[Peer]]


@pytest.fixture(params=["websocket", "polling"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def connect(live_relay: Any, transport: str) -> AsyncIterator[Peers]:
    """Connected peers over each transport in turn (the test runs once per transport)."""
    peers = Peers(live_relay.url, transport)
    yield peers
    await peers.close()


@pytest.fixture
async def connect_ws(live_relay: Any) -> AsyncIterator[Peers]:
    """Connected peers over WebSocket only, for tests where the transport does not matter."""
    peers = Peers(live_relay.url, "websocket")
    yield peers
    await peers.close()
