"""Redis going away and coming back; a node dying."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import time
from typing import Any

import httpx
import redis

from relay.backends import scripts
from tests.cluster.conftest import Nodes, SlowProxy
from tests.conftest import poll, wait_for
from tests.relay.conftest import Peers, unique


async def health(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await http.get("/healthz")


async def test_redis_down_is_unavailable_and_back_is_healthy_with_a_new_epoch(
    nodes: Nodes, clients: Peers
) -> None:
    a, b = nodes.start(), nodes.start()
    room = unique()
    alice = await clients(url=a.url, user="alice")
    bob = await clients(url=b.url, user="bob")
    before = await alice.ok("join", {"room": room})
    await bob.ok("join", {"room": room})
    await alice.ok("publish", {"room": room, "data": "before"})
    await bob.until(lambda e, a: e == "message")

    nodes.redis.stop()

    async def unhealthy() -> httpx.Response | None:
        r = await health(a.url)
        return r if r.status_code == 503 else None

    r = await poll(unhealthy, 10, "healthz 503 with Redis stopped")
    assert r.json()["status"] == "unavailable" and "redis" in r.json()["backends"]
    ack = await alice.call("publish", {"room": room, "data": "lost?"})
    assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
    ack = await alice.call("join", {"room": unique()})
    assert ack["error"]["code"] == "unavailable", ack
    # what needs no Redis still works: a direct to a connection of the same node
    local = await clients(url=a.url)
    ack = await alice.ok("direct", {"to": local.sid, "data": "local"})
    assert ack["delivered"] == 1

    nodes.redis.start()  # empty: no persistence
    started = time.monotonic()
    for node in (a, b):

        async def healthy(url: str = node.url) -> bool:
            return (await health(url)).status_code == 200

        await poll(healthy, 10, "healthy again after Redis restarted")
    assert time.monotonic() - started < 10

    after = await alice.ok("join", {"room": room})  # (already in it: reads the room again)
    assert after["epoch"] != before["epoch"] and after["offset"] == 0
    ack = await alice.ok("publish", {"room": room, "data": "after"})
    assert ack["offset"] == 1
    got = await bob.until(lambda e, a: e == "message" and a["data"] == "after")
    assert got[-1][1]["offset"] == 1
    assert not [x for e, x in got[:-1] if e == "message"], got  # "lost?" never went out
    listed = await bob.ok("presence", {"room": room})  # the nodes wrote their state again
    assert sorted(m["user"] for m in listed["members"]) == ["alice", "bob"]
    ack = await bob.ok("direct", {"user": "alice", "data": "x"})
    assert ack["delivered"] == 1


async def test_a_killed_node_s_members_leave_after_the_node_timeout(
    nodes: Nodes, clients: Peers
) -> None:
    # two living nodes may both notice: the leave is announced once all the same
    a, b, c = (nodes.start(RELAY_NODE_TIMEOUT="1") for _ in range(3))
    room = unique()
    alice = await clients(url=a.url, user="alice")
    carol = await clients(url=c.url, user="carol")
    doomed = await clients(url=b.url, user="doomed")
    await alice.ok("join", {"room": room})
    await carol.ok("join", {"room": room})
    await doomed.ok("join", {"room": room})
    for peer in (alice, carol):
        await peer.until(lambda e, a: e == "presence" and a["member"]["user"] == "doomed")
    doomed_sid = doomed.sid
    b.stop(signal.SIGKILL)
    leave = {"room": room, "action": "leave", "member": {"sid": doomed_sid, "user": "doomed"}}
    for peer in (alice, carol):
        got = await peer.until(lambda e, a: e == "presence", timeout=10)
        assert got[-1][1] == leave
    listed = await alice.ok("presence", {"room": room})
    assert sorted(m["user"] for m in listed["members"]) == ["alice", "carol"]
    ack = await alice.ok("direct", {"user": "doomed", "data": 1})
    assert ack["delivered"] == 0
    # three more looks for dead nodes on each living node later, it was reaped once
    counts = {url: (await cluster(url))["heartbeats"] for url in (a.url, c.url)}

    async def looked_again() -> bool:
        now = {url: (await cluster(url))["heartbeats"] for url in counts}
        return all(now[url] >= counts[url] + 3 for url in counts)

    await poll(looked_again, 10, "three more heartbeats")
    assert sum([(await cluster(url))["nodes_reaped"] for url in counts]) == 1
    for peer in (alice, carol):
        before = await peer.sentinel(alice, room)
        assert not [x for e, x in before if e == "presence"], before


async def cluster(url: str) -> dict[str, Any]:
    info: dict[str, Any] = (await health(url)).json()["cluster"]
    return info


async def test_lost_subscriptions_are_filled_from_history_in_order(
    nodes: Nodes, clients: Peers
) -> None:
    # Redis drops every node's pub/sub connection, three times, under traffic: the messages
    # published meanwhile reach every member anyway, once each, in offset order
    a, b = nodes.start(), nodes.start()
    room = unique()
    writer = await clients(url=a.url)
    receivers = [await clients(url=a.url), await clients(url=b.url)]
    for peer in receivers:
        await peer.ok("join", {"room": room})
    admin = redis.Redis.from_url(nodes.redis.url)
    try:
        n = 0
        for _ in range(3):

            async def subscribed() -> bool:
                return len(admin.client_list(_type="pubsub")) >= 2  # (both nodes are back)

            await poll(subscribed, 10, "both nodes subscribed")
            assert admin.client_kill_filter(_type="pubsub") >= 2
            for _ in range(30):  # (the first while the nodes reconnect)
                n += 1
                await writer.ok("publish", {"room": room, "data": n})
        for _ in range(30):
            n += 1
            await writer.ok("publish", {"room": room, "data": n})
    finally:
        admin.close()
    for peer in receivers:
        assert await peer.offsets(n, timeout=10) == list(range(1, n + 1))
    states = [await cluster(url) for url in (a.url, b.url)]
    assert all(state["redis_reconnects"] >= 3 for state in states), states
    assert sum(state["gap_filled"] for state in states) > 0, states  # (the gaps were real)


async def test_a_node_shut_down_leaves_the_cluster_tidy(nodes: Nodes, clients: Peers) -> None:
    # SIGTERM: the node closes its connections, their leaves go out at once (not after the
    # node timeout), and it takes itself out of the cluster: nobody has to reap it
    a, b = nodes.start(), nodes.start(RELAY_NODE_TIMEOUT="1")
    room = unique()
    alice = await clients(url=a.url, user="alice")
    bob = await clients(url=b.url, user="bob")
    await alice.ok("join", {"room": room})
    await bob.ok("join", {"room": room})
    await alice.until(lambda e, a: e == "presence")
    assert b.stop() == 0
    got = await alice.until(lambda e, a: e == "presence")
    assert got[-1][1]["action"] == "leave" and got[-1][1]["member"]["user"] == "bob"
    listed = await alice.ok("presence", {"room": room})
    assert [m["user"] for m in listed["members"]] == ["alice"]
    admin = redis.Redis.from_url(nodes.redis.url, decode_responses=True)
    try:
        assert len(admin.smembers("relay:nodes")) == 1
        assert admin.hlen("relay:conns") == 1
    finally:
        admin.close()


async def test_a_publish_in_flight_at_sigterm_is_acked_before_its_connection_closes(
    nodes: Nodes, clients: Peers
) -> None:
    # b's Redis is 0.4 s away: its publish is still waiting for Redis when SIGTERM comes, and
    # the shutdown waits for the answer before it closes the connection
    with SlowProxy(nodes.redis.port) as proxy:
        a = nodes.start()
        b = nodes.start(REDIS_URL=proxy.url)
        room = unique()
        alice = await clients(url=a.url)
        bob = await clients(url=b.url)
        await alice.ok("join", {"room": room})
        proxy.delay = 0.4
        sent = len(proxy.seen)
        publish = asyncio.create_task(bob.call("publish", {"room": room, "data": "last"}))
        await wait_for(
            lambda: room.encode() in proxy.seen[sent:], timeout=5, what="the publish sent"
        )
        assert await asyncio.to_thread(b.stop) == 0
        ack = await publish
        assert ack["ok"] is True, ack
        got = await alice.until(lambda e, a: e == "message")
        assert got[-1][1]["data"] == "last" and got[-1][1]["offset"] == ack["offset"]


async def test_leaves_and_disconnects_while_redis_is_down_leave_no_ghosts(
    durable_nodes: Nodes, clients: Peers
) -> None:
    # Redis is killed and comes back with its data: what b's members did meanwhile (a leave,
    # a disconnect) never reached it, and b puts Redis right once it is back
    cluster, server = durable_nodes, durable_nodes.redis
    a, b = cluster.start(), cluster.start()
    room = unique()
    alice = await clients(url=a.url, user="alice")
    bob = await clients(url=b.url, user="bob")
    carol = await clients(url=b.url, user="carol")
    for peer in (alice, bob, carol):
        await peer.ok("join", {"room": room})
    carol_sid = carol.sid
    server.stop()

    async def unhealthy() -> bool:
        return (await health(b.url)).status_code == 503

    await poll(unhealthy, 10, "b sees Redis gone")
    await bob.ok("leave", {"room": room})  # (answered by b alone)
    await carol.sio.disconnect()

    async def written() -> bool:  # b tried (and failed) to tell Redis
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            text = (await http.get("/metrics")).text
        return re.search(r"^relay_redis_queued 0(\.0)?$", text, re.M) is not None

    await poll(written, 10, "b's writes attempted")
    server.start()  # with its data: bob and carol still listed as members

    async def healthy() -> bool:
        return [(await health(n.url)).status_code for n in (a, b)] == [200, 200]

    await poll(healthy, 10, "healthy again")

    async def tidy() -> bool:
        listed = await alice.ok("presence", {"room": room})
        return [m["user"] for m in listed["members"]] == ["alice"]

    await poll(tidy, 10, "bob and carol gone from the room's members")
    ack = await alice.ok("direct", {"to": carol_sid, "data": 1})
    assert ack["delivered"] == 0
    ack = await alice.ok("direct", {"user": "carol", "data": 1})
    assert ack["delivered"] == 0
    ack = await alice.ok("direct", {"user": "bob", "data": 1})
    assert ack["delivered"] == 1  # (bob is connected still, out of the room)
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        assert admin.hget("relay:conns", carol_sid) is None
        # (gone, or a session kept for recovery: the client's goodbye may come after its
        # transport closed)
        assert admin.hgetall("relay:user:carol") in ({}, {carol_sid: "="})
    finally:
        admin.close()


async def test_a_frozen_redis_times_out_instead_of_stalling(nodes: Nodes, clients: Peers) -> None:
    a = nodes.start()
    room = unique()
    alice = await clients(url=a.url)
    await alice.ok("join", {"room": room})
    proc = nodes.redis.proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        ack = await alice.call("publish", {"room": room, "data": 1})
        assert ack["error"]["code"] == "unavailable", ack
        assert time.monotonic() - started < 4  # (the 2 s deadline, not a hang)
        started = time.monotonic()
        r = await health(a.url)  # the event loop is free meanwhile
        assert time.monotonic() - started < 1
        assert r.status_code == 503, r.text
    finally:
        proc.send_signal(signal.SIGCONT)

    async def healthy() -> bool:
        return (await health(a.url)).status_code == 200

    await poll(healthy, 10, "healthy after Redis thawed")
    ack = await alice.ok("publish", {"room": room, "data": 2})
    got = await alice.until(lambda e, a: e == "message" and a["data"] == 2)
    assert got[-1][1]["offset"] == ack["offset"]


async def test_scripts_flushed_from_redis_are_loaded_again(nodes: Nodes, clients: Peers) -> None:
    # scripts run by their SHA1; a Redis that lost them answers NOSCRIPT, and the node loads
    # them and runs the call again (once: the offsets have no gap and no duplicate)
    a = nodes.start()
    room = unique()
    alice = await clients(url=a.url)
    await alice.ok("join", {"room": room})
    assert (await alice.ok("publish", {"room": room, "data": 1}))["offset"] == 1
    admin = redis.Redis.from_url(nodes.redis.url)
    try:
        admin.script_flush()
        assert admin.script_exists(*[_sha(s) for s in (scripts.PUBLISH, scripts.JOIN)]) == [
            False,
            False,
        ]
        acks = await asyncio.gather(
            *(alice.ok("publish", {"room": room, "data": i}) for i in range(2, 12))
        )
        assert sorted(ack["offset"] for ack in acks) == list(range(2, 12))
        assert admin.script_exists(_sha(scripts.PUBLISH)) == [True]
    finally:
        admin.close()
    assert await alice.offsets(11) == list(range(1, 12))


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


async def test_a_redis_that_went_back_gets_a_new_epoch_not_offsets_twice(
    nodes: Nodes, clients: Peers
) -> None:
    # a Redis restored from an older copy has a followed room's offset behind what the node
    # delivered, in the same epoch; the node notices when it reconnects and makes a new epoch,
    # so the next message is offset 1 of it and reaches the member (handed out again in the
    # old epoch, offset 3 would be dropped as a duplicate of the one it had)
    a = nodes.start()
    room = unique()
    alice = await clients(url=a.url)
    before = await alice.ok("join", {"room": room})
    for n in range(1, 6):
        await alice.ok("publish", {"room": room, "data": n})
    await alice.until(lambda e, a: e == "message" and a["data"] == 5)
    admin = redis.Redis.from_url(nodes.redis.url)
    try:
        log = f"relay:{{{room}}}:log"  # the room as an older copy has it: two messages
        kept = admin.xrange(log, "-", "2-0")
        admin.delete(log)
        for entry_id, fields in kept:
            admin.xadd(log, fields, id=entry_id)
        admin.set(f"relay:{{{room}}}:seq", 2)
        assert admin.client_kill_filter(_type="pubsub") == 1

        async def resynced() -> bool:
            return bool((await cluster(a.url))["redis_reconnects"] >= 1)

        await poll(resynced, 10, "the node resubscribed")
        ack = await alice.ok("publish", {"room": room, "data": "after"})
        assert ack["offset"] == 1
        got = await alice.until(lambda e, a: e == "message" and a["data"] == "after")
        assert got[-1][1]["offset"] == 1
        after = await alice.ok("join", {"room": room})  # (already in it: reads the room again)
        assert after["epoch"] != before["epoch"] and after["offset"] == 1
        # a join with since replays the new epoch only: the old one's history went with it
        assert admin.xlen(log) == 1
    finally:
        admin.close()
