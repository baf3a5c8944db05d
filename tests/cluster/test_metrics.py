"""A cluster node's Redis state in /metrics, read by prometheus_client's own parser."""

from __future__ import annotations

import signal

import httpx
import redis

from tests.cluster.conftest import Nodes
from tests.conftest import poll
from tests.relay.conftest import Peers, unique
from tests.relay.test_metrics import samples, value

Parsed = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> Parsed:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


async def test_redis_state_in_metrics_after_traffic_a_gap_a_redis_stop_and_a_dead_node(
    nodes: Nodes, clients: Peers
) -> None:
    a, b = nodes.start(RELAY_NODE_TIMEOUT="1"), nodes.start(RELAY_NODE_TIMEOUT="1")
    rooms = [unique(), unique()]
    alice = await clients(url=a.url)
    bob = await clients(url=b.url)
    for room in rooms:
        await alice.ok("join", {"room": room})
    await bob.ok("join", {"room": rooms[0]})
    parsed = await scrape(a.url)
    assert value(parsed, "relay_redis_up") == 1
    assert value(parsed, "relay_redis_rooms_followed") == 2
    assert value(parsed, "relay_redis_reconnects_total") == 0
    assert value(parsed, "relay_redis_gap_filled_total") == 0
    assert value(parsed, "relay_redis_nodes_reaped_total") == 0
    assert value(parsed, "relay_redis_queued") >= 0
    await alice.ok("leave", {"room": rooms[1]})
    assert value(await scrape(a.url), "relay_redis_rooms_followed") == 1

    # node a's subscription is cut while b publishes: a fills the gap from the stream
    admin = redis.Redis.from_url(nodes.redis.url)
    published = 0
    try:

        async def filled() -> bool:
            nonlocal published
            admin.client_kill_filter(_type="pubsub")
            for _ in range(20):
                published += 1
                await bob.ok("publish", {"room": rooms[0], "data": published})
            return value(await scrape(a.url), "relay_redis_gap_filled_total") > 0

        await poll(filled, 20, "a gap filled from the stream")
    finally:
        admin.close()
    assert await alice.offsets(published, timeout=10) == list(range(1, published + 1))
    reconnects = value(await scrape(a.url), "relay_redis_reconnects_total")
    assert reconnects >= 1

    nodes.redis.stop()

    async def down() -> bool:
        return value(await scrape(a.url), "relay_redis_up") == 0

    await poll(down, 10, "relay_redis_up 0 with Redis stopped")
    nodes.redis.start()

    async def up() -> bool:
        return all([value(await scrape(n.url), "relay_redis_up") == 1 for n in (a, b)])

    await poll(up, 10, "relay_redis_up 1 again on both nodes")
    assert value(await scrape(a.url), "relay_redis_reconnects_total") > reconnects

    b.stop(signal.SIGKILL)  # (it wrote its state back when Redis came back: a reaps it)

    async def reaped() -> bool:
        return value(await scrape(a.url), "relay_redis_nodes_reaped_total") == 1

    await poll(reaped, 10, "node b reaped")
    assert value(await scrape(a.url), "relay_redis_heartbeats_total") > 0
