"""Connection state recovery with Node's official socket.io-client 4.8 (``socket.recovered``).

``node tests/js/recovery.mjs URL TRANSPORT SCENARIO`` drops a client's transport (no Socket.IO
goodbye), has another client publish and send it direct messages meanwhile, reconnects it and
prints what it saw; the assertions live here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveRelay
from tests.e2e.test_js_client import (  # noqa: F401  (node: the fixture)
    JS_DIR,
    TRANSPORTS,
    node,
    run_scenario,
)

SCRIPT = JS_DIR / "recovery.mjs"


def run(node: str, url: str, transport: str, scenario: str) -> dict[str, Any]:  # noqa: F811
    return run_scenario(node, url, transport, scenario, script=SCRIPT)


MISSED = [
    {"event": "message", "data": {"n": 1}, "offset": 1},
    {"event": "dm", "data": {"n": 2}, "offset": None},
    {"event": "chat", "data": {"n": 3}, "offset": 2},
    {"event": "message", "data": {"n": 4}, "offset": None},
    {"event": "message", "data": {"n": 5}, "offset": 3},
]
LIVE = {"event": "message", "data": {"n": 6}, "offset": 4}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dropped_client_recovers_sid_rooms_and_missed_messages(
    node: str,  # noqa: F811
    live_relay: LiveRelay,
    transport: str,
) -> None:
    r = run(node, live_relay.url, transport, "manual")
    sid, room = r["sid"], r["room"]
    assert r["first"] == {"lifecycle": "connect", "sid": sid, "recovered": False}
    assert r["dropped"]["reason"] in ("transport close", "forced close")
    # while away, directs to its sid and its user reached no live connection (they wait)
    assert [a["delivered"] for a in r["acks"] if "delivered" in a] == [0, 0]
    assert r["again"] == {"lifecycle": "connect", "sid": sid, "recovered": True}
    # the missed messages, once each, in the order they were sent, after the CONNECT answer
    assert r["received"] == [*MISSED, LIVE]
    assert r["connectIndex"] < r["firstMessageIndex"]
    # others heard it leave when it dropped and come back when it recovered
    rejoined = r["rejoined"]
    assert (rejoined["room"], rejoined["action"], rejoined["member"]["sid"]) == (room, "join", sid)
    assert sid in [m["sid"] for m in r["presence"]["members"]]
    # an explicit disconnect is a goodbye: the next connect is a new connection
    assert r["fresh"]["recovered"] is False and r["fresh"]["sid"] != sid
    assert sid not in [m["sid"] for m in r["freshPresence"]["members"]]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_automatic_reconnection_recovers(
    node: str,  # noqa: F811
    live_relay: LiveRelay,
    transport: str,
) -> None:
    r = run(node, live_relay.url, transport, "auto")
    assert r["again"] == {"lifecycle": "connect", "sid": r["sid"], "recovered": True}
    # whether each message was collected while away or delivered live, it came once, in order
    assert r["received"] == [*MISSED, LIVE]
