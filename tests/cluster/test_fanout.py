"""Publishing across nodes: shared offsets, each message once, in offset order, everywhere."""

from __future__ import annotations

import asyncio

import httpx

from tests.cluster.conftest import Nodes
from tests.relay.conftest import Peers, unique


async def test_a_publish_on_one_node_reaches_members_on_another(
    nodes: Nodes, clients: Peers
) -> None:
    a, b = nodes.start(), nodes.start()
    room = unique()
    alice = await clients(url=a.url, user="alice")
    bob = await clients(url=b.url, user="bob")
    first = await alice.ok("join", {"room": room})
    assert first["offset"] == 0 and first["members"] == 1 and first["epoch"]
    second = await bob.ok("join", {"room": room})
    assert second["members"] == 2 and second["epoch"] == first["epoch"]
    ack = await alice.ok("publish", {"room": room, "data": "hi"})
    assert ack["offset"] == 1
    event, envelope = (await bob.until(lambda e, a: e == "message"))[-1]
    assert event == "message"
    assert envelope["offset"] == 1 and envelope["id"] == ack["id"]
    assert envelope["from"] == {"sid": alice.sid, "user": "alice"} and envelope["data"] == "hi"
    _, own = (await alice.until(lambda e, a: e == "message"))[-1]
    assert own["id"] == ack["id"]
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        response = await http.post(f"/api/v1/rooms/{room}/events", json={"data": 2})
        assert response.status_code == 200, response.text
        assert response.json()["offset"] == 2
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["backends"] == {"redis": "ok"}
    for peer in (alice, bob):
        _, env = (await peer.until(lambda e, a: e == "message"))[-1]
        assert env["offset"] == 2 and env["from"] == {"sid": None, "user": None}


async def test_two_publishers_on_two_nodes_share_one_order(nodes: Nodes, clients: Peers) -> None:
    a, b, c = nodes.start(), nodes.start(), nodes.start()
    room = unique()
    pub_a = await clients(url=a.url)
    pub_b = await clients(url=b.url)
    receivers = [await clients(url=url) for url in (a.url, b.url, c.url)]
    for peer in (*receivers,):
        await peer.ok("join", {"room": room})
    n = 150

    async def burst(peer: object, tag: str) -> list[int]:
        acks = await asyncio.gather(
            *(peer.ok("publish", {"room": room, "data": [tag, i]}) for i in range(n))  # type: ignore[attr-defined]
        )
        return [ack["offset"] for ack in acks]

    offsets_a, offsets_b = await asyncio.gather(burst(pub_a, "a"), burst(pub_b, "b"))
    assert sorted(offsets_a + offsets_b) == list(range(1, 2 * n + 1))
    for peer in receivers:
        got = []
        while len(got) < 2 * n:
            event, env = await peer.next()
            if event == "message":
                got.append(env)
        offsets = [env["offset"] for env in got]
        assert offsets == list(range(1, 2 * n + 1))  # strictly increasing, none missing
        # each publisher's messages in the order it sent them
        for tag in ("a", "b"):
            seq = [env["data"][1] for env in got if env["data"][0] == tag]
            assert seq == list(range(n))
        assert not [e for e, _ in peer.pending() if e == "message"]


async def followed(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        count: int = (await http.get("/healthz")).json()["cluster"]["rooms_followed"]
        return count


async def test_a_node_follows_a_room_only_while_it_has_members_there(
    nodes: Nodes, clients: Peers
) -> None:
    # (b without connection state recovery: a dropped connection's session would keep it
    # following the room, test_rooms.py::test_a_dropped_connection_recovers_...)
    a, b = nodes.start(), nodes.start(RELAY_RECOVERY_TTL="0")
    room = unique()
    alice = await clients(url=a.url)
    bob = await clients(url=b.url)
    await alice.ok("join", {"room": room})
    await alice.ok("publish", {"room": room, "data": 1})  # (b has no member: not subscribed)
    assert await followed(a.url) == 1 and await followed(b.url) == 0
    await bob.ok("join", {"room": room})
    assert await followed(b.url) == 1
    await bob.ok("leave", {"room": room})
    assert await followed(b.url) == 0
    await alice.ok("publish", {"room": room, "data": 2})
    await bob.ok("join", {"room": room, "since": 0})  # the history is there all the same
    got = [x for e, x in bob.pending() if e == "message"]
    assert [m["data"] for m in got] == [1, 2]
    await bob.sio.disconnect()
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        for _ in range(200):  # (the disconnect is handled after the client's side returns)
            if (await http.get("/healthz")).json()["cluster"]["rooms_followed"] == 0:
                break
            await asyncio.sleep(0.02)
    assert await followed(b.url) == 0
