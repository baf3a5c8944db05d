"""Joining with since, epochs, unicast and presence across nodes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httpx

from tests.cluster.conftest import Nodes
from tests.relay.conftest import Peer, Peers, unique
from tests.relay.test_recovery import Raw


def messages(events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [arg for event, arg in events if event == "message"]


async def join_recording(peer: Peer, payload: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Join, and what arrived before the ack (the replay)."""
    ack = await peer.ok("join", payload)
    return ack, messages(peer.pending())


async def test_join_since_on_another_node_replays_with_the_epoch(
    nodes: Nodes, clients: Peers
) -> None:
    a, b = nodes.start(), nodes.start()
    room = unique()
    alice = await clients(url=a.url)
    joined = await alice.ok("join", {"room": room})
    for i in range(10):
        await alice.ok("publish", {"room": room, "data": i})
    bob = await clients(url=b.url)
    ack, replay = await join_recording(bob, {"room": room, "since": 4, "epoch": joined["epoch"]})
    assert [m["offset"] for m in replay] == list(range(5, 11))
    assert [m["data"] for m in replay] == list(range(4, 10))
    assert ack["recovered"] is True and ack["offset"] == 10 and ack["epoch"] == joined["epoch"]
    assert ack["members"] == 2
    # a stale epoch is a since beyond history: everything there is, recovered false
    carol = await clients(url=b.url)
    ack, replay = await join_recording(carol, {"room": room, "since": 8, "epoch": "stale"})
    assert [m["offset"] for m in replay] == list(range(1, 11))
    assert ack["recovered"] is False and ack["epoch"] == joined["epoch"]
    # since ahead of the room (a client of an earlier life of it): the same
    dave = await clients(url=a.url)
    ack, replay = await join_recording(dave, {"room": room, "since": 99})
    assert len(replay) == 10 and ack["recovered"] is False
    # and live traffic continues after the replay, once each
    await alice.ok("publish", {"room": room, "data": "live"})
    for peer in (bob, carol, dave):
        got = messages(await peer.until(lambda e, a: e == "message"))
        assert [m["offset"] for m in got] == [11]


async def test_replay_under_live_traffic_from_another_node_has_no_gap_or_duplicate(
    nodes: Nodes, clients: Peers
) -> None:
    a, b = nodes.start(), nodes.start()
    room = unique()
    writer = await clients(url=a.url)
    watcher = await clients(url=b.url)  # (node b follows the room before the joins below)
    await watcher.ok("join", {"room": room})
    stop = asyncio.Event()

    async def write() -> None:
        i = 0
        while not stop.is_set():
            await writer.ok("publish", {"room": room, "data": i})
            i += 1

    task = asyncio.create_task(write())
    try:
        joiners = []
        for _ in range(5):
            peer = await clients(url=b.url)
            await peer.ok("join", {"room": room, "since": 0})
            joiners.append(peer)
    finally:
        stop.set()
        await task
    last = (await writer.ok("publish", {"room": room, "event": "end", "data": None}))["offset"]
    for peer in [watcher, *joiners]:
        got = await peer.until(lambda e, a: e == "end")
        offsets = [arg["offset"] for event, arg in got if event in ("message", "end")]
        if peer is watcher:
            assert offsets == list(range(1, last + 1))
        else:
            assert offsets == list(range(1, last + 1)), offsets  # replay then live: each once


