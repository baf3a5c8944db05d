"""Webhooks from cluster nodes: client publishes are reported with the offset Redis gave them,
once, by the node the client is on; the publish itself still crosses the cluster."""

from __future__ import annotations

import time

from tests.cluster.conftest import Nodes
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
        deadline = time.monotonic() + 10
        while len(receiver.named("publish")) < 3:
            assert time.monotonic() < deadline, receiver.named("publish")
            await bob.sio.sleep(0.02)
        published = receiver.named("publish")
        assert [(p["sid"], p["event"], p["offset"]) for p in published] == [
            (alice.sid, "chat.msg", ack["offset"]) for ack in acks
        ]
