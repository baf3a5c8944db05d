"""Room epochs (the contract's "Epochs"): the ``join`` ack names the life of a room's offsets,
and a ``since`` from another life is answered like one beyond history.

Real relays on free ports, real python-socketio clients; a room is forgotten the ways it is in
production (its last member leaves, or its history expires and the sweeper drops it) and a
restart is a real ``relay serve`` process stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from relay.limits import OFF
from relay.settings import Settings
from tests.conftest import LiveRelay, free_port, serve_in_thread, start_relay_process, wait_for
from tests.relay.conftest import Peer, Peers, unique


async def join_recording(peer: Peer, payload: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Join; the envelopes replayed before the ack, and the ack."""
    got: list[tuple[str, Any]] = []
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    await peer.sio.emit("join", payload, callback=done.set_result)
    ack = await asyncio.wait_for(done, 5)
    got = peer.pending()
    assert ack["ok"] is True, ack
    return [env for event, env in got if event == "message"], ack


def data_of(envelopes: list[Any]) -> list[Any]:
    return [(env["offset"], env["data"]) for env in envelopes]


@pytest.fixture(scope="module")
def expiring() -> Iterator[LiveRelay]:
    """A relay whose history lasts 0.3 s, so the sweeper forgets idle rooms within a second."""
    with serve_in_thread(Settings(history_ttl=0.3, publish_rate=OFF, join_rate=OFF)) as live:
        yield live


async def test_the_join_ack_names_the_room_s_epoch_the_same_for_everyone(
    connect: Peers,
) -> None:
    room = unique()
    a, b = await connect(), await connect()
    first = await a.ok("join", {"room": room})
    epoch = first["epoch"]
    assert isinstance(epoch, str) and 10 <= len(epoch) <= 16
    for i in range(3):
        await a.ok("publish", {"room": room, "data": i})
    second = await b.ok("join", {"room": room, "since": 1})
    assert second["epoch"] == epoch and second["offset"] == 3
    again = await a.ok("join", {"room": room})  # joining twice: same room, same epoch
    assert again["epoch"] == epoch
    other = await a.ok("join", {"room": unique()})
    assert other["epoch"] != epoch  # each room its own


async def test_since_with_the_room_s_epoch_replays_exactly_what_was_missed(
    connect: Peers,
) -> None:
    room = unique()
    a, b = await connect(), await connect()
    epoch = (await a.ok("join", {"room": room}))["epoch"]
    for i in range(1, 6):
        await a.ok("publish", {"room": room, "data": i})
    replayed, ack = await join_recording(b, {"room": room, "since": 2, "epoch": epoch})
    assert data_of(replayed) == [(3, 3), (4, 4), (5, 5)]
    assert ack["recovered"] is True and ack["epoch"] == epoch and ack["offset"] == 5


async def test_epoch_without_since_replays_nothing(connect: Peers) -> None:
    """``epoch`` only qualifies ``since``: alone, it is checked and the join is a plain one."""
    room = unique()
    a, b = await connect(), await connect()
    epoch = (await a.ok("join", {"room": room}))["epoch"]
    await a.ok("publish", {"room": room, "data": 1})
    replayed, ack = await join_recording(b, {"room": room, "epoch": "not-this-room-s"})
    assert replayed == [] and "recovered" not in ack and ack["epoch"] == epoch
    # null counts as absent
    replayed, ack = await join_recording(await connect(), {"room": room, "since": 0, "epoch": None})
    assert data_of(replayed) == [(1, 1)] and ack["recovered"] is True


async def test_a_stale_epoch_gets_everything_held_and_recovered_false(connect: Peers) -> None:
    """Even where ``since`` alone would look fine (it is within the room's offsets)."""
    room = unique()
    a, b = await connect(), await connect()
    await a.ok("join", {"room": room})
    for i in range(1, 5):
        await a.ok("publish", {"room": room, "data": i})
    replayed, ack = await join_recording(b, {"room": room, "since": 2, "epoch": "an-old-epoch"})
    assert data_of(replayed) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert ack["recovered"] is False and ack["offset"] == 4