async def test_direct_by_sid_and_by_user_across_nodes(nodes: Nodes, clients: Peers) -> None:
    a, b, c = nodes.start(), nodes.start(), nodes.start()
    sender = await clients(url=a.url, user="sender")
    bob_b = await clients(url=b.url, user="bob")
    bob_c = await clients(url=c.url, user="bob")
    bob_a = await clients(url=a.url, user="bob")
    ack = await sender.ok("direct", {"to": bob_b.sid, "data": "to b"})
    assert ack["delivered"] == 1
    event, env = await bob_b.next()
    assert (event, env["data"], env["room"], env["offset"]) == ("message", "to b", None, None)
    ack = await sender.ok("direct", {"user": "bob", "event": "ping", "data": 1})
    assert ack["delivered"] == 3
    for peer in (bob_a, bob_b, bob_c):
        event, env = await peer.next()
        assert event == "ping" and env["id"] == ack["id"]
    ack = await sender.ok("direct", {"to": "nobody-at-all", "data": 1})
    assert ack["delivered"] == 0
    ack = await sender.ok("direct", {"user": "nobody", "data": 1})
    assert ack["delivered"] == 0
    async with httpx.AsyncClient(base_url=c.url, timeout=10) as http:
        r = await http.post("/api/v1/users/bob/events", json={"data": "api"})
        assert r.status_code == 200 and r.json()["delivered"] == 3, r.text
        r = await http.post(f"/api/v1/connections/{bob_a.sid}/events", json={"data": "api"})
        assert r.status_code == 200 and r.json()["delivered"] == 1, r.text
    await bob_c.sio.disconnect()
    ack = await sender.ok("direct", {"user": "bob", "data": 2})
    assert ack["delivered"] == 2


async def test_presence_and_member_counts_across_nodes(nodes: Nodes, clients: Peers) -> None:
    a, b = nodes.start(), nodes.start()
    room = unique()
    alice = await clients(url=a.url, user="alice")
    bob = await clients(url=b.url, user="bob")
    await alice.ok("join", {"room": room})
    ack = await bob.ok("join", {"room": room})
    assert ack["members"] == 2
    _, arg = (await alice.until(lambda e, a: e == "presence"))[-1]
    assert arg == {"room": room, "action": "join", "member": {"sid": bob.sid, "user": "bob"}}
    listed = await alice.ok("presence", {"room": room})
    assert sorted(m["user"] for m in listed["members"]) == ["alice", "bob"]
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        r = await http.get(f"/api/v1/rooms/{room}/members")
        assert r.status_code == 200
        assert sorted(m["sid"] for m in r.json()["members"]) == sorted([alice.sid, bob.sid])
    await bob.ok("leave", {"room": room})
    _, arg = (await alice.until(lambda e, a: e == "presence"))[-1]
    assert arg["action"] == "leave" and arg["member"]["sid"] == bob.sid
    listed = await alice.ok("presence", {"room": room})
    assert [m["user"] for m in listed["members"]] == ["alice"]
    await bob.ok("join", {"room": room})
    await alice.until(lambda e, a: e == "presence")
    await bob.sio.disconnect()  # a disconnect leaves every room, on every node
    _, arg = (await alice.until(lambda e, a: e == "presence"))[-1]
    assert arg["action"] == "leave" and arg["member"]["user"] == "bob"
    listed = await alice.ok("presence", {"room": room})
    assert [m["user"] for m in listed["members"]] == ["alice"]


async def test_http_history_pages_a_room_published_on_other_nodes(
    nodes: Nodes, clients: Peers
) -> None:
    a, b = nodes.start(RELAY_HISTORY_SIZE="30"), nodes.start(RELAY_HISTORY_SIZE="30")
    room = unique()
    alice = await clients(url=a.url)
    for i in range(40):
        await alice.ok("publish", {"room": room, "data": i})
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        r = await http.get(f"/api/v1/rooms/{room}/history", params={"limit": 1000})
        assert r.status_code == 200
        got = r.json()["messages"]
        assert [m["offset"] for m in got] == list(range(11, 41))  # trimmed to the last 30
        assert [m["data"] for m in got] == list(range(10, 40))
        r = await http.get(f"/api/v1/rooms/{room}/history", params={"since": 35, "limit": 3})
        assert [m["offset"] for m in r.json()["messages"]] == [36, 37, 38]
        r = await http.get(f"/api/v1/rooms/{unique()}/history")
        assert r.json()["messages"] == []
    bob = await clients(url=b.url)
    ack, replay = await join_recording(bob, {"room": room, "since": 5})
    assert [m["offset"] for m in replay] == list(range(11, 41))
    assert ack["recovered"] is False  # 6..10 were trimmed
    ack, replay = await join_recording(await clients(url=b.url), {"room": room, "since": 10})
    assert len(replay) == 30 and ack["recovered"] is True


