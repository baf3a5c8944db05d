"""Every client event of the contract, its ack and what other clients see, on both transports."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread
from tests.relay.conftest import TIMEOUT, Peer, Peers, unique


class AnyEpoch:
    """Equal to any epoch a join ack may name (a non-empty string of bounded length)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and 0 < len(other) <= 64

    def __repr__(self) -> str:
        return "<any epoch>"


EPOCH = AnyEpoch()


def presence(room: str, action: str, peer: Peer, user: str | None) -> tuple[str, Any]:
    return ("presence", {"room": room, "action": action, "member": {"sid": peer.sid, "user": user}})


async def join_recording(peer: Peer, payload: dict[str, Any]) -> list[tuple[str, Any]]:
    """Join with the ack delivered into the peer's inbox, so its place among events shows."""
    await peer.sio.emit("join", payload, callback=lambda ack: peer.inbox.put_nowait(("<ack>", ack)))
    return await peer.until(lambda e, _: e == "<ack>")


# -- join / leave / presence -------------------------------------------------------------------


async def test_join_ack_counts_members_and_announces(connect: Peers) -> None:
    room = unique()
    a, b = await connect("alice"), await connect()
    ack = await a.ok("join", {"room": room})
    assert ack == {"ok": True, "room": room, "offset": 0, "epoch": EPOCH, "members": 1}
    ack = await b.ok("join", {"room": room})
    assert ack == {"ok": True, "room": room, "offset": 0, "epoch": EPOCH, "members": 2}
    assert await a.next() == presence(room, "join", b, None)
    # The joiner hears nothing about its own join (proved by a later message it does get).
    assert await b.sentinel(a, room) == []
    assert (await a.next())[0] == "sentinel"  # a's own copy

    # Joining again changes nothing and is ok; nobody hears of it.
    ack = await b.ok("join", {"room": room})
    assert ack == {"ok": True, "room": room, "offset": 1, "epoch": EPOCH, "members": 2}
    assert await a.sentinel(b, room) == []


async def test_offset_in_join_ack_is_the_latest(connect: Peers) -> None:
    room = unique()
    a = await connect()
    for _ in range(3):
        await a.ok("publish", {"room": room, "data": None})
    ack = await a.ok("join", {"room": room})
    assert ack["offset"] == 3 and ack["members"] == 1


async def test_leave(connect: Peers) -> None:
    room = unique()
    a, b = await connect("alice"), await connect("bob")
    # Leaving a room you are not in (or that does not exist) is ok and changes nothing.
    assert await a.ok("leave", {"room": room}) == {"ok": True, "room": room}
    await a.ok("join", {"room": room})
    await b.ok("join", {"room": room})
    assert await a.next() == presence(room, "join", b, "bob")
    assert await b.ok("leave", {"room": room}) == {"ok": True, "room": room}
    assert await a.next() == presence(room, "leave", b, "bob")
    assert await b.ok("leave", {"room": room}) == {"ok": True, "room": room}
    # b is no longer a member: the sentinel proves a heard of no second leave, and b gets
    # nothing published into the room.
    assert await a.sentinel(a, room) == []
    assert b.pending() == []
    assert (await a.ok("presence", {"room": room}))["members"] == [{"sid": a.sid, "user": "alice"}]


async def test_presence_lists_members_in_join_order(connect: Peers) -> None:
    room = unique()
    a, b, c = await connect("alice"), await connect(), await connect("carol")
    assert await c.ok("presence", {"room": room}) == {"ok": True, "room": room, "members": []}
    await a.ok("join", {"room": room})
    await b.ok("join", {"room": room})
    ack = await c.ok("presence", {"room": room})  # c need not be a member to ask
    assert ack == {
        "ok": True,
        "room": room,
        "members": [{"sid": a.sid, "user": "alice"}, {"sid": b.sid, "user": None}],
    }


