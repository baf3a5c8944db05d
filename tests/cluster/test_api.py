"""The HTTP API of a cluster behaves as one relay's: rooms with their members counted on every
node, and a connection looked at or ended from any node, in the shapes the OpenAPI document
declares."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jsonschema_rs

from relay import __version__, apispec
from tests.cluster.conftest import Nodes
from tests.conftest import poll
from tests.relay.conftest import Peers, unique

DOCUMENT = apispec.openapi(__version__)


def conforms(response: httpx.Response, path: str, method: str = "get") -> Any:
    """``response``'s body, checked against the document's schema for its status."""
    declared = DOCUMENT["paths"][path][method]["responses"][str(response.status_code)]
    schema = declared["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"]["Error"]
    body = response.json()
    jsonschema_rs.validate(schema, body)
    return body


async def test_rooms_and_connections_are_cluster_wide(nodes: Nodes, clients: Peers) -> None:
    a, b = nodes.start(), nodes.start()
    r1, r2, r3 = sorted(unique() for _ in range(3))
    alice = await clients(url=a.url, user="alice")
    bob = await clients(url=b.url, user="bob")
    carol = await clients(url=b.url, transports=["polling"])
    for room in (r1, r2):
        await alice.ok("join", {"room": room})
    for room in (r2, r3):
        await bob.ok("join", {"room": room})
    await carol.ok("join", {"room": r2})
    await alice.ok("publish", {"room": unique(), "data": "no members: not listed"})
    rooms = "/api/v1/rooms"
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as on_a:
        r = await on_a.get(rooms)
        assert r.status_code == 200
        assert conforms(r, rooms) == {
            "rooms": [
                {"room": r1, "members": 1},
                {"room": r2, "members": 3},
                {"room": r3, "members": 1},
            ],
            "next": None,
        }
        r = await on_a.get(rooms, params={"limit": 2})
        assert conforms(r, rooms) == {
            "rooms": [{"room": r1, "members": 1}, {"room": r2, "members": 3}],
            "next": r2,
        }
        r = await on_a.get(rooms, params={"limit": 2, "after": r2})
        assert conforms(r, rooms) == {"rooms": [{"room": r3, "members": 1}], "next": None}

        one = "/api/v1/connections/{sid}"
        r = await on_a.get(f"/api/v1/connections/{bob.sid}")  # (held by node b)
        assert r.status_code == 200, r.text
        got = conforms(r, one)
        assert {k: got[k] for k in ("sid", "user", "rooms", "transport")} == {
            "sid": bob.sid,
            "user": "bob",
            "rooms": [r2, r3],
            "transport": "websocket",
        }
        r = await on_a.get(f"/api/v1/connections/{carol.sid}")
        assert conforms(r, one)["transport"] == "polling" and r.json()["user"] is None
        r = await on_a.get(f"/api/v1/connections/{alice.sid}")  # (this node's own)
        assert conforms(r, one)["rooms"] == [r1, r2]
        r = await on_a.get("/api/v1/connections/nobody-here")
        assert r.status_code == 404 and conforms(r, one)["error"]["code"] == "not_found"

        bob_sid = bob.sid
        r = await on_a.delete(f"/api/v1/connections/{bob_sid}")
        assert r.status_code == 200, r.text
        assert conforms(r, one, "delete") == {"ok": True, "sid": bob_sid}
        r = await on_a.get(f"/api/v1/connections/{bob_sid}")  # (answered once it was done)
        assert r.status_code == 404
        await asyncio.wait_for(bob.disconnected.wait(), 5)
        r = await on_a.delete(f"/api/v1/connections/{bob_sid}")
        assert r.status_code == 404 and conforms(r, one, "delete")["error"]["code"] == "not_found"
        r = await on_a.get(rooms)
        assert conforms(r, rooms)["rooms"] == [
            {"room": r1, "members": 1},
            {"room": r2, "members": 2},
        ]

        nodes.redis.stop()

        async def unavailable() -> httpx.Response | None:
            r = await on_a.get(rooms)
            return r if r.status_code == 503 else None

        r = await poll(unavailable, 10, "rooms unavailable with Redis stopped")
        assert conforms(r, rooms)["error"]["code"] == "unavailable"
        r = await on_a.get(f"/api/v1/connections/{carol.sid}")
        assert r.status_code == 503 and conforms(r, one)["error"]["code"] == "unavailable"
        r = await on_a.delete(f"/api/v1/connections/{carol.sid}")
        assert r.status_code == 503 and conforms(r, one, "delete")["error"]["code"] == "unavailable"
        r = await on_a.get(f"/api/v1/connections/{alice.sid}")  # (its own: no Redis needed)
        assert r.status_code == 200
    assert not carol.disconnected.is_set()