async def test_a_dropped_connection_recovers_what_other_nodes_published(
    nodes: Nodes, clients: Peers
) -> None:
    # its node has no other member in the room: it keeps following the room for the held
    # session, which gets, on reconnecting to the same node, what was published elsewhere
    a, b = nodes.start(), nodes.start()
    room = unique()
    alice = await Raw.connect(SimpleNamespace(url=a.url), {"user": "alice"})  # type: ignore[arg-type]
    bob = await clients(url=b.url, user="bob")
    await alice.call("join", {"room": room})
    await bob.ok("join", {"room": room})
    ((event, arg),) = await alice.next_events(1)  # (bob's join reached node a before the drop)
    assert event == "presence" and arg["member"]["user"] == "bob"
    await alice.vanish()
    got = await bob.until(lambda e, a: e == "presence" and a["action"] == "leave")
    assert got[-1][1]["member"]["sid"] == alice.sid
    sent = [await bob.ok("publish", {"room": room, "data": i}) for i in range(3)]
    back = await Raw.connect(SimpleNamespace(url=a.url), {"user": "alice", "pid": alice.pid})  # type: ignore[arg-type]
    assert back.sid == alice.sid
    events = await back.next_events(3)
    assert [(env["data"], env["offset"]) for _, env in events] == [
        (i, ack["offset"]) for i, ack in enumerate(sent)
    ]
    got = await bob.until(lambda e, a: e == "presence" and a["action"] == "join")
    assert got[-1][1]["member"]["sid"] == alice.sid
    listed = await bob.ok("presence", {"room": room})
    assert sorted(m["user"] for m in listed["members"]) == ["alice", "bob"]
    live = await bob.ok("publish", {"room": room, "data": "live"})
    assert (await back.next_events(4))[3][1]["offset"] == live["offset"]
    await back.goodbye()


async def test_two_joins_sent_at_once_replay_once(nodes: Nodes, clients: Peers) -> None:
    a = nodes.start()
    room = unique()
    alice = await clients(url=a.url)
    for i in range(5):
        await alice.ok("publish", {"room": room, "data": i})
    bob = await clients(url=a.url, transports=["polling"])  # (acks on long-polling too)
    first, second = await asyncio.gather(
        bob.ok("join", {"room": room, "since": 0}), bob.ok("join", {"room": room, "since": 0})
    )
    assert first["recovered"] is True and "recovered" not in second
    assert first["members"] == second["members"] == 1
    await alice.ok("publish", {"room": room, "data": "live"})
    got = await bob.until(lambda e, a: e == "message" and a["data"] == "live")
    assert [arg["offset"] for e, arg in got if e == "message"] == [1, 2, 3, 4, 5, 6]


async def test_events_sent_without_waiting_keep_their_order(nodes: Nodes, clients: Peers) -> None:
    # join then publish, back to back: the publisher is a member when its message goes out
    # (it gets it); join then leave, back to back: it is not a member at the end
    a = nodes.start()
    room, other = unique(), unique()
    alice = await clients(url=a.url)
    watcher = await clients(url=a.url)
    await watcher.ok("join", {"room": room})
    await watcher.ok("join", {"room": other})
    joined, published = await asyncio.gather(
        alice.ok("join", {"room": room}), alice.ok("publish", {"room": room, "data": "mine"})
    )
    assert published["offset"] == 1 and joined["members"] == 2
    got = await alice.until(lambda e, a: e == "message")
    assert got[-1][1]["data"] == "mine"
    joined, left = await asyncio.gather(
        alice.ok("join", {"room": other}), alice.ok("leave", {"room": other})
    )
    assert joined["members"] == 2 and left["room"] == other
    listed = await watcher.ok("presence", {"room": other})
    assert [m["sid"] for m in listed["members"]] == [watcher.sid]