async def test_disconnect_counts_as_leaving_every_room(connect: Peers) -> None:
    r1, r2 = unique(), unique()
    a, b = await connect("alice"), await connect("bob")
    for room in (r1, r2):
        await a.ok("join", {"room": room})
        await b.ok("join", {"room": room})
        assert await a.next() == presence(room, "join", b, "bob")
    left = [presence(r1, "leave", b, "bob"), presence(r2, "leave", b, "bob")]
    await b.sio.disconnect()
    got = [await a.next(), await a.next()]
    assert sorted(got, key=lambda e: str(e[1]["room"])) == sorted(
        left, key=lambda e: str(e[1]["room"])
    )
    ack = await a.ok("presence", {"room": r1})
    assert ack["members"] == [{"sid": a.sid, "user": "alice"}]


# -- publish -----------------------------------------------------------------------------------


async def test_publish_envelope_and_ack(connect: Peers) -> None:
    room = unique()
    a, b, outsider = await connect("alice"), await connect(), await connect("olga")
    await a.ok("join", {"room": room})
    await b.ok("join", {"room": room})
    assert (await a.next())[0] == "presence"

    before = int(time.time() * 1000)
    ack = await outsider.ok("publish", {"room": room, "data": {"n": [1, "two", None]}})
    after = int(time.time() * 1000)
    assert set(ack) == {"ok", "id", "offset"} and isinstance(ack["id"], str)
    assert ack["offset"] == 1
    for peer in (a, b):
        event, env = await peer.next()
        assert event == "message"
        assert env == {
            "id": ack["id"],
            "room": room,
            "event": "message",
            "from": {"sid": outsider.sid, "user": "olga"},
            "data": {"n": [1, "two", None]},
            "offset": 1,
            "ts": env["ts"],
        }
        assert before - 5 <= env["ts"] <= after + 5
    # The sender was not a member, so it got nothing.
    await outsider.ok("join", {"room": room})
    assert await outsider.sentinel(a, room) == []


async def test_publish_includes_sender_unless_exclude_self(connect: Peers) -> None:
    room = unique()
    a, b = await connect(), await connect()
    await a.ok("join", {"room": room})
    await b.ok("join", {"room": room})
    await a.next()  # presence of b

    ack = await a.ok("publish", {"room": room, "data": "to all"})
    for peer in (a, b):
        event, env = await peer.next()
        assert (event, env["data"], env["id"], env["offset"]) == ("message", "to all", ack["id"], 1)

    ack = await a.ok("publish", {"room": room, "data": "not me", "exclude_self": True})
    assert ack["offset"] == 2
    event, env = await b.next()
    assert (event, env["data"], env["offset"]) == ("message", "not me", 2)
    assert await a.sentinel(b, room) == []

    ack = await a.ok("publish", {"room": room, "data": "me too", "exclude_self": False})
    assert (await a.next())[1]["data"] == "me too"


async def test_custom_event_names(connect: Peers) -> None:
    room = unique()
    a = await connect()
    await a.ok("join", {"room": room})
    for name in ("chat.new", "a", "x" * 64, "team-42:msg/v1@edge_case", "message"):
        ack = await a.ok("publish", {"room": room, "event": name, "data": name})
        event, env = await a.next()
        assert (event, env["event"], env["data"], env["id"]) == (name, name, name, ack["id"])


async def test_offsets_count_per_room_from_one(connect: Peers) -> None:
    r1, r2 = unique(), unique()
    a = await connect()
    offsets = []
    for room in (r1, r2, r1, r1, r2):
        offsets.append((await a.ok("publish", {"room": room, "data": 0}))["offset"])
    assert offsets == [1, 1, 2, 3, 2]


# -- direct ------------------------------------------------------------------------------------


async def test_direct_by_sid(connect: Peers) -> None:
    a, b, c = await connect("alice"), await connect("bob"), await connect()
    ack = await a.ok("direct", {"to": b.sid, "event": "ping", "data": {"k": 1}})
    assert set(ack) == {"ok", "id", "delivered"} and ack["delivered"] == 1
    event, env = await b.next()
    assert event == "ping"
    assert env == {
        "id": ack["id"],
        "room": None,
        "event": "ping",
        "from": {"sid": a.sid, "user": "alice"},
        "data": {"k": 1},
        "offset": None,
        "ts": env["ts"],
    }
    ack = await a.ok("direct", {"to": "no-such-sid", "data": 1})
    assert ack["delivered"] == 0
    # Default event name, and the sender may address itself.
    ack = await c.ok("direct", {"to": c.sid, "data": "self"})
    assert ack["delivered"] == 1
    event, env = await c.next()
    assert (event, env["data"], env["from"]) == ("message", "self", {"sid": c.sid, "user": None})
    assert a.pending() == []


