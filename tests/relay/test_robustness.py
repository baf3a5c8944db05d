"""Malformed traffic over a raw WebSocket: the server and every other client carry on."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from relay.settings import Settings
from tests.conftest import LiveRelay
from tests.relay.conftest import TIMEOUT, Peer, Peers, unique

LIMIT = Settings().max_payload


class RawClient:
    """Engine.IO v4 / Socket.IO v5 spoken by hand over one WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sid = ""
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, port: int) -> RawClient:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
            max_size=None,
            open_timeout=TIMEOUT,
        )
        client = cls(ws)
        opened = await client.recv()
        assert isinstance(opened, str) and opened.startswith("0{"), opened
        await ws.send("40")
        connected = await client.recv()
        assert isinstance(connected, str) and connected.startswith("40{"), connected
        client.sid = orjson.loads(connected[2:])["sid"]
        return client

    async def recv(self) -> str | bytes:
        """The next frame, answering Engine.IO pings on the way."""
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            if frame == "2":
                await self.ws.send("3")
                continue
            return frame

    async def call(self, event: str, payload: Any, ack_id: int | None = None) -> Any:
        """Emit an event with an ack id and return the ack's argument."""
        n = next(self._ids) if ack_id is None else ack_id
        await self.ws.send(f"42{n}" + orjson.dumps([event, payload]).decode())
        return await self.ack(n)

    async def ack(self, n: int) -> Any:
        prefix = f"43{n}["
        while True:
            frame = await self.recv()
            if isinstance(frame, str) and frame.startswith(prefix):
                return orjson.loads(frame[len(prefix) - 1 :])[0]

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
async def raw(live_relay: LiveRelay) -> AsyncIterator[RawClient]:
    client = await RawClient.open(live_relay.port)
    yield client
    await client.close()


@pytest.fixture
async def bystanders(connect_ws: Peers, live_relay: LiveRelay) -> AsyncIterator[tuple[Peer, Any]]:
    """A client in a room, and a function proving it still receives the room's broadcasts."""
    room = unique()
    listener = await connect_ws()
    publisher = await Peers(live_relay.url, "polling")()
    await listener.ok("join", {"room": room})

    async def still_served() -> None:
        async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
            health = await http.get("/healthz")
        assert health.status_code == 200
        assert live_relay.thread.is_alive()
        assert await listener.sentinel(publisher, room) == []

    yield listener, still_served
    await publisher.sio.disconnect()


MALFORMED: list[str | bytes] = [
    "garbage text",
    "",
    "4",
    "42",
    "42[",
    "42[]",
    "42[5]",
    '42[null,{"room":"x"}]',
    '42{"a":1}',
    '42"just a string"',
    "9",
    "9unknown engine.io type",
    "49",
    "4garbage",
    '41/nope,["x"]',
    '40/other-namespace,{"x":1}',
    '43999["stray ack"]',
    b"\x00\xff\xfe binary garbage",
    b"",
    '451-["publish",{"room":"r","data":{"_placeholder":true,"num":0}}]',
    '452-["publish",{"_placeholder":true,"num":7}]',
    "42" + "9" * 200 + '["publish",{"room":"r","data":1}]',
    '42-1["publish",{"room":"r","data":1}]',
]


@pytest.mark.parametrize("frame", MALFORMED, ids=lambda f: repr(f)[:40])
async def test_malformed_frames_hurt_no_one(
    live_relay: LiveRelay, bystanders: tuple[Peer, Any], frame: str | bytes
) -> None:
    _, still_served = bystanders
    raw = await RawClient.open(live_relay.port)
    try:
        await raw.ws.send(frame)
        await still_served()
    finally:
        await raw.close()


