"""A new connection is reachable from every node as soon as its client knows it is connected.

A node writes a new connection's sid to Redis and waits for Redis's answer before it answers
the CONNECT (``ClusterRelay.reserve``); a direct that comes for the sid meanwhile waits for
the answer (``Arriving``). The end-to-end test slows one node's Redis traffic with a proxy
(``SlowProxy``), so that a CONNECT answered before Redis has the sid is a direct that misses
it, every time.
"""

from __future__ import annotations

from typing import Any

import pytest

from relay.backends.cluster import ClusterRelay
from relay.backends.redis import connect
from relay.core.deferred import Deferred
from relay.core.service import Sender
from relay.settings import Settings
from tests.cluster.conftest import Nodes, Recorder, RedisServer, SlowProxy
from tests.conftest import wait_for
from tests.relay.conftest import Peers


async def test_a_direct_from_another_node_reaches_a_connection_as_soon_as_it_is_connected(
    nodes: Nodes, redis_server: RedisServer, clients: Peers
) -> None:
    with SlowProxy(redis_server.port) as proxy:
        a = nodes.start()
        b = nodes.start(REDIS_URL=proxy.url)  # (its Redis traffic goes through the proxy)
        sender = await clients(url=a.url, user="sender")
        proxy.delay = 0.3  # what b writes reaches Redis 0.3 s late
        for n in range(3):
            user = f"bob{n}"
            bob = await clients(url=b.url, user=user)
            # at once: a CONNECT answered before Redis had the sid would count 0 here
            ack = await sender.ok("direct", {"user": user, "event": "hi", "data": n})
            assert ack["delivered"] == 1, ack
            ack = await sender.ok("direct", {"to": bob.sid, "event": "hi", "data": -n})
            assert ack["delivered"] == 1, ack
            got = [(await bob.next())[1]["data"] for _ in range(2)]
            assert got == [n, -n]


async def direct(relay: ClusterRelay, **where: Any) -> int:
    """``delivered`` of a direct from ``relay`` (which asks Redis: a Deferred)."""
    with pytest.raises(Deferred) as later:
        relay.direct(Sender("x", None), event="dm", data=1, **where)
    ack = await later.value.task
    return int(ack["delivered"])


async def test_a_direct_that_comes_before_the_connect_answer_waits_for_it(
    redis_server: RedisServer,
) -> None:
    # the window between Redis answering the reservation and the CONNECT answer is one step
    # of the event loop on a real node: it is opened here by not connecting yet
    here_transport = Recorder()
    here = ClusterRelay(Settings(redis_url=redis_server.url), here_transport)
    there = ClusterRelay(Settings(redis_url=redis_server.url), Recorder())
    await here.start()
    await there.start()
    client = connect(redis_server.url, True)
    try:
        sid = await here.reserve("bob")
        assert await client.hget("relay:conns", sid) == f"{here.node} bob"
        assert await direct(there, to=None, user="bob") == 1
        assert await direct(there, to=sid, user=None) == 1
        await wait_for(lambda: len(here._arriving[sid].packets) == 2, timeout=5, what="held")
        assert here_transport.unicast == []  # not before the CONNECT answer
        here.connect(sid, "e1", "bob")
        here.admitted(sid)
        assert [s for s, _ in here_transport.unicast] == [sid, sid] and sid not in here._arriving
        assert await direct(there, to=sid, user=None) == 1  # and then as for any connection
        await wait_for(lambda: len(here_transport.unicast) == 3, timeout=5, what="live direct")

        # a connection that goes before it is connected is no longer found
        gone = await here.reserve("carol")
        here.release(gone, "carol")
        await wait_for(lambda: not here.bus.queued, timeout=5, what="writes sent")
        assert await direct(there, to=None, user="carol") == 0
        assert await client.hget("relay:conns", gone) is None
        assert not await client.sismember(f"relay:node:{here.node}:sids", gone)
    finally:
        await client.aclose()
        await here.stop()
        await there.stop()


async def test_a_redis_far_away_answers_a_node_s_first_call(redis_server: RedisServer) -> None:
    # the node's first call loads its Lua scripts: in one round trip, not one per script (at
    # 0.4 s each, a dozen would pass the call's 2 s deadline, and every call after it too)
    with SlowProxy(redis_server.port) as proxy:
        relay = ClusterRelay(Settings(redis_url=proxy.url), Recorder())
        await relay.start()
        try:
            proxy.delay = 0.4
            assert len(relay.bus._scripts) * proxy.delay > 2
            assert await relay.bus.call(lambda pipe: pipe.ping()) is True
        finally:
            await relay.stop()


async def test_what_waits_for_a_connect_answer_is_bounded_like_a_session(
    redis_server: RedisServer,
) -> None:
    # directs held for a sid whose CONNECT is unanswered: at most a recovered session's
    # packets and bytes (RELAY_MAX_BUFFER); past that they are dropped, not kept
    transport = Recorder()
    relay = ClusterRelay(Settings(redis_url=redis_server.url, max_buffer=4096), transport)
    await relay.start()
    try:
        sid = await relay.reserve("bob")
        packet = "x" * 1500
        for _ in range(5):  # (as they come on the node's channel from other nodes)
            relay._on_message(relay.node_channel, f"{sid} {packet}")
        held = relay._arriving[sid]
        assert len(held.packets) == 2 and held.size == 3000 <= 4096
        relay.connect(sid, "e1", "bob")
        relay.admitted(sid)
        assert [p for _, p in transport.unicast] == [packet, packet]
        relay.recovery.max_packets = 3  # (1,000 unless a test makes it small)
        other = await relay.reserve("carol")
        for n in range(5):
            relay._on_message(relay.node_channel, f"{other} {n}")
        assert relay._arriving[other].packets == ["0", "1", "2"]
    finally:
        await relay.stop()
