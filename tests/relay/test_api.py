"""The HTTP API against a live relay, checked from real Socket.IO clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio

from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread


@pytest.fixture
async def http(live_relay: LiveRelay) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=10) as client:
        yield client


async def member(
    url: str, room: str | None = None, user: str | None = None
) -> tuple[socketio.AsyncClient, asyncio.Queue[tuple[str, Any]]]:
    client = socketio.AsyncClient()
    got: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_any(event: str, data: Any) -> None:
        await got.put((event, data))

    client.on("*", on_any)
    await client.connect(url, auth={"user": user} if user else None, transports=["websocket"])
    if room:
        ack = await client.call("join", {"room": room})
        assert ack["ok"] is True
    return client, got


async def test_room_event_reaches_members_with_shared_offsets(
    live_relay: LiveRelay, http: httpx.AsyncClient
) -> None:
    client, got = await member(live_relay.url, "api-room")
    try:
        r = await http.post("/api/v1/rooms/api-room/events", json={"data": {"n": 1}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["offset"] == 1 and isinstance(body["id"], str)
        event, env = await asyncio.wait_for(got.get(), 5)
        assert event == "message"
        assert env["id"] == body["id"] and env["offset"] == 1
        assert env["from"] == {"sid": None, "user": None}
        assert env["room"] == "api-room" and env["data"] == {"n": 1}
        ack = await client.call("publish", {"room": "api-room", "data": 2})
        assert ack["offset"] == 2
        r = await http.post(
            "/api/v1/rooms/api-room/events", json={"event": "score", "data": [1, 2]}
        )
        assert r.json()["offset"] == 3
        _, second = await asyncio.wait_for(got.get(), 5)
        assert second["offset"] == 2
        event, third = await asyncio.wait_for(got.get(), 5)
        assert event == "score" and third["data"] == [1, 2]
    finally:
        await client.disconnect()


async def test_user_and_connection_events(live_relay: LiveRelay, http: httpx.AsyncClient) -> None:
    a1, got1 = await member(live_relay.url, user="api-ann")
    a2, got2 = await member(live_relay.url, user="api-ann")
    try:
        r = await http.post("/api/v1/users/api-ann/events", json={"data": "hi"})
        assert r.status_code == 200 and r.json()["delivered"] == 2
        for got in (got1, got2):
            _, env = await asyncio.wait_for(got.get(), 5)
            assert env["room"] is None and env["offset"] is None and env["data"] == "hi"
        sid = a1.get_sid()
        r = await http.post(f"/api/v1/connections/{sid}/events", json={"data": "only-a1"})
        assert r.json()["delivered"] == 1
        _, env = await asyncio.wait_for(got1.get(), 5)
        assert env["data"] == "only-a1"
        r = await http.post("/api/v1/users/nobody-here/events", json={"data": 1})
        assert r.status_code == 200 and r.json()["delivered"] == 0
        r = await http.post("/api/v1/connections/no-such-sid/events", json={"data": 1})
        assert r.status_code == 200 and r.json()["delivered"] == 0
        assert got2.empty()
    finally:
        await a1.disconnect()
        await a2.disconnect()


async def test_members_and_history_paging(live_relay: LiveRelay, http: httpx.AsyncClient) -> None:
    client, _ = await member(live_relay.url, "api-hist", user="pager")
    try:
        for i in range(5):
            r = await http.post("/api/v1/rooms/api-hist/events", json={"data": i})
            assert r.status_code == 200
        r = await http.get("/api/v1/rooms/api-hist/members")
        assert r.json() == {
            "room": "api-hist",
            "members": [{"sid": client.get_sid(), "user": "pager"}],
        }
        page = (await http.get("/api/v1/rooms/api-hist/history", params={"limit": 2})).json()
        assert [m["offset"] for m in page["messages"]] == [1, 2]
        page = (
            await http.get("/api/v1/rooms/api-hist/history", params={"since": 2, "limit": 2})
        ).json()
        assert [m["data"] for m in page["messages"]] == [2, 3]
        empty = (await http.get("/api/v1/rooms/never-used/history")).json()
        assert empty == {"room": "never-used", "messages": []}
        nobody = (await http.get("/api/v1/rooms/never-used/members")).json()
        assert nobody == {"room": "never-used", "members": []}
    finally:
        await client.disconnect()


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/api/v1/rooms/bad%20room/events", {"json": {"data": 1}}, 400, "bad_request"),
        ("POST", "/api/v1/rooms/r/events", {"json": {"event": "x"}}, 400, "bad_request"),
        ("POST", "/api/v1/rooms/r/events", {"content": b"{nope", "headers": JSON}, 400,
         "bad_request"),
        ("POST", "/api/v1/rooms/r/events", {"json": [1]}, 400, "bad_request"),
        ("POST", "/api/v1/rooms/r/events", {"json": {"event": "join", "data": 1}}, 400,
         "bad_request"),
        ("POST", "/api/v1/rooms/r/events", {"json": {"data": "x" * 70_000}}, 413, "too_large"),
        ("POST", "/api/v1/rooms/r/events", {"content": b"[" * 2_000_000, "headers": JSON}, 413,
         "too_large"),
        ("POST", "/api/v1/rooms/r/events", {"json": {"evnet": "x", "data": 1}}, 400,
         "bad_request"),
        ("POST", "/api/v1/rooms/r/events", {"content": b'{"data": 1}'}, 415, "bad_request"),
        ("POST", "/api/v1/rooms/r/events",
         {"content": b'{"data": 1}', "headers": {"content-type": "text/plain"}}, 415,
         "bad_request"),
        ("GET", "/api/v1/rooms/r/history?limit=5000", {}, 400, "bad_request"),
        ("GET", "/api/v1/rooms/r/history?since=abc", {}, 400, "bad_request"),
    ],
)  # fmt: skip
async def test_errors_follow_the_contract(
    http: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    r = await http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


async def test_api_key_is_required_when_configured() -> None:
    with serve_in_thread(Settings(api_key="s3cret")) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            r = await http.post("/api/v1/rooms/k/events", json={"data": 1})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            r = await http.post(
                "/api/v1/rooms/k/events",
                json={"data": 1},
                headers={"Authorization": "Bearer wrong"},
            )
            assert r.status_code == 401
            r = await http.post(
                "/api/v1/rooms/k/events",
                json={"data": 1},
                headers={"Authorization": "Bearer s3cret"},
            )
            assert r.status_code == 200 and r.json()["offset"] == 1
