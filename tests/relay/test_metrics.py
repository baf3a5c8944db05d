"""GET /metrics: Prometheus text, read by prometheus_client's own parser, after known traffic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.limits import OFF, Rate
from relay.settings import Settings
from tests.conftest import serve_in_thread, wait_for
from tests.hooks.receiver import SECRET, receiving
from tests.relay.conftest import Peers, unique


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def made() -> AsyncIterator[list[Peers]]:
    out: list[Peers] = []
    yield out
    for p in out:
        await p.close()


async def test_metrics_after_known_traffic(made: list[Peers]) -> None:
    room = unique()
    with receiving() as receiver:
        settings = Settings(
            api_key="k",
            secret=None,
            publish_rate=OFF,
            api_rate=Rate(0.001, 1.0),  # one request, then 429
            webhook_url=receiver.url,
            webhook_secret=SECRET,
            shutdown_timeout=2.0,
        )
        with serve_in_thread(settings) as live:
            ws, poll = Peers(live.url, "websocket"), Peers(live.url, "polling")
            made.extend([ws, poll])
            a, b, c = await ws("alice"), await ws("bob"), await poll("carol")
            await a.ok("join", {"room": room})
            await b.ok("join", {"room": room})
            for i in range(3):
                await a.ok("publish", {"room": room, "data": i})
            await a.ok("direct", {"to": c.sid, "data": "hi"})
            auth = {"Authorization": "Bearer k"}
            async with httpx.AsyncClient(base_url=live.url) as http:
                url = f"/api/v1/rooms/{room}/events"
                first = await http.post(url, json={"data": 1}, headers=auth)
                second = await http.post(url, json={"data": 2}, headers=auth)
                assert (first.status_code, second.status_code) == (200, 429)
                await wait_for(lambda: len(receiver.named("join")) == 2, timeout=10)
                assert (await http.get("/metrics")).status_code == 401
                assert (
                    await http.get("/metrics", headers={"Authorization": "Bearer x"})
                ).status_code == 401
                answer = await http.get("/metrics", headers=auth)
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/plain; version=")
                health = (await http.get("/healthz")).json()
            parsed = samples(answer.text)
            assert value(parsed, "relay_connections", transport="websocket") == 2
            assert value(parsed, "relay_connections", transport="polling") == 1
            assert value(parsed, "relay_rooms") == 1
            assert value(parsed, "relay_messages_total", kind="room") == 4
            assert value(parsed, "relay_messages_total", kind="direct") == 1
            assert value(parsed, "relay_deliveries_total") == 3 * 2 + 2 + 1
            assert value(parsed, "relay_rate_limited_total", limit="api") == 1
            assert value(parsed, "relay_rate_limited_total", limit="connection") == 0
            assert value(parsed, "relay_slow_clients_dropped_total") == 0
            hooks = health["webhooks"]
            assert value(parsed, "relay_webhook_events_sent_total") == hooks["sent"] >= 5
            assert value(parsed, "relay_webhook_queue") == hooks["queued"]
            assert value(parsed, "relay_webhook_retries_total") == 0
            assert value(parsed, "relay_webhook_events_dropped_total", cause="queue_full") == 0


async def test_a_metrics_key_protects_metrics_alone() -> None:
    settings = Settings(api_key="api", metrics_key="scrape")
    with serve_in_thread(settings) as live:
        async with httpx.AsyncClient(base_url=live.url) as http:
            by_api_key = await http.get("/metrics", headers={"Authorization": "Bearer api"})
            by_metrics_key = await http.get("/metrics", headers={"Authorization": "Bearer scrape"})
    assert by_api_key.status_code == 401
    assert "RELAY_METRICS_KEY" in by_api_key.json()["error"]["message"]
    assert by_metrics_key.status_code == 200
    parsed = samples(by_metrics_key.text)
    assert value(parsed, "relay_connections", transport="websocket") == 0
    assert not any(name.startswith("relay_webhook") for name, _ in parsed)  # webhooks off
    assert not any(name.startswith("relay_redis") for name, _ in parsed)  # no cluster


async def test_open_metrics_without_any_key() -> None:
    with serve_in_thread(Settings()) as live:
        async with httpx.AsyncClient(base_url=live.url) as http:
            answer = await http.get("/metrics")
    assert answer.status_code == 200 and "relay_rooms" in answer.text


async def test_fanout_deliveries_by_kind_and_bytes_queued(made: list[Peers]) -> None:
    """The histogram counts each publish once (not per recipient), deliveries split by kind,
    and the bytes a long-poll has not fetched show as queued until it polls."""
    room = unique()
    with serve_in_thread(Settings(publish_rate=OFF)) as live:
        ws = Peers(live.url, "websocket")
        made.append(ws)
        members = [await ws(f"m{i}") for i in range(3)]
        for m in members:
            await m.ok("join", {"room": room})
        for i in range(4):
            await members[0].ok("publish", {"room": room, "data": i})
        await members[0].ok("direct", {"user": "m1", "data": "x"})
        await members[0].ok("direct", {"to": members[2].sid, "data": "y"})
        async with httpx.AsyncClient(base_url=live.url) as http:
            assert (await http.post(f"/api/v1/rooms/{room}/events", json={"data": 9})).is_success
            # a long-poll session that joins and then does not poll: its ack waits, queued
            opened = await http.get("/socket.io/?EIO=4&transport=polling")
            sid = opened.text.split('"sid":"', 1)[1].split('"', 1)[0]
            path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
            assert (await http.post(path, content="40")).text == "OK"
            assert (await http.get(path)).text.startswith("40")
            assert (await http.post(path, content='421["join",{"room":"q"}]')).text == "OK"
            queued = samples((await http.get("/metrics")).text)
            got = await http.get(path)
            assert got.text.startswith("431[")  # the ack that was queued
            drained = samples((await http.get("/metrics")).text)
    assert value(queued, "relay_bytes_queued", transport="polling") >= len(got.text)
    assert value(drained, "relay_bytes_queued", transport="polling") == 0
    assert value(drained, "relay_bytes_queued", transport="websocket") >= 0
    assert value(drained, "relay_deliveries_by_kind_total", kind="room") == 5 * 3
    assert value(drained, "relay_deliveries_by_kind_total", kind="direct") == 2
    assert value(drained, "relay_deliveries_total") == 5 * 3 + 2
    assert value(drained, "relay_fanout_seconds_count") == 5  # per publish, not per recipient
    assert 0 < value(drained, "relay_fanout_seconds_sum") < 5
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in drained.items()
        if name == "relay_fanout_seconds_bucket"
    )
    assert len(buckets) == 15 and buckets[-1] == (float("inf"), 5)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
