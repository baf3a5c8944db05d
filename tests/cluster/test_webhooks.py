"""Webhooks from cluster nodes: every event is reported once, by the node the client is on
(client publishes with the offset Redis gave them), and a room's occupancy once for the whole
cluster; the publish itself still crosses the cluster."""

from __future__ import annotations

import asyncio
import signal

from tests.cluster.conftest import Nodes
from tests.conftest import wait_for
from tests.hooks.receiver import SECRET, receiving
from tests.relay.conftest import Peers, unique


async def test_a_cluster_publish_is_reported_once_with_its_offset(
    nodes: Nodes, clients: Peers
) -> None:
    with receiving() as receiver:
        hooked = {
            "RELAY_WEBHOOK_URL": receiver.url,
            "RELAY_WEBHOOK_SECRET": SECRET,
            "RELAY_WEBHOOK_PUBLISH": "chat.*",
            "RELAY_WEBHOOK_LINGER": "10ms",
        }
        a, b = nodes.start(**hooked), nodes.start(**hooked)
        room = unique()
        alice = await clients(url=a.url, user="alice")
        bob = await clients(url=b.url, user="bob")
        await alice.ok("join", {"room": room})
        await bob.ok("join", {"room": room})
        acks = [
            await alice.ok("publish", {"room": room, "event": "chat.msg", "data": i})
            for i in range(3)
        ]
        await alice.ok("publish", {"room": room, "event": "other", "data": 9})
        for ack in acks:  # the publishes crossed the cluster, as without webhooks
            await bob.until(lambda e, env, o=ack["offset"]: e == "chat.msg" and env["offset"] == o)
        await wait_for(lambda: len(receiver.named("publish")) >= 3, what="3 publishes reported")
        published = receiver.named("publish")
        assert [(p["sid"], p["event"], p["offset"]) for p in published] == [
            (alice.sid, "chat.msg", ack["offset"]) for ack in acks
        ]


async def test_each_event_is_reported_once_by_one_node_and_rooms_once_cluster_wide(
    nodes: Nodes, clients: Peers
) -> None:
    # a room with members on two nodes is occupied once and vacated once, whichever node's
    # member came first or went last (both join at once, and both leave at once); a node that
    # dies has its connections' leaves and disconnects reported by the node that reaps it,
    # once, with the room it left empty
    with receiving() as receiver:
        hooked = {
            "RELAY_WEBHOOK_URL": receiver.url,
            "RELAY_WEBHOOK_SECRET": SECRET,
            "RELAY_WEBHOOK_PUBLISH": "*",
            "RELAY_WEBHOOK_LINGER": "10ms",
            "RELAY_NODE_TIMEOUT": "1",
        }
        a, b, c = nodes.start(**hooked), nodes.start(**hooked), nodes.start(**hooked)
        shared, alone = unique(), unique()
        alice = await clients(url=a.url, user="alice")
        bob = await clients(url=b.url, user="bob")
        carol = await clients(url=c.url, user="carol")
        await asyncio.gather(alice.ok("join", {"room": shared}), bob.ok("join", {"room": shared}))
        await carol.ok("join", {"room": shared})
        await carol.ok("join", {"room": alone})
        await bob.ok("publish", {"room": shared, "data": 1})
        await asyncio.gather(alice.ok("leave", {"room": shared}), bob.ok("leave", {"room": shared}))

        def seen(name: str, room: str | None = None) -> list[tuple[str, str | None]]:
            return [
                (e["sid"], e.get("room")) for e in receiver.named(name) if e.get("room") == room
            ]

        carol_sid = carol.sid
        # (what carol's node reported must have arrived before it dies)
        await wait_for(lambda: seen("room_occupied", alone) != [], 15, what="alone occupied")
        c.stop(signal.SIGKILL)  # carol's node dies: she leaves both rooms, alone is vacated

        await wait_for(lambda: len(seen("room_vacated", shared)) >= 1, 15, what="shared vacated")
        await wait_for(lambda: len(seen("room_vacated", alone)) >= 1, 15, what="alone vacated")
        await wait_for(lambda: len(seen("disconnect")) >= 1, 15, what="carol's disconnect")
        # a marker from each living node: what each of them reported before it has arrived
        markers = [await clients(url=node.url, user="marker") for node in (a, b)]
        await wait_for(
            lambda: {m.sid for m in markers} <= {sid for sid, _ in seen("connect")},
            15,
            what="markers",
        )

        assert sorted(seen("room_occupied", shared)) in (
            [(alice.sid, shared)],
            [(bob.sid, shared)],
        )
        assert seen("room_occupied", alone) == [(carol_sid, alone)]
        assert len(seen("room_vacated", shared)) == 1
        assert seen("room_vacated", alone) == [(carol_sid, alone)]
        assert sorted(seen("join", shared)) == sorted(
            [(alice.sid, shared), (bob.sid, shared), (carol_sid, shared)]
        )
        assert sorted(seen("leave", shared)) == sorted(
            [(alice.sid, shared), (bob.sid, shared), (carol_sid, shared)]
        )
        assert seen("leave", alone) == [(carol_sid, alone)]
        assert seen("publish", shared) == [(bob.sid, shared)]
        connects = sorted(sid for sid, _ in seen("connect"))
        assert connects == sorted([alice.sid, bob.sid, carol_sid, *(m.sid for m in markers)])
        assert seen("disconnect") == [(carol_sid, None)]
        # carol's leaves came before her disconnect, and each room's vacancy after its leave
        names = [(e["name"], e["sid"], e.get("room")) for e in receiver.events]
        assert names.index(("leave", carol_sid, alone)) < names.index(
            ("disconnect", carol_sid, None)
        )
        assert names.index(("leave", carol_sid, alone)) < names.index(
            ("room_vacated", carol_sid, alone)
        )

        # a node shut down (SIGTERM) reports its last leaves, and the rooms they vacate,
        # before it exits
        last = unique()
        alice_sid = alice.sid
        await alice.ok("join", {"room": last})
        await wait_for(lambda: seen("room_occupied", last) != [], 15, what="last occupied")
        assert a.stop() == 0
        assert seen("leave", last) == [(alice_sid, last)]
        assert seen("room_vacated", last) == [(alice_sid, last)]
        assert (alice_sid, None) in seen("disconnect")
