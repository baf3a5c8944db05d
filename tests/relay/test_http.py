"""Health, the page, and the relay forgetting rooms nobody uses any more."""

from __future__ import annotations

import httpx

from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread, wait_for
from tests.relay.conftest import Peers, unique


async def test_healthz(live_relay: LiveRelay) -> None:
    async with httpx.AsyncClient(base_url=live_relay.url) as http:
        r = await http.get("/healthz")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == "ok"
    for key in ("connections", "rooms", "rooms_known"):
        assert isinstance(body[key], int)


async def test_index_is_html(live_relay: LiveRelay) -> None:
    async with httpx.AsyncClient(base_url=live_relay.url) as http:
        r = await http.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()


async def test_healthz_counts_connections_and_rooms(
    connect_ws: Peers, live_relay: LiveRelay
) -> None:
    async def health() -> dict[str, int]:
        async with httpx.AsyncClient(base_url=live_relay.url) as http:
            return dict((await http.get("/healthz")).json())

    before = await health()
    peer = await connect_ws()
    await peer.ok("join", {"room": unique()})
    after = await health()
    assert after["connections"] == before["connections"] + 1
    assert after["rooms"] == before["rooms"] + 1


async def test_expired_rooms_without_members_are_forgotten() -> None:
    settings = Settings(history_ttl=0.2)
    with serve_in_thread(settings) as live:
        peers = Peers(live.url, "websocket")
        try:
            publisher, member = await peers(), await peers()
            kept = unique()
            await member.ok("join", {"room": kept})
            rooms = [unique() for _ in range(50)]
            for room in rooms:
                await publisher.ok("publish", {"room": room, "data": room})
            await publisher.ok("publish", {"room": kept, "data": 1})
            history = live.relay.history
            assert len(history) == 51

            # The sweeper forgets every expired room nobody is in; the occupied one stays,
            # and keeps counting its offsets.
            await wait_for(lambda: len(history) == 1, timeout=10)
            assert kept in history
            async with httpx.AsyncClient(base_url=live.url) as http:
                assert (await http.get("/healthz")).json()["rooms_known"] == 1
            assert (await publisher.ok("publish", {"room": kept, "data": 2}))["offset"] == 2

            # When the last member leaves an expired room it is forgotten too.
            await wait_for(lambda: not history.page(kept, 0, 1), timeout=10)
            await member.ok("leave", {"room": kept})
            assert len(history) == 0
            async with httpx.AsyncClient(base_url=live.url) as http:
                assert (await http.get("/healthz")).json()["rooms_known"] == 0
        finally:
            await peers.close()
