"""The packet fast path of client events (RelaySocketIO.fast_handlers) against the generic one.

relay answers its five client events from the Engine.IO packet without python-socketio's
``_trigger_event``; these tests run the same requests against a relay with that fast path and
one without it (its fast handlers removed, so every event takes python-socketio's way) and
expect the same acks and the same envelopes, over both transports, good input and bad.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from engineio import packet as eio_packet

from relay import handlers
from relay.app import build_sio
from relay.core.service import Relay
from relay.settings import Settings
from relay.wire.engine import RelaySocket
from relay.wire.transport import EngineIOTransport
from tests.conftest import LiveRelay, serve_in_thread
from tests.relay.conftest import Peer, Peers, unique


@pytest.fixture(scope="module")
def slow_relay() -> Iterator[LiveRelay]:
    """A relay whose client events all take python-socketio's generic path."""
    with serve_in_thread() as live:
        live.app.state.sio.fast_handlers.clear()  # (nothing is connected yet)
        yield live


@pytest.fixture
def fast_calls(live_relay: LiveRelay) -> Iterator[dict[str, int]]:
    """Counts the fast path's calls per event on ``live_relay`` (proof that it is taken)."""
    table = live_relay.app.state.sio.fast_handlers
    originals = dict(table)
    calls = dict.fromkeys(table, 0)

    def counting(event: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        def run(sid: str, args: list[Any]) -> Any:
            calls[event] += 1
            return handler(sid, args)

        return run

    for event, handler in originals.items():
        table[event] = counting(event, handler)
    yield calls
    table.update(originals)


async def _pair(url: str, transport: str) -> tuple[Peers, Peer, Peer]:
    peers = Peers(url, transport)
    sender = await peers(unique("alice"))
    receiver = await peers(unique("bob"))
    return peers, sender, receiver


def _without_id(ack: Any) -> Any:
    return {k: v for k, v in ack.items() if k != "id"} if isinstance(ack, dict) else ack


BAD_DIRECTS: list[tuple[str, Any]] = [
    ("both to and user", {"to": "SID", "user": "bob", "data": 1}),
    ("neither to nor user", {"data": 1}),
    ("no data", {"to": "SID"}),
    ("a string, not an object", "hello"),
    ("two arguments", ("a", "b")),
    ("no argument", None),
    ("to not a string", {"to": 42, "data": 1}),
    ("bad user name", {"user": "no spaces", "data": 1}),
    ("reserved event", {"to": "SID", "event": "join", "data": 1}),
    ("bad event name", {"to": "SID", "event": "", "data": 1}),
    ("event not a string", {"to": "SID", "event": 7, "data": 1}),
    ("too large", {"to": "SID", "data": "x" * (64 * 1024 + 1)}),
    ("unknown sid", {"to": "no-such-sid", "data": 1}),
    ("unknown user", {"user": "nobody-at-all", "data": 1}),
]


def _fill(payload: Any, sid: str) -> Any:
    if isinstance(payload, dict) and payload.get("to") == "SID":
        return {**payload, "to": sid}
    return payload


async def _answers(url: str, transport: str) -> list[Any]:
    peers, sender, receiver = await _pair(url, transport)
    try:
        out = []
        for _, payload in BAD_DIRECTS:
            ack = await sender.sio.call("direct", _fill(payload, receiver.sid), timeout=5)
            out.append(_without_id(ack))
        # nothing of that reached the receiver (the unknown sid/user ones went nowhere either)
        assert receiver.pending() == []
        return out
    finally:
        await peers.close()


async def test_bad_directs_get_the_same_answers_on_both_paths(
    live_relay: LiveRelay, slow_relay: LiveRelay, transport: str, fast_calls: dict[str, int]
) -> None:
    fast = await _answers(live_relay.url, transport)
    slow = await _answers(slow_relay.url, transport)
    assert fast_calls["direct"] == len(BAD_DIRECTS)
    for (label, _), f, s in zip(BAD_DIRECTS, fast, slow, strict=True):
        assert f == s, label
    codes = [a["error"]["code"] if not a.get("ok") else "ok" for a in fast]
    assert codes == ["bad_request"] * 11 + ["too_large", "ok", "ok"]
    assert fast[-1] == {"ok": True, "delivered": 0}


async def _direct_round(url: str, transport: str) -> dict[str, Any]:
    peers, sender, receiver = await _pair(url, transport)
    try:
        data = {"text": "héllo", "n": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
        by_sid = await sender.ok("direct", {"to": receiver.sid, "event": "dm", "data": data})
        event, env = await receiver.next()
        bob = receiver.sio.connection_auth["user"]
        by_user = await sender.ok("direct", {"user": bob, "data": None, "event": None})
        event2, env2 = await receiver.next()
        # to oneself: the message and then the ack, in that order, on one connection
        to_self = await sender.ok("direct", {"to": sender.sid, "data": 3})
        event3, env3 = await sender.next()
        # without an ack: delivered all the same
        await sender.sio.emit("direct", {"to": receiver.sid, "data": "no ack"})
        event4, env4 = await receiver.next()
        assert by_sid["id"] == env["id"] and by_user["id"] == env2["id"]
        assert to_self["id"] == env3["id"]
        for e in (env, env2, env3, env4):
            assert isinstance(e.pop("id"), str) and isinstance(e.pop("ts"), int)
        alice = sender.sio.connection_auth["user"]
        for e, who in ((env, sender), (env2, sender), (env3, sender), (env4, sender)):
            assert e.pop("from") == {"sid": who.sid, "user": alice}
        return {
            "acks": [_without_id(a) for a in (by_sid, by_user, to_self)],
            "events": [event, event2, event3, event4],
            "envelopes": [env, env2, env3, env4],
        }
    finally:
        await peers.close()


async def test_direct_delivers_the_same_on_both_paths(
    live_relay: LiveRelay, slow_relay: LiveRelay, transport: str, fast_calls: dict[str, int]
) -> None:
    fast = await _direct_round(live_relay.url, transport)
    assert fast_calls["direct"] == 4
    slow = await _direct_round(slow_relay.url, transport)
    assert fast == slow
    assert fast["acks"] == [{"ok": True, "delivered": 1}] * 3
    assert fast["events"] == ["dm", "message", "message", "message"]
    assert fast["envelopes"][0] == {
        "room": None,
        "event": "dm",
        "data": {"text": "héllo", "n": [1, 2.5, None, True], "nested": {"a": {"b": []}}},
        "offset": None,
    }
    assert fast["envelopes"][1]["data"] is None


async def test_every_client_event_takes_the_fast_path(
    live_relay: LiveRelay, transport: str, fast_calls: dict[str, int]
) -> None:
    peers, a, b = await _pair(live_relay.url, transport)
    try:
        room = unique()
        await a.ok("join", {"room": room})
        await b.ok("join", {"room": room})
        await a.ok("publish", {"room": room, "data": 1})
        await a.ok("presence", {"room": room})
        await b.ok("leave", {"room": room})
        assert {k: v for k, v in fast_calls.items() if v} == {
            "join": 2,
            "publish": 1,
            "presence": 1,
            "leave": 1,
        }
        # an unknown event is not one of them, and still answered
        ack = await a.call("nonsense", {"x": 1})
        assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    finally:
        await peers.close()


# -- handle_message_now, without sockets -------------------------------------------------------


async def test_handle_message_now_takes_only_what_it_can_finish() -> None:
    sio = build_sio(Settings())
    relay = Relay(Settings(), EngineIOTransport(sio.eio))
    handlers.register(sio, relay)
    sio.manager_initialized = True
    sio.manager.initialize()
    sock = RelaySocket(sio.eio, "eio-1")  # a long-polling session: acks go to its queue
    sock.connected = True
    sio.eio.sockets["eio-1"] = sock
    sid = await sio.manager.connect("eio-1", "/")
    relay.connect(sid, "eio-1", "alice")
    now = sio.handle_message_now

    def queued() -> list[str]:
        out = []
        while not sock.queue.empty():
            pkt = sock.queue.get_nowait()
            assert pkt.packet_type == eio_packet.MESSAGE
            out.append(pkt.data)
        return out

    # what it finishes: the five events, with or without an ack id
    assert now("eio-1", f'27["direct",{{"to":"{sid}","data":[1]}}]') is True
    got = queued()
    assert len(got) == 2 and got[0].startswith('2["message",')
    ack = orjson.loads(got[1][2:])
    assert got[1][:2] == "37" and ack[0]["ok"] is True and ack[0]["delivered"] == 1
    assert now("eio-1", f'2["direct",{{"to":"{sid}","data":2}}]') is True
    assert len(queued()) == 1  # the message, no ack
    assert now("eio-1", '212["direct","nope"]') is True
    (answer,) = queued()
    assert answer.startswith('312[{"ok":false,"error":{"code":"bad_request"')
    # what it leaves to the generic path, untouched
    for data in (
        b"binary",
        '0{"token":"x"}',  # CONNECT
        "1",  # DISCONNECT
        '31["ack"]',  # ACK
        '51-["direct",{"_placeholder":true,"num":0}]',  # BINARY_EVENT
        '2/admin,["direct",{"to":"x","data":1}]',  # another namespace
        '2["nonsense",{}]',  # no fast handler
        '2["direct",{"to"',  # not JSON
        "2[]",
        "2[1]",
        '2²["direct",{"to":"x","data":1}]',  # a digit to str.isdigit, not an ack id
    ):
        assert now("eio-1", data) is False, data
    assert now("no-such-session", '21["direct",{"to":"x","data":1}]') is False
    assert queued() == []
    # a session not connected to "/" (as python-socketio does, dropped without an answer)
    other = RelaySocket(sio.eio, "eio-2")
    sio.eio.sockets["eio-2"] = other
    assert now("eio-2", '21["direct",{"to":"x","data":1}]') is True
    assert other.queue.empty()
