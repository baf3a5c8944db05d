"""The HTTP API's newer endpoints (batch, rooms, one connection, disconnect) and its OpenAPI
document, against a live relay and real Socket.IO clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio

from relay import apispec
from relay.limits import Rate
from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread


@pytest.fixture
async def http(live_relay: LiveRelay) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=10) as client:
        yield client


async def connected(
    url: str, user: str | None = None, transport: str = "websocket"
) -> tuple[socketio.AsyncClient, asyncio.Queue[tuple[str, Any]]]:
    client = socketio.AsyncClient(reconnection=False)
    got: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_any(event: str, data: Any) -> None:
        await got.put((event, data))

    client.on("*", on_any)
    await client.connect(url, auth={"user": user} if user else None, transports=[transport])
    return client, got


async def test_batch_answers_each_item_in_order(
    live_relay: LiveRelay, http: httpx.AsyncClient
) -> None:
    alice, alice_got = await connected(live_relay.url, user="batch-alice")
    bob, bob_got = await connected(live_relay.url)
    try:
        assert (await alice.call("join", {"room": "batch-room"}))["ok"]
        items = [
            {"room": "batch-room", "data": 1},
            {"room": "batch-room", "event": "score", "data": None},
            {"user": "batch-alice", "data": "hi"},
            {"to": bob.get_sid(), "data": "you"},
            {"room": "batch-room", "evnet": "typo", "data": 3},  # refused, named
            {"room": "batch-room", "user": "batch-alice", "data": 4},  # two targets
            {"room": "no spaces", "data": 5},
            {"to": "not-connected", "data": 6},
            "not an object",
        ]
        r = await http.post("/api/v1/batch", json={"items": items})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(items)
        assert [x["ok"] for x in results] == [
            True,
            True,
            True,
            True,
            False,
            False,
            False,
            True,
            False,
        ]
        assert results[0]["offset"] == 1 and results[1]["offset"] == 2
        assert results[2]["delivered"] == 1 and results[3]["delivered"] == 1
        assert results[7]["delivered"] == 0
        assert "'evnet'" in results[4]["error"]["message"]
        assert results[4]["error"]["code"] == "bad_request"
        assert "exactly one of" in results[5]["error"]["message"]
        assert "item 8" in results[8]["error"]["message"]
        # what alice got, in order: the two publishes, then her direct message
        seen = [await asyncio.wait_for(alice_got.get(), 5) for _ in range(3)]
        assert [(e, env["data"], env["offset"]) for e, env in seen] == [
            ("message", 1, 1),
            ("score", None, 2),
            ("message", "hi", None),
        ]
        event, env = await asyncio.wait_for(bob_got.get(), 5)
        assert (event, env["data"]) == ("message", "you")
        # the refused items published nothing: the room is still at offset 2
        ack = await alice.call("publish", {"room": "batch-room", "data": "after"})
        assert ack["offset"] == 3
    finally:
        await alice.disconnect()
        await bob.disconnect()


@pytest.mark.parametrize(
    "body,needle",
    [
        ({}, "needs 'items'"),
        ({"items": []}, "1 to 100"),
        ({"items": [{"room": "r", "data": 1}] * 101}, "1 to 100"),
        ({"items": {"room": "r"}}, "1 to 100"),
        ({"items": [], "extra": 1}, "unknown field 'extra'"),
        ([1, 2], "must be a JSON object"),
    ],
)
async def test_batch_refuses_a_bad_envelope_whole(
    http: httpx.AsyncClient, body: Any, needle: str
) -> None:
    r = await http.post("/api/v1/batch", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


async def test_a_batch_costs_its_items_in_api_tokens() -> None:
    """RELAY_API_RATE bounds messages, not requests: a batch of 10 with 5 tokens is refused,
    and changes nothing."""
    settings = Settings(api_rate=Rate(1.0, 5.0))
    with serve_in_thread(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            items = [{"room": "rated", "data": i} for i in range(10)]
            r = await http.post("/api/v1/batch", json={"items": items})
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
            r = await http.get("/api/v1/rooms/rated/history")
            assert r.json()["messages"] == []


async def test_unknown_body_field_is_named_and_publishes_nothing(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post("/api/v1/rooms/typo-room/events", json={"evnet": "x", "data": 1})
    assert r.status_code == 400
    assert "unknown field 'evnet'" in r.json()["error"]["message"]
    history = await http.get("/api/v1/rooms/typo-room/history")
    assert history.json()["messages"] == []


async def test_rooms_are_listed_with_member_counts_a_page_at_a_time() -> None:
    with serve_in_thread() as live:
        clients = []
        try:
            for i in range(5):
                client, _ = await connected(live.url)
                clients.append(client)
                for room in [f"list-{j}" for j in range(i + 1)]:  # list-0 has 5 members...
                    assert (await client.call("join", {"room": room}))["ok"]
            async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
                pages: list[dict[str, Any]] = []
                after = None
                while True:
                    params = {"limit": "2", **({"after": after} if after else {})}
                    body = (await http.get("/api/v1/rooms", params=params)).json()
                    pages.append(body)
                    after = body["next"]
                    if after is None:
                        break
                listed = [(x["room"], x["members"]) for page in pages for x in page["rooms"]]
                assert listed == [(f"list-{j}", 5 - j) for j in range(5)]
                assert [len(p["rooms"]) for p in pages] == [2, 2, 1]
                bad = await http.get("/api/v1/rooms", params={"limit": "0"})
                assert bad.status_code == 400 and "'limit'" in bad.json()["error"]["message"]
                bad = await http.get("/api/v1/rooms", params={"after": "no spaces"})
                assert bad.status_code == 400
        finally:
            for client in clients:
                await client.disconnect()
        # the rooms empty out: none listed
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            deadline = time.monotonic() + 10
            while (await http.get("/api/v1/rooms")).json()["rooms"]:
                assert time.monotonic() < deadline, "rooms still listed after everyone left"
                await asyncio.sleep(0.02)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_one_connection_is_described(
    live_relay: LiveRelay, http: httpx.AsyncClient, transport: str
) -> None:
    client, _ = await connected(live_relay.url, user="described", transport=transport)
    try:
        for room in ("desc-b", "desc-a"):
            assert (await client.call("join", {"room": room}))["ok"]
        r = await http.get(f"/api/v1/connections/{client.get_sid()}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sid"] == client.get_sid() and body["user"] == "described"
        assert body["rooms"] == ["desc-a", "desc-b"]
        assert body["transport"] == transport
        assert isinstance(body["connected_at"], int)
        assert abs(body["connected_at"] - time.time() * 1000) < 60_000
    finally:
        await client.disconnect()
    r = await http.get(f"/api/v1/connections/{client.get_sid()}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_delete_disconnects_one_connection_and_only_it(
    live_relay: LiveRelay, http: httpx.AsyncClient
) -> None:
    target, _ = await connected(live_relay.url)
    bystander, bystander_got = await connected(live_relay.url)
    gone = asyncio.Event()
    reasons: list[Any] = []

    @target.event
    async def disconnect(*args: Any) -> None:
        reasons.append(args)
        gone.set()

    try:
        for client in (target, bystander):
            assert (await client.call("join", {"room": "kick-room"}))["ok"]
        sid = target.get_sid()
        r = await http.delete(f"/api/v1/connections/{sid}")
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "sid": sid}
        await asyncio.wait_for(gone.wait(), 5)
        assert (
            reasons and reasons[0] and reasons[0][0] == "server disconnect"
        )  # (python-socketio names it so)
        # the room heard it leave (the bystander joined after it); the bystander is still served
        event, presence = await asyncio.wait_for(bystander_got.get(), 5)
        assert event == "presence" and presence["action"] == "leave"
        assert presence["member"]["sid"] == sid
        ack = await bystander.call("publish", {"room": "kick-room", "data": 1})
        assert ack["ok"] is True
        again = await http.delete(f"/api/v1/connections/{sid}")
        assert again.status_code == 404
    finally:
        if target.connected:
            await target.disconnect()
        await bystander.disconnect()


async def test_the_openapi_document_describes_what_is_served(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    # every route of the contract, and the newer ones
    expected = {
        ("post", "/api/v1/rooms/{room}/events"),
        ("post", "/api/v1/users/{user}/events"),
        ("post", "/api/v1/connections/{sid}/events"),
        ("get", "/api/v1/rooms/{room}/members"),
        ("get", "/api/v1/rooms/{room}/history"),
        ("post", "/api/v1/batch"),
        ("get", "/api/v1/rooms"),
        ("get", "/api/v1/connections/{sid}"),
        ("delete", "/api/v1/connections/{sid}"),
    }
    listed = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert listed == expected
    # the bodies are the ones the handlers check with: no field outside the document
    body = doc["paths"]["/api/v1/rooms/{room}/events"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {f.name for f in apispec.EVENT_BODY.fields}
    assert schema["required"] == ["data"]


async def test_the_openapi_document_needs_no_key_but_the_api_does() -> None:
    settings = Settings(secret="s" * 32, api_key="k" * 32)
    with serve_in_thread(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            assert (await http.get("/api/v1/openapi.json")).status_code == 200
            for method, path in [("GET", "/api/v1/rooms"), ("DELETE", "/api/v1/connections/x")]:
                r = await http.request(method, path)
                assert r.status_code == 401, (method, path, r.text)
            r = await http.get("/api/v1/rooms", headers={"authorization": "Bearer " + "k" * 32})
            assert r.status_code == 200
