"""The generator's loss, duplicate and order counts match what a faulty server did, exactly."""

from __future__ import annotations

from typing import Any

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
    # one publisher a room: the streams saw every swap, so the offsets count none again
    assert report["out_of_order_by_offset"] == 0
    assert report["received"] == sum(faults.delivered.values()) - faults.lost + faults.duplicated
    assert report["slo"]["passed"]


def run_against(faults: Faults, **options: Any) -> dict[str, Any]:
    with serve_faulty(faults) as url:
        scn = Scenario(url=url, drain=3.0, max_time=60, **options).validate()
        return build(scn, Orchestrator(scn).execute())


def test_swaps_between_publishers_are_counted_by_room_offset() -> None:
    """Each publisher sends one message, so every stream is in order: only the room's offsets
    show that 1 delivery in 37 was swapped with the receiver's next one."""
    faults = Faults(drop_every=0, dup_every=0, hold_every=0, swap_every=37, ack_offsets=True)
    report = run_against(
        faults, clients=60, rooms=2, publishers=60, rate=60, duration=1.0, workers=2
    )
    assert report["published"] == faults.publishes == 60  # one message per publisher
    assert faults.deliveries == 60 * 30 and faults.reordered >= 40
    assert report["out_of_order"] == report["out_of_order_by_offset"] == faults.reordered
    # a delivery held at a receiver's very end never came: lost, and behind its last offset
    assert report["lost"] == len(faults.held)
    assert report["received"] == faults.deliveries - len(faults.held)
    assert (report["duplicates"], report["offset_gaps"], report["epoch_changes"]) == (0, 0, 0)


def test_offsets_starting_again_are_an_epoch_change_not_disorder() -> None:
    """The server forgets its rooms after 10 publishes each: every receiver sees its room's
    offsets drop to 1 (under a new epoch) once, and nothing is out of order or missing."""
    faults = Faults(drop_every=0, dup_every=0, hold_every=0, restart_after=10, ack_offsets=True)
    report = run_against(
        faults, clients=20, rooms=2, publishers=4, rate=40, duration=1.0, workers=2
    )
    assert faults.restarts == 2 and faults.saw_restart == 20
    assert report["epoch_changes"] == 20
    assert (report["out_of_order"], report["offset_gaps"], report["lost"]) == (0, 0, 0)
    assert report["received"] == report["expected"] == 40 * 10
