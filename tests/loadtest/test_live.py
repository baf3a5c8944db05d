"""Against a live relay: every mode and both transports count every delivery; workers merge."""

from __future__ import annotations

import time
from typing import Any

import pytest

from relay.loadtest.report import build
from relay.loadtest.scenario import Scenario
from relay.loadtest.workers import Orchestrator

REPORT_KEYS = {
    "clients", "connected", "connect_errors", "mode", "transport", "duration_s", "published",
    "acked", "expected", "received", "lost", "duplicates", "out_of_order", "deliveries_per_s",
    "latency_ms", "connect_ms", "loadgen_cpu_percent", "samples",
}  # fmt: skip


def run(url: str, **options: Any) -> dict[str, Any]:
    scn = Scenario(url=url, drain=5.0, max_time=60, **options).validate()
    return build(scn, Orchestrator(scn).execute())


@pytest.mark.parametrize(
    ("mode", "transport", "clients", "workers"),
    [
        ("broadcast", "websocket", 120, 2),
        ("unicast", "websocket", 60, 1),
        ("mixed", "websocket", 60, 2),
        ("broadcast", "polling", 32, 1),
        ("unicast", "polling", 20, 1),
    ],
)
def test_every_delivery_arrives_once_in_order(
    live_relay: Any, mode: str, transport: str, clients: int, workers: int
) -> None:
    r = run(
        live_relay.url, mode=mode, transport=transport, clients=clients, workers=workers,
        rooms=4, rate=40, duration=1.0,
    )  # fmt: skip
    assert set(r) >= REPORT_KEYS
    assert (r["connected"], r["connect_errors"]) == (clients, 0), r["connect_error_samples"]
    assert (r["published"], r["acked"]) == (40, 40), (r["ack_errors"], r["stop_reason"])
    per_publish = {"broadcast": clients // 4, "unicast": 1}
    if mode == "mixed":
        assert r["expected"] == 20 * (clients // 4) + 20
    else:
        assert r["expected"] == 40 * per_publish[mode]
    assert r["received"] == r["expected"]
    assert (r["lost"], r["duplicates"], r["out_of_order"], r["late"]) == (0, 0, 0, 0)
    assert r["latency_ms"]["p50"] is not None and r["latency_ms"]["max"] >= r["latency_ms"]["p99"]
    assert r["connect_ms"]["p50"] is not None


def test_two_workers_merge_histograms_exactly(live_relay: Any) -> None:
    """The merged latency histogram counts each delivery once; connect times once per client."""
    scn = Scenario(
        url=live_relay.url, clients=40, rooms=2, rate=30, duration=1.0, workers=2, drain=5,
        max_time=60,
    ).validate()  # fmt: skip
    raw = Orchestrator(scn).execute()
    report = build(scn, raw)
    assert report["received"] == report["expected"] == 30 * 20
    assert raw["latency"].get_total_count() == report["received"]
    assert raw["connect"]["connect_hist"].get_total_count() == 40
    assert sum(p.latency.get_total_count() for p in raw["phases"]) == report["received"]


def test_clients_leave_instead_of_dropping(live_relay: Any) -> None:
    """When a run ends, every swarm client says goodbye (Socket.IO DISCONNECT) before its
    worker exits: the relay holds none of them for connection state recovery."""
    import httpx

    r = run(live_relay.url, clients=300, rooms=3, rate=30, duration=0.5, workers=2)
    assert r["connected"] == 300
    deadline = time.monotonic() + 20
    while True:
        health = httpx.get(f"{live_relay.url}/healthz", timeout=5).json()
        if health["connections"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert health["connections"] == 0
    assert health["recoverable"] == 0
