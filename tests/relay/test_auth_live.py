"""Token authentication against a live relay started with a secret."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import socketio

from relay.core.auth import issue_token
from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread

SECRET = "a-secret-for-tests"


@pytest.fixture(scope="module")
def secured() -> Iterator[LiveRelay]:
    with serve_in_thread(Settings(secret=SECRET, api_key="test-key")) as live:
        yield live


async def refused(url: str, auth: Any) -> dict[str, Any]:
    """Connect with ``auth`` and return the connect_error data the server answered with."""
    client = socketio.AsyncClient(reconnection=False)
    errors: asyncio.Queue[Any] = asyncio.Queue()
    client.on("connect_error", errors.put)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
    error = await asyncio.wait_for(errors.get(), 5)
    await client.disconnect()
    assert isinstance(error, dict)
    return error


@pytest.mark.parametrize(
    "auth",
    [None, {"user": "alice"}, {"token": "garbage"}, {"token": issue_token("wrong", "alice")}],
)
async def test_connections_without_a_valid_token_are_unauthorized(
    secured: LiveRelay, auth: Any
) -> None:
    error = await refused(secured.url, auth)
    assert error["data"]["code"] == "unauthorized"
    assert error["data"]["message"]


async def test_token_user_and_room_patterns_are_enforced(secured: LiveRelay) -> None:
    token = issue_token(SECRET, "alice", rooms=["lobby", "team-42:*"])
    client = socketio.AsyncClient()
    got: asyncio.Queue[Any] = asyncio.Queue()
    client.on("message", got.put)
    await client.connect(secured.url, auth={"token": token}, transports=["websocket"])
    try:
        assert (await client.call("join", {"room": "team-42:general"}))["ok"] is True
        denied = await client.call("join", {"room": "team-43:general"})
        assert denied["ok"] is False and denied["error"]["code"] == "forbidden"
        denied = await client.call("publish", {"room": "elsewhere", "data": 1})
        assert denied["error"]["code"] == "forbidden"
        denied = await client.call("presence", {"room": "elsewhere"})
        assert denied["error"]["code"] == "forbidden"
        ack = await client.call("publish", {"room": "team-42:general", "data": "hi"})
        assert ack["ok"] is True
        env = await asyncio.wait_for(got.get(), 5)
        assert env["from"]["user"] == "alice" and env["offset"] == ack["offset"]
    finally:
        await client.disconnect()
