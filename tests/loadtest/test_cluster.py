"""``--url`` repeated: clients spread over the nodes, per-node figures beside the totals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.loadtest.scenario import Scenario, node_of
from tests.conftest import RelayProcess, start_relay_process
from tests.loadtest.test_cli import loadtest


@pytest.fixture
def two_relays() -> Iterator[tuple[RelayProcess, RelayProcess]]:
    first = start_relay_process()
    try:
        second = start_relay_process()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def test_two_nodes_get_half_the_clients_each_and_their_figures_sum_to_the_totals(
    two_relays: tuple[RelayProcess, RelayProcess],
) -> None:
    """Two independent relays (no fan-out between them): each room has 5 of its 10 members on
    each node, so every publish reaches exactly the 5 on its publisher's node, and the other 5
    count as lost: the report must say so per node and in total."""
    a, b = two_relays
    p = loadtest("--url", a.url, "--url", b.url, "--clients", "40", "--rooms", "4",
                 "--publishers", "8", "--rate", "40", "--duration", "1", "--workers", "2",
                 "--drain", "1", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    nodes = r["nodes"]
    assert [n["url"] for n in nodes] == r["urls"] == [a.url, b.url]
    assert [(n["clients"], n["connected"], n["connect_errors"]) for n in nodes] == [(20, 20, 0)] * 2
    assert r["connected"] == 40 and r["acked"] == r["published"] == 40
    for key in ("connected", "published", "acked", "rejected", "received"):
        assert sum(n[key] for n in nodes) == r[key], key
    for n in nodes:
        assert n["published"] == 20  # publishers 0..7 alternate between the nodes
        assert n["received"] == 5 * n["acked"]
        assert n["latency_ms"]["p50"] is not None and n["deliveries_per_s"] > 0
    assert r["expected"] == 10 * r["acked"] and r["lost"] == r["received"]
    assert (r["out_of_order"], r["offset_gaps"], r["duplicates"]) == (0, 0, 0)


def test_one_url_reports_one_node_equal_to_the_totals(live_relay: Any) -> None:
    p = loadtest("--url", live_relay.url, "--clients", "10", "--rooms", "2", "--rate", "10",
                 "--duration", "1", "--workers", "1", "--drain", "3", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    (node,) = r["nodes"]
    for key in ("clients", "connected", "published", "received", "latency_ms"):
        assert node[key] == r[key]
    assert r["received"] == r["expected"] == 50


def test_nodes_are_round_robin_along_the_clients_and_within_each_room() -> None:
    assert [node_of(i, 10, 2) for i in range(6)] == [0, 1, 0, 1, 0, 1]  # publishers alternate
    assert [node_of(r + 2 * k, 2, 2) for r in (0, 1) for k in range(4)] == [0, 1, 0, 1, 1, 0, 1, 0]
    assert [node_of(i, 3, 3) for i in range(0, 9, 3)] == [0, 1, 2]  # room 0 spans the 3 nodes
    counts = [0, 0, 0]
    for i in range(100):
        counts[node_of(i, 7, 3)] += 1
    assert max(counts) - min(counts) <= 1


def test_urls_come_from_repeated_flags_a_toml_list_or_one_url(tmp_path: Path) -> None:
    scn = Scenario.load(None, {"url": ("h:1", "h:2")})
    assert (scn.url, scn.urls) == ("http://h:1", ("http://h:1", "http://h:2"))
    toml = tmp_path / "s.toml"
    toml.write_text('url = ["h:3", "ws://h:4"]\n')
    scn = Scenario.load(toml, {})
    assert scn.urls == ("http://h:3", "http://h:4")
    assert Scenario.load(toml, {"url": ("h:5",)}).urls == ("http://h:5",)  # flags replace it
    assert Scenario(url="h:6").validate().urls == ("http://h:6",)
    with pytest.raises(ValueError, match="given twice"):
        Scenario.load(None, {"url": ("h:1", "http://h:1")})
