"""Every error a client can provoke today, and that none of them costs it its connection."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import socketio

from relay.names import RESERVED_EVENTS
from relay.settings import Settings
from tests.conftest import serve_in_thread
from tests.relay.conftest import TIMEOUT, Peer, Peers, close_client, unique

ROOM = "errors-room"
BAD_NAMES: list[Any] = ["", "has space", "emoji-\u2603", "semi;colon", "x" * 129, "tab\t", 5, True]
BAD_EVENT_NAMES: list[Any] = ["", "has space", "x" * 65, "quote'", 1.5, [], {}]

CASES: list[tuple[str, Any]] = [
    # join
    *[("join", {"room": bad}) for bad in BAD_NAMES],
    ("join", {}),
    ("join", {"room": None}),
    ("join", {"room": ROOM, "since": -1}),
    ("join", {"room": ROOM, "since": "3"}),
    ("join", {"room": ROOM, "since": 1.5}),
    ("join", {"room": ROOM, "since": True}),
    ("join", {"room": ROOM, "since": [1]}),
    # leave
    *[("leave", {"room": bad}) for bad in BAD_NAMES],
    ("leave", {}),
    # publish
    *[("publish", {"room": bad, "data": 1}) for bad in BAD_NAMES],
    ("publish", {"data": 1}),
    ("publish", {"room": ROOM}),
    ("publish", {"room": ROOM, "event": "ok"}),
    *[("publish", {"room": ROOM, "event": bad, "data": 1}) for bad in BAD_EVENT_NAMES],
    *[("publish", {"room": ROOM, "event": name, "data": 1}) for name in sorted(RESERVED_EVENTS)],
    ("publish", {"room": ROOM, "data": 1, "exclude_self": "yes"}),
    ("publish", {"room": ROOM, "data": 1, "exclude_self": 1}),
    # direct
    ("direct", {"data": 1}),
    ("direct", {"to": "x", "user": "y", "data": 1}),
    ("direct", {"to": 5, "data": 1}),
    ("direct", {"to": "", "data": 1}),
    ("direct", {"to": "x" * 65, "data": 1}),
    ("direct", {"user": "bad name!", "data": 1}),
    ("direct", {"user": "x" * 65, "data": 1}),
    ("direct", {"user": 7, "data": 1}),
    ("direct", {"to": "x"}),
    *[("direct", {"to": "x", "event": bad, "data": 1}) for bad in BAD_EVENT_NAMES],
    *[("direct", {"to": "x", "event": name, "data": 1}) for name in sorted(RESERVED_EVENTS)],
    # presence
    *[("presence", {"room": bad}) for bad in BAD_NAMES],
    ("presence", {}),
    # not one object
    *[(event, bad) for event in ("join", "leave", "publish", "direct", "presence")
      for bad in ("lobby", 5, [{"room": ROOM}], True)],
    # unknown events and events only the server may send
    ("nope", {"room": ROOM}),
    ("subscribe", {}),
    ("connect_error", {}),
    ("disconnecting", {}),
    ("newListener", {}),
    ("removeListener", {}),
    ("message", {"room": ROOM, "data": 1}),
    ("x" * 200, {}),
]  # fmt: skip


def case_id(case: tuple[str, Any]) -> str:
    event, payload = case
    return f"{event[:20]}-{orjson.dumps(payload).decode()[:40]}"


async def assert_error(ack: Any, code: str) -> None:
    assert isinstance(ack, dict), ack
    assert ack["ok"] is False, ack
    assert set(ack) == {"ok", "error"}, ack
    assert set(ack["error"]) == {"code", "message"}, ack
    assert ack["error"]["code"] == code, ack
    assert isinstance(ack["error"]["message"], str) and ack["error"]["message"], ack


async def assert_usable(peer: Peer) -> None:
    """The connection survived: it can still join, publish and receive."""
    room = unique()
    await peer.ok("join", {"room": room})
    ack = await peer.ok("publish", {"room": room, "data": "still here"})
    got = await peer.until(lambda e, env: e == "message" and env["id"] == ack["id"])
    assert got[-1][1]["data"] == "still here"


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_bad_request(connect_ws: Peers, case: tuple[str, Any]) -> None:
    event, payload = case
    peer = await connect_ws()
    await assert_error(await peer.call(event, payload), "bad_request")
    await assert_usable(peer)


async def test_error_messages_say_what_was_expected(connect_ws: Peers) -> None:
    peer = await connect_ws()
    ack = await peer.call("join", {"room": "x" * 129})
    assert "1-128" in ack["error"]["message"]
    ack = await peer.call("publish", {"room": ROOM, "event": "join", "data": 1})
    assert "reserved" in ack["error"]["message"]
    ack = await peer.call("join", {"room": 5})
    assert "string" in ack["error"]["message"] and "int" in ack["error"]["message"]


async def test_wrong_argument_counts(connect: Peers) -> None:
    peer = await connect()
    await assert_error(await peer.sio.call("join", timeout=TIMEOUT), "bad_request")
    await assert_error(await peer.call("join", {"room": ROOM}, {"room": ROOM}), "bad_request")
    await assert_error(await peer.sio.call("nope", timeout=TIMEOUT), "bad_request")
    await assert_usable(peer)


@pytest.mark.parametrize("event", ["connect", "disconnect"])
async def test_client_cannot_fake_connect_or_disconnect(connect: Peers, event: str) -> None:
    room = unique()
    peer, watcher = await connect("alice"), await connect()
    await peer.ok("join", {"room": room})
    await watcher.ok("join", {"room": room})
    # A client naming its event like the server's own lifecycle events must not re-register
    # itself (as another user) or be dropped from its rooms.
    ack = await peer.call(event, {}, {"user": "mallory"})
    await assert_error(ack, "bad_request")
    assert (await watcher.ok("presence", {"room": room}))["members"] == [
        {"sid": peer.sid, "user": "alice"},
        {"sid": watcher.sid, "user": None},
    ]
    ack = await peer.ok("publish", {"room": room, "data": "after"})
    got = await watcher.until(lambda e, env: e == "message")
    assert got[-1][1]["from"] == {"sid": peer.sid, "user": "alice"}
    assert got[-1][1]["id"] == ack["id"]
    await assert_usable(peer)


async def test_null_optional_fields_count_as_absent(connect: Peers) -> None:
    room = unique()
    a, b = await connect(), await connect("bob")
    ack = await a.ok("join", {"room": room, "since": None})
    assert "recovered" not in ack
    ack = await a.ok("publish", {"room": room, "event": None, "data": 1, "exclude_self": None})
    event, env = await a.next()  # exclude_self null = false: the sender gets it
    assert (event, env["id"]) == ("message", ack["id"])
    ack = await a.ok("direct", {"to": b.sid, "user": None, "event": None, "data": 2})
    assert ack["delivered"] == 1
    ack = await a.ok("direct", {"to": None, "user": "bob", "data": 3})
    assert ack["delivered"] == 1
    assert [(e, env["data"]) for e, env in [await b.next(), await b.next()]] == [
        ("message", 2),
        ("message", 3),
    ]


async def test_null_data_is_data(connect_ws: Peers) -> None:
    # "data" is required, and JSON null is a value: it is sent, not treated as missing.
    room = unique()
    peer = await connect_ws()
    await peer.ok("join", {"room": room})
    await peer.ok("publish", {"room": room, "data": None})
    assert (await peer.next())[1]["data"] is None


# -- too_large ---------------------------------------------------------------------------------


def string_of_json_size(n: int) -> str:
    """A string whose JSON encoding is exactly ``n`` bytes."""
    return "x" * (n - 2)


async def test_payload_limit_is_exact(connect: Peers) -> None:
    limit = Settings().max_payload
    room = unique()
    peer = await connect()
    await peer.ok("join", {"room": room})
    ack = await peer.ok("publish", {"room": room, "data": string_of_json_size(limit)})
    assert len((await peer.next())[1]["data"]) == limit - 2
    await assert_error(
        await peer.call("publish", {"room": room, "data": string_of_json_size(limit + 1)}),
        "too_large",
    )
    await assert_error(
        await peer.call("direct", {"to": peer.sid, "data": string_of_json_size(limit + 1)}),
        "too_large",
    )
    # Size counts the JSON, not the characters: escapes and multi-byte text weigh more.
    await assert_error(
        await peer.call("publish", {"room": room, "data": "\u00e9" * (limit // 2)}), "too_large"
    )
    # The rejected message took no offset.
    ack = await peer.ok("publish", {"room": room, "data": "small"})
    assert ack["offset"] == 2
    await assert_usable(peer)


async def test_payload_limit_is_configurable(transport: str) -> None:
    with serve_in_thread(Settings(max_payload=1000)) as live:
        peers = Peers(live.url, transport)
        try:
            peer = await peers()
            room = unique()
            await peer.ok("publish", {"room": room, "data": string_of_json_size(1000)})
            ack = await peer.call("publish", {"room": room, "data": string_of_json_size(1001)})
            await assert_error(ack, "too_large")
            assert "1000" in ack["error"]["message"]
            ack = await peer.call("publish", {"room": room, "data": {"k": ["v" * 1000]}})
            await assert_error(ack, "too_large")
            await assert_usable(peer)
        finally:
            await peers.close()


# -- connecting --------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["bad name!", "", "x" * 65, 5, ["alice"]])
async def test_open_mode_refuses_a_bad_user_name(
    live_relay: Any, transport: str, user: Any
) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    refused: asyncio.Queue[Any] = asyncio.Queue()
    sio.on("connect_error", refused.put)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(
            live_relay.url, auth={"user": user}, transports=[transport], wait_timeout=TIMEOUT
        )
    data = await asyncio.wait_for(refused.get(), TIMEOUT)
    assert isinstance(data, dict), data
    # python-socketio hands the handler the packet's data: {"message", "data": {code, message}}
    error = data.get("data", data)
    assert error["code"] == "bad_request"
    assert isinstance(error["message"], str) and error["message"]
    await close_client(sio)


async def test_open_mode_users(connect: Peers) -> None:
    room = unique()
    anon, named = await connect(), await connect("alice")
    other_auth = await connect(auth={"user": None, "extra": 1})
    for peer in (anon, named, other_auth):
        await peer.ok("join", {"room": room})
    members = (await anon.ok("presence", {"room": room}))["members"]
    assert members == [
        {"sid": anon.sid, "user": None},
        {"sid": named.sid, "user": "alice"},
        {"sid": other_auth.sid, "user": None},
    ]
