"""``relay send`` through the HTTP API (``--api-key`` / ``RELAY_API_KEY``), against a live relay
whose API needs that key, checked by a real Socket.IO member of the room and by history."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import socketio

from relay.limits import Rate
from relay.settings import Settings
from tests.cli.clirun import invoke, run_cli
from tests.conftest import serve_in_thread

KEY = "k" * 32


async def history(url: str, room: str) -> list[Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.get(
            f"/api/v1/rooms/{room}/history", headers={"authorization": f"Bearer {KEY}"}
        )
        assert r.status_code == 200, r.text
        return [m["data"] for m in r.json()["messages"]]


async def test_send_with_an_api_key_publishes_as_the_api() -> None:
    with serve_in_thread(Settings(api_key=KEY)) as live:
        member = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[Any] = asyncio.Queue()
        member.on("message", got.put)
        await member.connect(live.url, transports=["websocket"])
        try:
            assert (await member.call("join", {"room": "via-api"}))["ok"]
            result = await invoke(
                "send", "--url", live.url, "-r", "via-api", "--json", '{"a": 1}',
                env={"RELAY_API_KEY": KEY},
            )  # fmt: skip
            assert result.rc == 0, result.err
            ack = json.loads(result.out)
            assert ack["ok"] is True and ack["offset"] == 1
            env = await asyncio.wait_for(got.get(), 5)
            assert env["data"] == {"a": 1} and env["from"] == {"sid": None, "user": None}
            # --to and --user go to the connection endpoints
            sid = member.get_sid()
            result = await invoke(
                "send", "--url", live.url, "--to", sid, "--api-key", KEY, "--json", "direct"
            )
            assert result.rc == 0, result.err
            assert json.loads(result.out)["delivered"] == 1
            env = await asyncio.wait_for(got.get(), 5)
            assert env["data"] == "direct" and env["offset"] is None
        finally:
            await member.disconnect()


async def test_a_wrong_key_is_one_line_naming_the_option() -> None:
    with serve_in_thread(Settings(api_key=KEY)) as live:
        result = await invoke("send", "--url", live.url, "-r", "x", "--api-key", "nope", "1")
        assert result.rc == 1
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and "unauthorized" in lines[0] and "--api-key" in lines[0]
        assert await history(live.url, "x") == []


async def test_as_user_with_an_api_key_is_refused() -> None:
    result = await invoke(
        "send", "--url", "http://127.0.0.1:9", "-r", "x", "--api-key", KEY, "--as-user", "a", "1"
    )
    assert result.rc == 2 and "--as-user" in result.err


async def test_a_refused_line_stops_the_stream_and_names_what_was_published() -> None:
    with serve_in_thread(Settings(api_key=KEY, max_payload=64)) as live:
        lines = [b"1", b"2", b'"' + b"x" * 200 + b'"', b"4"]  # line 3: data over 64 bytes
        result = await run_cli(
            "send", "--url", live.url, "-r", "stream", "-q", "-",
            input=b"\n".join(lines) + b"\n", env={"RELAY_API_KEY": KEY},
        )  # fmt: skip
        assert result.rc == 1
        assert "line 3" in result.err and "published lines 1-2, and no other" in result.err
        assert await history(live.url, "stream") == [1, 2]


async def test_429_is_waited_out_and_nothing_is_lost_or_reordered() -> None:
    # 20 requests a second, bursts of 2: 30 lines meet 429 many times
    with serve_in_thread(Settings(api_key=KEY, api_rate=Rate(20.0, 2.0))) as live:
        data = b"".join(b"%d\n" % i for i in range(30))
        result = await run_cli(
            "send", "--url", live.url, "-r", "paced", "-q", "-",
            input=data, env={"RELAY_API_KEY": KEY}, timeout=60,
        )  # fmt: skip
        assert result.rc == 0, result.err
        assert await history(live.url, "paced") == list(range(30))
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            health = (await http.get("/healthz")).json()
        assert health["api_rate_limited"] > 0  # (the pace was the relay's, not luck)