async def test_direct_by_user_reaches_every_connection(connect: Peers) -> None:
    user = unique("user")
    a = await connect()
    b1, b2, other = await connect(user), await connect(user), await connect(unique("user"))
    ack = await a.ok("direct", {"user": user, "event": "note", "data": "hi"})
    assert ack["delivered"] == 2
    for peer in (b1, b2):
        event, env = await peer.next()
        assert (event, env["id"], env["data"], env["room"], env["offset"]) == (
            "note",
            ack["id"],
            "hi",
            None,
            None,
        )
    assert (await a.ok("direct", {"user": unique("nobody"), "data": 1}))["delivered"] == 0
    # After one of them leaves, only the other counts.
    await b1.sio.disconnect()
    assert (await a.ok("direct", {"user": user, "data": 2}))["delivered"] == 1
    assert (await b2.next())[1]["data"] == 2
    # The unrelated user got nothing: prove it with a message it does get.
    await a.ok("direct", {"to": other.sid, "event": "sentinel", "data": 0})
    got = await other.until(lambda e, _: e == "sentinel")
    assert [e for e, _ in got] == ["sentinel"]


async def test_direct_with_both_to_and_user_is_bad_request(connect: Peers) -> None:
    a, b = await connect(), await connect("bob")
    ack = await a.call("direct", {"to": b.sid, "user": "bob", "data": 1})
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    ack = await a.call("direct", {"data": 1})
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"


# -- replay with since -------------------------------------------------------------------------


async def test_join_since_replays_in_order_before_the_ack(connect: Peers) -> None:
    room = unique()
    a, b = await connect(), await connect()
    ids = [(await a.ok("publish", {"room": room, "data": i}))["id"] for i in range(1, 6)]
    got = await join_recording(b, {"room": room, "since": 2})
    assert [(e, env["offset"], env["id"], env["data"]) for e, env in got[:-1]] == [
        ("message", n, ids[n - 1], n) for n in (3, 4, 5)
    ]
    assert got[-1] == (
        "<ack>",
        {"ok": True, "room": room, "offset": 5, "epoch": EPOCH, "members": 1, "recovered": True},
    )


async def test_join_since_zero_and_since_latest(connect: Peers) -> None:
    room = unique()
    a, b, c = await connect(), await connect(), await connect()
    for i in range(3):
        await a.ok("publish", {"room": room, "data": i})
    got = await join_recording(b, {"room": room, "since": 0})
    assert [env["offset"] for _, env in got[:-1]] == [1, 2, 3]
    assert got[-1][1]["recovered"] is True
    got = await join_recording(c, {"room": room, "since": 3})
    assert got == [
        (
            "<ack>",
            {
                "ok": True,
                "room": room,
                "offset": 3,
                "epoch": EPOCH,
                "members": 2,
                "recovered": True,
            },
        )
    ]


async def test_join_since_ahead_of_the_room(connect: Peers) -> None:
    room = unique()
    a, b = await connect(), await connect()
    for i in range(2):
        await a.ok("publish", {"room": room, "data": i})
    # A client from a previous life of the room (a restarted server) gets what there is.
    got = await join_recording(b, {"room": room, "since": 100})
    assert [env["offset"] for _, env in got[:-1]] == [1, 2]
    assert got[-1][1] == {
        "ok": True,
        "room": room,
        "offset": 2,
        "epoch": EPOCH,
        "members": 1,
        "recovered": False,
    }
    # A room that never had a message: nothing to replay, and since>0 was not recovered.
    empty = unique()
    got = await join_recording(b, {"room": empty, "since": 7})
    assert got == [
        (
            "<ack>",
            {
                "ok": True,
                "room": empty,
                "offset": 0,
                "epoch": EPOCH,
                "members": 1,
                "recovered": False,
            },
        )
    ]
    got = await join_recording(a, {"room": unique(), "since": 0})
    assert got[-1][1]["recovered"] is True


