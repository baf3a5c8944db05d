"""The per-IP inbound byte rate: a client IP that sends faster than ``inbound_rate`` is read
more slowly (TCP pushes back), whatever it sends and over however many connections; nobody
else is slowed, and nothing it sent is refused or lost.

Before, 2,000 publishes of 63 KB from 20 connections of one IP cost the server 2.6 s of CPU at
once, and another client's round trip went to seconds.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import socketio

from relay.limits import OFF, Rate
from relay.settings import Settings
from tests.conftest import serve_in_thread
from tests.relay.conftest import Peer, Peers, close_client, unique

RATE = Rate(1024 * 1024, 256 * 1024)  # 1 MiB/s, bursts of 256 KiB
SETTINGS = Settings(inbound_rate=RATE, publish_rate=OFF, delivery_rate=OFF, api_rate=OFF)
BLOB = "b" * 60_000


async def test_a_websocket_flood_is_read_at_the_inbound_rate() -> None:
    with serve_in_thread(SETTINGS, edge_limits=True) as live:
        peers = Peers(live.url, "websocket")
        try:
            flooders = [await peers() for _ in range(3)]
            room = unique()
            start = time.monotonic()
            # 3 MB from three connections of one IP: the bucket is the IP's, not theirs
            acks = await asyncio.gather(
                *(
                    f.sio.call("publish", {"room": room, "data": [i, BLOB]}, timeout=60)
                    for i in range(17)
                    for f in flooders
                )
            )
            elapsed = time.monotonic() - start
            assert all(a["ok"] for a in acks)  # slowed, never refused
            assert sorted(a["offset"] for a in acks) == list(range(1, 52))
            # (3 MB - the 256 KiB burst) at 1 MiB/s: about 2.7 s; unthrottled it took 0.1 s
            assert elapsed > 2.0, elapsed
            edge = live.app.state.edge.describe()
            assert edge["inbound_throttled"] > 0 and edge["inbound_rate"] == str(RATE)
        finally:
            await peers.close()


async def test_api_bodies_are_read_at_the_inbound_rate_too() -> None:
    with serve_in_thread(SETTINGS, edge_limits=True) as live:
        body = {"data": "c" * 60_000}
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            start = time.monotonic()
            for _ in range(40):  # 2.4 MB of request bodies on one keep-alive connection
                r = await http.post("/api/v1/rooms/inbound/events", json=body)
                assert r.status_code == 200, r.text
            elapsed = time.monotonic() - start
        assert elapsed > 1.5, elapsed  # (2.4 MB - 256 KiB) at 1 MiB/s: about 2 s


async def test_another_ip_is_not_slowed() -> None:
    with serve_in_thread(SETTINGS, edge_limits=True) as live:
        peers = Peers(live.url, "websocket")
        # a client connecting from 127.0.0.2 is another IP as far as relay can tell
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
        client = socketio.AsyncClient(reconnection=False, http_session=session)
        bystander = Peer(client)
        try:
            flooder = await peers()
            await client.connect(live.url, transports=["websocket"])
            flood = asyncio.gather(
                *(
                    flooder.sio.call("publish", {"room": unique(), "data": BLOB}, timeout=60)
                    for _ in range(120)
                )
            )
            room = unique()
            await bystander.ok("join", {"room": room})
            for i in range(20):
                await bystander.ok("publish", {"room": room, "data": i})
            # the bystander's IP has a bucket of its own: its 20 round trips went through while
            # the flood (7 MB at 1 MiB/s, about 7 s) was still being read, slowly
            assert not flood.done()
            assert all(a["ok"] for a in await asyncio.wait_for(flood, 60))
            edge = live.app.state.edge.describe()
            assert edge["ips"] == 2
        finally:
            await peers.close()
            await close_client(client)
            await session.close()


def test_the_rate_is_off_when_set_to_zero() -> None:
    assert Settings(inbound_rate=OFF).inbound_rate.enabled is False
    assert Settings().inbound_rate == Rate(8 * 1024 * 1024, 32 * 1024 * 1024)
