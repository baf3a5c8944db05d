"""A first round trip through a live relay."""

from __future__ import annotations

import asyncio

import socketio

from tests.conftest import LiveRelay


async def test_publish_reaches_members(live_relay: LiveRelay) -> None:
    a, b = socketio.AsyncClient(), socketio.AsyncClient()
    got: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    b.on("message", got.put)
    await a.connect(live_relay.url, auth={"user": "alice"}, transports=["websocket"])
    await b.connect(live_relay.url, transports=["polling"])
    try:
        assert (await b.call("join", {"room": "lobby"}))["ok"] is True
        ack = await a.call("publish", {"room": "lobby", "data": {"hi": 1}})
        assert ack["ok"] is True and ack["offset"] == 1
        env = await asyncio.wait_for(got.get(), 5)
        assert env["data"] == {"hi": 1}
        assert env["from"] == {"sid": a.get_sid(), "user": "alice"}
    finally:
        await a.disconnect()
        await b.disconnect()
