"""The generator's loss, duplicate and order counts match what a faulty server did, exactly."""

from __future__ import annotations

import pytest

from relay.loadtest.report import build
from relay.loadtest.scenario import Scenario
from relay.loadtest.workers import Orchestrator
from tests.loadtest.faulty_server import Faults, serve_faulty


@pytest.mark.parametrize(
    ("mode", "clients", "workers", "publishers", "faults"),
    [
        ("broadcast", 24, 2, 3, Faults(drop_every=7, dup_every=5, hold_every=11)),
        ("unicast", 8, 2, 1, Faults(drop_every=5, dup_every=3, hold_every=4)),
    ],
    ids=["broadcast", "unicast"],
)
def test_counts_match_the_faults_exactly(
    mode: str, clients: int, workers: int, publishers: int, faults: Faults
) -> None:
    with serve_faulty(faults) as url:
        scn = Scenario(
            url=url, clients=clients, rooms=3, publishers=publishers, mode=mode, rate=60,
            duration=1.5, workers=workers, drain=3.0, max_time=60,
        ).validate()  # fmt: skip
        report = build(scn, Orchestrator(scn).execute())
    assert report["connected"] == clients
    assert report["published"] == faults.publishes == 90
    assert faults.dropped > 0 and faults.duplicated > 0 and faults.reordered > 0
    assert report["late"] == 0
    assert report["lost"] == faults.lost
    assert report["duplicates"] == faults.duplicated
    assert report["out_of_order"] == faults.reordered
    assert report["received"] == sum(faults.delivered.values()) - faults.lost + faults.duplicated
    assert report["slo"]["passed"]
