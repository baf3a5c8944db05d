"""RELAY_MAX_ROOMS and RELAY_HISTORY_MAX_BYTES hold for the whole cluster, not per node."""

from __future__ import annotations

import httpx
import redis

from tests.cluster.conftest import Nodes
from tests.conftest import poll
from tests.relay.conftest import Peers, unique


async def test_max_rooms_counts_the_rooms_of_every_node(nodes: Nodes, clients: Peers) -> None:
    # 3 rooms at most: with members on a, on b, and with history only; one more is refused on
    # either node, by join, client publish or the HTTP API, until one is forgotten
    limits = {"RELAY_MAX_ROOMS": "3", "RELAY_HISTORY_TTL": "5"}
    a, b = nodes.start(**limits), nodes.start(**limits)
    r1, r2, r3, r4, r5 = (unique() for _ in range(5))
    alice = await clients(url=a.url)
    bob = await clients(url=b.url)
    await alice.ok("join", {"room": r1})
    await bob.ok("join", {"room": r2})
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as on_b:
        assert (await on_b.post(f"/api/v1/rooms/{r3}/events", json={"data": 1})).status_code == 200
        for peer in (alice, bob):
            ack = await peer.call("join", {"room": r4})
            assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
            assert "RELAY_MAX_ROOMS=3" in ack["error"]["message"]
            ack = await peer.call("publish", {"room": r5, "data": 1})
            assert ack["error"]["code"] == "unavailable", ack
        r = await on_b.post(f"/api/v1/rooms/{r5}/events", json={"data": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        # rooms the cluster keeps are still joined and published to, from any node
        await bob.ok("join", {"room": r1})
        await alice.ok("publish", {"room": r2, "data": "ok"})
        await alice.ok("join", {"room": r3})
        await alice.ok("leave", {"room": r3})  # (r3 is kept by its history still)
        # a room nobody is in and that has no history is forgotten: there is room again
        await alice.ok("leave", {"room": r1})
        await bob.ok("leave", {"room": r1})

        async def forgotten() -> bool:  # (a leave is answered before Redis has it)
            listed = (await on_b.get("/api/v1/rooms")).json()["rooms"]
            return r1 not in [r["room"] for r in listed]

        await poll(forgotten, 10, "r1 has no members")
        await alice.ok("join", {"room": r4})
        ack = await bob.call("join", {"room": r5})
        assert ack["error"]["code"] == "unavailable", ack
        # and a room whose history expired (RELAY_HISTORY_TTL) is forgotten too

        async def made() -> bool:
            r = await on_b.post(f"/api/v1/rooms/{r5}/events", json={"data": 2})
            return r.status_code == 200

        await poll(made, 10, "r3's history expired: r5 can be made")


async def test_history_max_bytes_bounds_every_room_together(nodes: Nodes, clients: Peers) -> None:
    # 20 kB for all history: a room that floods is trimmed, oldest first, and a quiet room
    # published to on another node keeps what it has (the biggest room pays)
    limits = {"RELAY_HISTORY_MAX_BYTES": "20000", "RELAY_HISTORY_SIZE": "1000"}
    a, b = nodes.start(**limits), nodes.start(**limits)
    big, small = unique(), unique()
    alice = await clients(url=a.url)
    bob = await clients(url=b.url)
    blob = "x" * 1000
    for i in range(30):
        await alice.ok("publish", {"room": big, "data": [i, blob]})
    for i in range(3):
        await bob.ok("publish", {"room": small, "data": [i, blob]})
    for i in range(30, 40):
        await alice.ok("publish", {"room": big, "data": [i, blob]})
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as on_b:
        kept = {}
        for room in (big, small):
            r = await on_b.get(f"/api/v1/rooms/{room}/history", params={"limit": 1000})
            kept[room] = [m["offset"] for m in r.json()["messages"]]
    assert kept[small] == [1, 2, 3]
    assert kept[big] == list(range(kept[big][0], 41)) and kept[big][0] > 1
    assert 10 <= len(kept[big]) <= 17  # (about 1.1 kB each: 20 kB, less small's 3)
    ack = await bob.ok("join", {"room": big, "since": 0})
    assert ack["recovered"] is False and ack["offset"] == 40
    admin = redis.Redis.from_url(nodes.redis.url, decode_responses=True)
    try:
        total = int(admin.get("relay:history:total") or 0)
        by_room = dict(admin.zrange("relay:history:bytes", 0, -1, withscores=True))
        assert total <= 20000 and total == sum(by_room.values())
        assert set(by_room) == {big, small}
        assert admin.xlen(f"relay:{{{big}}}:log") == len(kept[big])
    finally:
        admin.close()