async def test_join_since_beyond_trimmed_history(transport: str) -> None:
    with serve_in_thread(Settings(history_size=3)) as live:
        peers = Peers(live.url, transport)
        try:
            room = unique()
            a, b, c = await peers(), await peers(), await peers()
            for i in range(1, 7):
                await a.ok("publish", {"room": room, "data": i})
            got = await join_recording(b, {"room": room, "since": 1})
            assert [env["offset"] for _, env in got[:-1]] == [4, 5, 6]
            assert got[-1][1] == {
                "ok": True, "room": room, "offset": 6, "epoch": EPOCH, "members": 1,
                "recovered": False,
            }  # fmt: skip
            # Exactly the first kept message's predecessor is still a full recovery.
            got = await join_recording(c, {"room": room, "since": 3})
            assert [env["offset"] for _, env in got[:-1]] == [4, 5, 6]
            assert got[-1][1]["recovered"] is True
        finally:
            await peers.close()


async def test_join_twice_with_since_replays_nothing_more(connect: Peers) -> None:
    room = unique()
    a = await connect()
    await a.ok("publish", {"room": room, "data": 1})
    got = await join_recording(a, {"room": room, "since": 0})
    assert len(got) == 2
    # Already a member: nothing changes, nothing is replayed again.
    got = await join_recording(a, {"room": room, "since": 0})
    assert [e for e, _ in got] == ["<ack>"]
    assert got[0][1]["ok"] is True and got[0][1]["members"] == 1


async def test_replay_under_live_traffic_has_no_gap_and_no_duplicate(connect: Peers) -> None:
    room = unique()
    publisher, joiner = await connect(), await connect()
    total, since = 300, 10
    published = 0
    reached = asyncio.Event()

    async def publish_all() -> None:
        nonlocal published
        for i in range(1, total + 1):
            ack = await publisher.ok("publish", {"room": room, "data": i})
            published = ack["offset"]
            if published >= 40:
                reached.set()

    task = asyncio.create_task(publish_all())
    try:
        await asyncio.wait_for(reached.wait(), TIMEOUT * 4)
        assert not task.done(), "the publisher must still be running while the join replays"
        ack = await joiner.ok("join", {"room": room, "since": since})
        assert ack["recovered"] is True
        await asyncio.wait_for(task, TIMEOUT * 6)
    finally:
        task.cancel()
    got = await joiner.until(lambda e, env: e == "message" and env["offset"] == total, TIMEOUT * 2)
    offsets = [env["offset"] for e, env in got if e == "message"]
    assert offsets == list(range(since + 1, total + 1))
    assert [env["data"] for _, env in got] == offsets


# -- no room ever carries direct messages ------------------------------------------------------


async def test_rooms_named_like_a_sid_or_user_never_receive_direct_messages(
    connect: Peers,
) -> None:
    victim_user = unique("user")
    victim, spy, sender = await connect(victim_user), await connect("spy"), await connect()
    for room in (victim.sid, victim_user):
        ack = await spy.ok("join", {"room": room})
        assert ack["members"] == 1  # the victim is not counted in a room named after it
    assert (await sender.ok("direct", {"to": victim.sid, "data": "secret-1"}))["delivered"] == 1
    assert (await sender.ok("direct", {"user": victim_user, "data": "secret-2"}))["delivered"] == 1
    assert [env["data"] for _, env in [await victim.next(), await victim.next()]] == [
        "secret-1",
        "secret-2",
    ]
    # The spy is in both rooms and does receive what is published there, and nothing else.
    assert await spy.sentinel(sender, victim.sid) == []
    assert await spy.sentinel(sender, victim_user) == []
    # And the victim is not a member of the rooms named after it.
    await victim.ok("direct", {"to": victim.sid, "event": "sentinel", "data": 0})
    got = await victim.until(lambda e, _: e == "sentinel")
    assert got == [("sentinel", got[0][1])]


async def test_health_of_the_shared_relay(live_relay: LiveRelay) -> None:
    # The module's relay is still fully serving after every test above.
    assert live_relay.thread.is_alive()