@pytest.mark.parametrize(
    "frame",
    [f for f in MALFORMED if isinstance(f, str) and not f.startswith("45") and f != "41"],
    ids=lambda f: repr(f)[:40],
)
async def test_a_bad_frame_does_not_cost_the_sender_its_connection(
    live_relay: LiveRelay, frame: str
) -> None:
    raw = await RawClient.open(live_relay.port)
    try:
        await raw.ws.send(frame)
        ack = await raw.call("publish", {"room": unique(), "data": "after"})
        assert ack["ok"] is True, ack
    finally:
        await raw.close()


async def test_huge_ack_id_is_echoed(raw: RawClient) -> None:
    ack_id = 10**30 + 7
    ack = await raw.call("publish", {"room": unique(), "data": 1}, ack_id=ack_id)
    assert ack["ok"] is True and ack["offset"] == 1


async def test_binary_event_with_its_attachment_is_answered(raw: RawClient) -> None:
    # The binary form of an event is legal Socket.IO; the relay treats bytes as bad data.
    await raw.ws.send('451-7["publish",{"room":"r","data":{"_placeholder":true,"num":0}}]')
    await raw.ws.send(b"\x01\x02")
    ack = await raw.ack(7)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    assert (await raw.call("publish", {"room": unique(), "data": 2}))["ok"] is True


async def test_over_the_payload_limit_answers_too_large(
    raw: RawClient, bystanders: tuple[Peer, Any]
) -> None:
    _, still_served = bystanders
    ack = await raw.call("publish", {"room": unique(), "data": "x" * LIMIT})
    assert ack["ok"] is False and ack["error"]["code"] == "too_large"
    ack = await raw.call("publish", {"room": unique(), "data": "x" * (LIMIT - 2)})
    assert ack["ok"] is True
    await still_served()


async def test_deeply_nested_data_is_a_clear_error(
    raw: RawClient, bystanders: tuple[Peer, Any]
) -> None:
    _, still_served = bystanders
    depth = 10_000
    nested = "[" * depth + "]" * depth
    await raw.ws.send('425["publish",{"room":"deep","data":' + nested + "}]")
    ack = await raw.ack(5)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    assert "deep" in ack["error"]["message"]
    await still_served()
    assert (await raw.call("publish", {"room": unique(), "data": [[[1]]]}))["ok"] is True


async def test_nested_data_within_limits_is_fine(raw: RawClient) -> None:
    depth = 200
    room = unique()
    await raw.call("join", {"room": room})
    ack = await raw.call("publish", {"room": room, "data": orjson.loads("[" * depth + "]" * depth)})
    assert ack["ok"] is True
    # Deeper than the encoder allows (but decodable): a clear bad_request, not an internal error.
    deeper = "[" * 600 + "]" * 600
    await raw.ws.send('429["publish",{"room":"r","data":' + deeper + "}]")
    ack = await raw.ack(9)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    assert "deep" in ack["error"]["message"]


async def test_a_frame_over_the_transport_limit_closes_only_that_connection(
    live_relay: LiveRelay, bystanders: tuple[Peer, Any]
) -> None:
    _, still_served = bystanders
    raw = await RawClient.open(live_relay.port)
    other = await RawClient.open(live_relay.port)
    try:
        big = '42["publish",{"room":"r","data":"' + "x" * (Settings().max_frame + 10) + '"}]'
        with pytest.raises(websockets.ConnectionClosed):
            # (the server may close before the last byte is written: the send raises then)
            await raw.ws.send(big)
            while True:
                await raw.recv()
        await still_served()
        assert (await other.call("publish", {"room": unique(), "data": 1}))["ok"] is True
    finally:
        await raw.close()
        await other.close()


async def test_many_bad_frames_in_a_burst(
    live_relay: LiveRelay, bystanders: tuple[Peer, Any]
) -> None:
    _, still_served = bystanders
    raw = await RawClient.open(live_relay.port)
    try:
        for _ in range(10):
            for frame in MALFORMED:
                if isinstance(frame, str) and frame.startswith("45"):
                    continue  # would swallow the next frames as attachments
                await raw.ws.send(frame)
        await still_served()
    finally:
        await raw.close()
