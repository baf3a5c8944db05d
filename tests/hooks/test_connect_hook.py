"""The connect hook, against a real relay and a real backend that checks every signature."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio

from relay.core.auth import issue_token
from relay.errors import ConfigError
from relay.limits import OFF
from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread, wait_for
from tests.hooks.backend import Answer, Backend, allow, backend
from tests.hooks.receiver import SECRET, verify
from tests.relay.conftest import TIMEOUT, Peers, close_client, unique


def hooked(back: Backend, **changes: Any) -> Settings:
    return Settings(
        connect_hook_url=back.url,
        connect_hook_secret=SECRET,
        connect_hook_headers=("x-tenant", "cookie"),
        publish_rate=OFF,
        join_rate=OFF,
    ).replace(**changes)


@pytest.fixture
async def made() -> AsyncIterator[list[Peers]]:
    out: list[Peers] = []
    yield out
    for p in out:
        await p.close()


async def refused(
    live: LiveRelay, auth: Any, transport: str = "websocket"
) -> tuple[dict[str, Any], float]:
    """Connect with ``auth``; the error the server's connect_error carried (the contract's
    ``{"code", "message"}``), and how long the answer took."""
    client = socketio.AsyncClient(reconnection=False)
    errors: asyncio.Queue[Any] = asyncio.Queue()
    client.on("connect_error", errors.put)
    started = time.monotonic()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(live.url, auth=auth, transports=[transport], wait_timeout=8)
        error = await asyncio.wait_for(errors.get(), TIMEOUT)
    finally:
        await close_client(client)
    assert isinstance(error, dict) and isinstance(error["data"], dict), error
    assert error["message"] == error["data"]["message"]
    return error["data"], time.monotonic() - started


async def health(live: LiveRelay) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(live.url + "/healthz")).json()
    return body["connect_hook"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_allow_names_the_user_and_scopes_the_rooms(made: list[Peers], transport: str) -> None:
    team = unique("team")
    with (
        backend(lambda req: allow("alice", [f"{team}:*"])) as back,
        serve_in_thread(hooked(back)) as live,
    ):
        peers = Peers(live.url, transport)
        made.append(peers)
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(
            live.url,
            auth={"session": "s-123", "user": "mallory"},  # (open mode's user counts for nothing)
            headers={"X-Tenant": "acme", "X-Other": "not passed"},
            transports=[transport],
            wait_timeout=TIMEOUT,
        )
        try:
            ack = await sio.call("join", {"room": f"{team}:general"}, timeout=TIMEOUT)
            assert ack["ok"] is True, ack
            members = await sio.call("presence", {"room": f"{team}:general"}, timeout=TIMEOUT)
            assert members["members"] == [{"sid": sio.get_sid(), "user": "alice"}]
            outside = await sio.call("join", {"room": "lobby"}, timeout=TIMEOUT)
            assert outside["ok"] is False and outside["error"]["code"] == "forbidden"
        finally:
            await close_client(sio)
        (seen,) = back.seen()
        assert verify(SECRET, seen.headers, seen.body)  # the test's own verifier
        assert seen.headers["Content-Type"] == "application/json"
        body = seen.json
        assert body["auth"] == {"session": "s-123", "user": "mallory"}
        assert body["headers"] == {"x-tenant": "acme"}  # named and sent; cookie was not sent
        assert body["ip"] == "127.0.0.1"
        assert abs(body["ts"] - time.time() * 1000) < 30_000
        assert (await health(live))["allowed"] == 1


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        ((200, b'{"allow": false, "reason": "banned"}'), "unauthorized", "banned"),
        (
            (200, b'{"allow": false, "reason": "no seat", "code": "forbidden"}'),
            "forbidden",
            "no seat",
        ),
        ((200, b'{"allow": false}'), "unauthorized", "refused by the backend"),
    ],
)
async def test_deny_refuses_with_the_code_and_reason(
    answer: Answer, code: str, message: str
) -> None:
    with backend(lambda req: answer) as back, serve_in_thread(hooked(back)) as live:
        error, _ = await refused(live, {"token": "x"})
        assert error == {"code": code, "message": message}
        assert (await health(live))["denied"] == 1


@pytest.mark.parametrize(
    "answer",
    [
        (500, b'{"allow": true}'),
        (503, b""),
        (404, b'{"allow": true}'),
        (200, b"<html>not json</html>"),
        (200, b'{"allowed": true}'),
        (200, b'{"allow": "yes"}'),
        (200, b'{"allow": true, "user": "no spaces allowed"}'),
        (200, b'{"allow": true, "rooms": "lobby"}'),
        (200, json.dumps({"allow": True, "rooms": ["r"] * 101}).encode()),
        (200, b'{"allow": false, "code": "teapot"}'),
    ],
    ids=lambda a: f"{a[0]}-{a[1][:24]!r}",
)
async def test_a_failing_backend_refuses_unavailable(answer: Answer) -> None:
    with backend(lambda req: answer) as back, serve_in_thread(hooked(back)) as live:
        error, _ = await refused(live, None)
        assert error["code"] == "unavailable", error
        assert (await health(live))["failed"] == 1


async def test_a_hanging_backend_refuses_unavailable_and_blocks_nobody(made: list[Peers]) -> None:
    def decide(req: dict[str, Any]) -> Answer:
        return "hang" if req["auth"].get("hang") else allow(req["auth"].get("name"))

    with backend(decide) as back, serve_in_thread(hooked(back, connect_hook_timeout=2.0)) as live:
        peers = Peers(live.url, "websocket")
        made.append(peers)
        alice = await peers(auth={"name": "alice"})
        bob = await peers(auth={"name": "bob"})
        room = unique()
        await bob.ok("join", {"room": room})
        waiting = asyncio.create_task(refused(live, {"hang": True}))
        await wait_for(lambda: len(back.seen()) == 3, timeout=TIMEOUT)  # it is being asked
        for i in range(20):  # meanwhile, others publish and receive as ever
            await alice.ok("publish", {"room": room, "data": i})
            name, envelope = await bob.next()
            assert (name, envelope["data"]) == ("message", i)
        assert not waiting.done()  # (all that happened while the backend hung)
        error, took = await waiting
        assert error["code"] == "unavailable"
        assert 1.5 < took < 6
        assert (await health(live))["failed"] == 1


async def test_past_the_concurrency_bound_connects_are_refused_at_once(made: list[Peers]) -> None:
    with (
        backend(lambda req: "hang") as back,
        serve_in_thread(hooked(back, connect_hook_concurrency=1, connect_hook_timeout=5.0)) as live,
    ):
        waiting = asyncio.create_task(refused(live, None))
        await wait_for(lambda: len(back.seen()) == 1, timeout=TIMEOUT)
        error, took = await refused(live, None)
        assert error["code"] == "unavailable" and took < 2
        assert len(back.seen()) == 1  # not asked, not queued
        assert (await health(live))["busy"] == 1
        back.release.set()
        assert (await waiting)[0]["code"] == "unavailable"


async def test_tokens_first_then_the_hook(made: list[Peers]) -> None:
    with (
        backend(lambda req: allow("hooked")) as back,
        serve_in_thread(hooked(back, secret="s3cret", api_key="key")) as live,
    ):
        peers = Peers(live.url, "websocket")
        made.append(peers)
        token = await peers(auth={"token": issue_token("s3cret", "tokened")})
        assert back.seen() == []  # a token needs no backend
        bare = await peers(auth={"other": 1})
        assert len(back.seen()) == 1
        room = unique()
        await token.ok("join", {"room": room})
        await bare.ok("join", {"room": room})
        listed = await token.ok("presence", {"room": room})
        assert sorted(m["user"] for m in listed["members"]) == ["hooked", "tokened"]
        error, _ = await refused(live, {"token": issue_token("wrong", "x")})
        assert error["code"] == "unauthorized" and len(back.seen()) == 1


def test_settings_need_a_secret_and_a_timeout_within_the_connect_timeout() -> None:
    url = "http://127.0.0.1:9/connect"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RELAY_CONNECT_HOOK_URL": url})
    message = str(info.value)
    assert "RELAY_CONNECT_HOOK_SECRET" in message and "RELAY_WEBHOOK_SECRET" in message
    assert "\n" not in message
    # the webhooks' secret signs hook requests too, when the hook has none of its own
    shared = Settings.from_env({"RELAY_CONNECT_HOOK_URL": url, "RELAY_WEBHOOK_SECRET": "w"})
    assert shared.connect_hook_key == "w"
    own = {"RELAY_CONNECT_HOOK_URL": url, "RELAY_CONNECT_HOOK_SECRET": "c"}
    assert Settings.from_env({**own, "RELAY_WEBHOOK_SECRET": "w"}).connect_hook_key == "c"
    assert Settings.from_env(own).connect_hook_timeout == 3.0
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**own, "RELAY_CONNECT_HOOK_TIMEOUT": "10s"})
    assert "RELAY_CONNECT_HOOK_TIMEOUT='10s'" in str(info.value)
    assert "RELAY_CONNECT_TIMEOUT" in str(info.value)


def test_without_a_hook_the_synchronous_gate_stays() -> None:
    from relay.app import create_app

    sio = create_app(Settings()).state.sio
    assert sio.gate is not None and sio.async_gate is None
    with backend(lambda req: allow()) as back:
        sio = create_app(hooked(back)).state.sio
        assert sio.gate is None and sio.async_gate is not None