@pytest.mark.parametrize(
    ("epoch", "says"),
    [
        (5, "'epoch' must be a string (the epoch of a 'join' ack), got int"),
        (True, "'epoch' must be a string (the epoch of a 'join' ack), got bool"),
        (["x"], "'epoch' must be a string (the epoch of a 'join' ack), got list"),
        ({"e": 1}, "'epoch' must be a string (the epoch of a 'join' ack), got dict"),
        ("", "'epoch' must be 1-64 characters"),
        ("e" * 65, "'epoch' must be 1-64 characters"),
        ("has space", "'epoch' must be 1-64 characters"),
    ],
)
async def test_a_bad_epoch_is_bad_request(connect_ws: Peers, epoch: Any, says: str) -> None:
    a = await connect_ws()
    room = unique()
    ack = await a.call("join", {"room": room, "since": 0, "epoch": epoch})
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request", ack
    assert ack["error"]["message"].startswith(says), ack
    # nothing was joined, and the connection is fine
    assert (await a.ok("presence", {"room": room}))["members"] == []


async def test_a_room_forgotten_when_its_last_member_leaves_comes_back_with_a_new_epoch(
    connect: Peers,
) -> None:
    room = unique()
    a = await connect()
    first = (await a.ok("join", {"room": room}))["epoch"]
    await a.ok("leave", {"room": room})  # no member, no history: forgotten
    again = await a.ok("join", {"room": room, "since": 0, "epoch": first})
    assert again["epoch"] != first and again["recovered"] is False


async def test_a_room_whose_history_expired_starts_again_with_a_new_epoch(
    expiring: LiveRelay,
) -> None:
    """The old offset-comparison could not tell: ``since`` 1 is below the new room's latest 3,
    yet those 3 messages are all new to a client of the old life."""
    peers = Peers(expiring.url, "websocket")
    try:
        room = unique()
        a, b = await peers(), await peers()
        old = (await a.ok("join", {"room": room}))["epoch"]
        for data in ("old-1", "old-2"):
            await a.ok("publish", {"room": room, "data": data})
        await a.ok("leave", {"room": room})  # history stays until it expires...
        assert expiring.relay.history.epoch(room) == old
        await wait_for(lambda: room not in expiring.relay.history, timeout=10)  # ...swept
        for data in ("new-1", "new-2", "new-3"):
            await a.ok("publish", {"room": room, "data": data})
        replayed, ack = await join_recording(b, {"room": room, "since": 1, "epoch": old})
        assert ack["epoch"] != old and ack["recovered"] is False and ack["offset"] == 3
        assert data_of(replayed) == [(1, "new-1"), (2, "new-2"), (3, "new-3")]
        # and from the new epoch, the same since is a plain resume
        _, c_ack = await join_recording(await peers(), {"room": room})
        replayed, ack = await join_recording(
            await peers(), {"room": room, "since": 1, "epoch": c_ack["epoch"]}
        )
        assert data_of(replayed) == [(2, "new-2"), (3, "new-3")] and ack["recovered"] is True
    finally:
        await peers.close()


async def test_http_history_names_the_epoch_of_its_page(live_relay: LiveRelay) -> None:
    peers = Peers(live_relay.url, "websocket")
    try:
        room = unique()
        a = await peers()
        epoch = (await a.ok("join", {"room": room}))["epoch"]
        await a.ok("publish", {"room": room, "data": 1})
        async with httpx.AsyncClient(base_url=live_relay.url, timeout=10) as http:
            page = (await http.get(f"/api/v1/rooms/{room}/history")).json()
            assert page["epoch"] == epoch and [m["data"] for m in page["messages"]] == [1]
            never = unique("never")
            # a room not known has no epoch yet: the contract's answer, unchanged
            assert (await http.get(f"/api/v1/rooms/{never}/history")).json() == {
                "room": never,
                "messages": [],
            }
    finally:
        await peers.close()


@pytest.mark.slow
async def test_a_restarted_relay_gives_its_rooms_new_epochs() -> None:
    port = free_port()
    server = await asyncio.to_thread(start_relay_process, port=port)
    peers = Peers(server.url, "websocket")
    try:
        room = unique()
        a = await peers()
        old = (await a.ok("join", {"room": room}))["epoch"]
        for data in ("old-1", "old-2"):
            await a.ok("publish", {"room": room, "data": data})
        await peers.close()
        assert await asyncio.to_thread(server.stop) == 0

        server = await asyncio.to_thread(start_relay_process, port=port)
        peers = Peers(server.url, "websocket")
        b, c = await peers(), await peers()
        for data in ("new-1", "new-2", "new-3"):
            await b.ok("publish", {"room": room, "data": data})
        replayed, ack = await join_recording(c, {"room": room, "since": 2, "epoch": old})
        assert ack["epoch"] != old and ack["recovered"] is False
        assert data_of(replayed) == [(1, "new-1"), (2, "new-2"), (3, "new-3")]
    finally:
        await peers.close()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
