"""The cluster's parts on their own: connection options and a feed's ordering rules (no Redis),
and steps whose fault or state must be set up from inside a node (a real Redis)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.backends import make_relay
from relay.backends.cluster import ClusterRelay
from relay.backends.redis import connect, describe
from relay.core.deferred import Deferred
from relay.core.service import Relay
from relay.errors import Unavailable
from relay.settings import Settings
from tests.cluster.conftest import Recorder, RedisServer
from tests.conftest import wait_for


def test_the_backend_is_chosen_by_redis_url() -> None:
    transport: Any = Recorder()
    assert type(make_relay(Settings(), transport)) is Relay
    cluster = make_relay(Settings(redis_url="redis://127.0.0.1:1/0"), transport)
    assert isinstance(cluster, ClusterRelay) and cluster.health()["redis"].startswith("unavail")


def test_tls_verification_is_a_setting_and_passwords_stay_out_of_logs() -> None:
    unverified = connect("rediss://:secret@example.com:6380/0", tls_verify=False)
    assert unverified.connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"
    verified = connect("rediss://:secret@example.com:6380/0", tls_verify=True)
    assert verified.connection_pool.connection_kwargs.get("ssl_cert_reqs") != "none"
    plain = connect("redis://127.0.0.1:6379", tls_verify=False)
    assert "ssl_cert_reqs" not in plain.connection_pool.connection_kwargs
    assert describe("rediss://user:secret@example.com:6380/2") == "rediss://example.com:6380/2"


def channel(room: str) -> str:
    return f"relay:{{{room}}}:ch"


async def test_a_feed_delivers_in_offset_order_once_and_restarts_with_the_epoch() -> None:
    transport = Recorder()
    relay = ClusterRelay(Settings(redis_url="redis://127.0.0.1:1/0"), transport)
    feed = relay._feed("r")
    # before a join anchors it, arrivals wait
    relay._on_message(channel("r"), "3 E1 n1 - p3")
    relay._on_message(channel("r"), "4 E1 n1 sidx p4")
    assert transport.sent == []
    relay._anchor(feed, 2, "E1")  # the join read offset 2: 3 and 4 are live
    assert transport.sent == [("r", "p3", None), ("r", "p4", "sidx")]
    relay._on_message(channel("r"), "4 E1 n1 - p4")  # a duplicate
    relay._on_message(channel("r"), "2 E1 n1 - p2")  # older than what was delivered
    relay._on_message(channel("r"), "5 E1 n1 - p5")
    assert [p for _, p, _ in transport.sent] == ["p3", "p4", "p5"] and feed.last == 5
    # a presence event is outside the order, and its origin told its own members
    relay._on_message(channel("r"), f"0 - {relay.node} - mine")
    relay._on_message(channel("r"), "0 - other - theirs")
    assert [p for _, p, _ in transport.sent][-1] == "theirs"
    # a new epoch: the room's offsets started again
    relay._on_message(channel("r"), "1 E2 n1 - q1")
    assert transport.sent[-1][1] == "q1" and (feed.epoch, feed.last) == ("E2", 1)
    # a room this node does not follow is not delivered
    relay._on_message(channel("other"), "1 E1 n1 - x")
    assert transport.sent[-1][1] == "q1"
    for task in list(relay._tasks):
        task.cancel()


async def test_a_join_that_fails_after_redis_listed_the_member_takes_it_out(
    redis_server: RedisServer,
) -> None:
    # Redis failing at the one instant between the join's script (which lists the member) and
    # the node making it a member cannot be timed from outside: the fault is raised there
    relay = ClusterRelay(Settings(redis_url=redis_server.url), Recorder())
    await relay.start()
    client = connect(redis_server.url, True)
    members = "relay:{flaky}:members"
    try:
        relay.connect("s1", "e1", "alice")
        anchor = relay._anchor

        def fail_once(*args: Any) -> None:
            relay._anchor = anchor  # type: ignore[method-assign]
            raise Unavailable("Redis went away mid-join")

        relay._anchor = fail_once  # type: ignore[method-assign]
        with pytest.raises(Deferred) as later:
            relay.join("s1", "flaky", None)
        with pytest.raises(Unavailable):
            await later.value.task
        assert "flaky" not in relay.registry.get("s1").rooms  # type: ignore[union-attr]
        await wait_for(lambda: relay._membership == set(), timeout=5)
        assert await client.hlen(members) == 0  # not a ghost member of the room
        assert await client.zscore("relay:rooms", "flaky") is None  # nor a room with members
        # the next join works, and lists it once
        with pytest.raises(Deferred) as later:
            relay.join("s1", "flaky", None)
        ack = await later.value.task
        assert ack["ok"] and ack["members"] == 1 and await client.hlen(members) == 1
    finally:
        await client.aclose()
        await relay.stop()


async def test_what_redis_did_not_hear_is_tidied_once_it_is_back(
    redis_server: RedisServer,
) -> None:
    # what a leave and a disconnect leave in Redis when their writes fail (tests/cluster/
    # test_faults.py gets there with a Redis killed and restarted): written here directly, so
    # that the tidy-up that follows a reconnect, and what other nodes hear of it, can be seen
    here = ClusterRelay(Settings(redis_url=redis_server.url), Recorder())
    there_transport = Recorder()
    there = ClusterRelay(Settings(redis_url=redis_server.url), there_transport)
    await here.start()
    await there.start()
    client = connect(redis_server.url, True)
    members = "relay:{lobby}:members"
    try:
        for relay, sid, user in ((here, "bob1", "bob"), (there, "alice1", "alice")):
            relay.connect(sid, "e-" + sid, user)
            with pytest.raises(Deferred) as later:
                relay.join(sid, "lobby", None)
            assert (await later.value.task)["ok"]
        await wait_for(lambda: not here.bus.queued, timeout=5, what="writes sent")
        ghost = json.dumps({"sid": "gone1", "user": "carol", "node": here.node})
        await client.hset(members, "gone1", ghost)
        await client.hset("relay:conns", "gone1", f"{here.node} carol")
        await client.hset("relay:user:carol", "gone1", here.node)
        await client.sadd(f"relay:node:{here.node}:sids", "gone1")
        seen = len(there_transport.sent)

        await here._tidy()

        assert sorted(await client.hkeys(members)) == ["alice1", "bob1"]
        assert await client.hget("relay:conns", "gone1") is None
        assert await client.hlen("relay:user:carol") == 0
        assert await client.smembers(f"relay:node:{here.node}:sids") == {"bob1"}
        await wait_for(lambda: len(there_transport.sent) > seen, timeout=5, what="the leave")
        room, packet, _ = there_transport.sent[seen]
        assert room == "lobby" and '"action":"leave"' in packet and '"sid":"gone1"' in packet
        await here._tidy()  # (once: nothing more to take out, nothing more to say)
        assert sorted(await client.hkeys(members)) == ["alice1", "bob1"]
    finally:
        await client.aclose()
        await here.stop()
        await there.stop()
