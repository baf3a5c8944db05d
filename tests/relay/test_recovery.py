"""Connection state recovery: the pure session store, then the wire, with raw Socket.IO clients.

The raw clients speak Engine.IO/Socket.IO v4/v5 over a real websocket, as socket.io-client does,
so a test decides exactly when the transport dies and which ``pid`` a reconnect names.
Node's own client is driven in tests/e2e/test_js_recovery.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import socketio
import websockets

from relay.core.auth import issue_token
from relay.core.recovery import Recovery
from relay.errors import ConfigError
from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread, wait_for
from tests.relay.conftest import TIMEOUT, unique

# -- the store, without sockets ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def store(ttl: float = 10, max_bytes: int = 1000, max_packets: int = 5) -> tuple[Recovery, Clock]:
    clock = Clock()
    return Recovery(ttl, max_bytes, max_packets, clock), clock


def test_a_held_session_collects_in_order_and_is_claimed_once() -> None:
    rec, _ = store()
    pid = rec.issue("s1")
    assert pid is not None and len(pid) >= 20 and rec.pid_of("s1") == pid
    assert rec.issue("s2") != pid
    session = rec.hold("s1", "alice", ["r1", "r2"])
    assert session is not None and rec.waiting and len(rec) == 1
    assert rec.pid_of("s1") is None
    assert rec.to_room("r1", "a") == 1
    assert rec.to_room("other", "x") == 0
    assert rec.to_user("alice", "b") == 1
    assert rec.to_sid("s1", "c") == 1
    assert rec.to_room("r2", "d") == 1
    assert rec.to_user("bob", "x") == 0 and rec.to_sid("s2", "x") == 0
    assert rec.find(pid) is session
    assert rec.claim(session) == ["a", "b", "c", "d"]
    assert rec.pid_of("s1") == pid  # live again, same pid
    assert rec.find(pid) is None and len(rec) == 0
    assert rec.claim(session) == []


def test_sessions_expire_and_overflow() -> None:
    rec, clock = store(ttl=10, max_bytes=10, max_packets=3)
    a = rec.issue("a")
    b = rec.issue("b")
    assert a is not None and b is not None
    rec.hold("a", None, ["r"])
    rec.hold("b", None, ["r"])
    clock.now += 9.9
    assert rec.find(a) is not None
    clock.now += 0.1
    assert rec.find(a) is None and len(rec) == 1  # found expired: forgotten
    assert rec.expire() == 1 and len(rec) == 0
    c = rec.issue("c")
    assert c is not None
    rec.hold("c", None, ["r"])
    assert [rec.to_room("r", "xyz") for _ in range(4)] == [1, 1, 1, 0]  # a 4th is too many
    assert rec.find(c) is None
    d = rec.issue("d")
    assert d is not None
    rec.hold("d", None, ["r"])
    assert rec.to_room("r", "12345") == 1 and rec.to_room("r", "123456") == 0  # 11 bytes > 10
    assert rec.find(d) is None


def test_all_sessions_together_hold_at_most_max_total() -> None:
    # A client dropping connection after connection, then sending each dropped sid direct
    # messages, made the server keep max_bytes for every one of them.
    clock = Clock()
    rec = Recovery(10, 1000, 100, clock, max_total=2500)
    pids = [rec.issue(f"s{i}") for i in range(10)]
    for i in range(10):
        rec.hold(f"s{i}", None, [])
    packet = "x" * 400
    kept = [sum(rec.to_sid(f"s{i}", packet) for _ in range(2)) for i in range(10)]
    assert rec.total <= 2500 and rec.total == 400 * sum(kept)
    assert kept[:3] == [2, 2, 2] and kept[3] == 0 and rec.overflowed >= 1
    assert rec.find(pids[3] or "") is None  # forgotten: its client rejoins with since
    # a claim gives the bytes back
    session = rec.find(pids[0] or "")
    assert session is not None and rec.claim(session) == [packet, packet]
    assert rec.total == 400 * (sum(kept) - 2)


def test_no_pid_and_nothing_held_when_off_or_said_goodbye() -> None:
    off, _ = store(ttl=0)
    assert off.issue("s") is None and off.hold("s", None, ["r"]) is None and not off.enabled
    rec, _ = store()
    pid = rec.issue("s")
    assert pid is not None
    rec.forget("s")
    assert rec.hold("s", None, ["r"]) is None and rec.find(pid) is None


def test_a_reserved_session_is_not_found_until_released() -> None:
    rec, _ = store()
    pid = rec.issue("s")
    assert pid is not None
    session = rec.hold("s", None, [])
    assert session is not None
    rec.reserve(session)
    assert rec.find(pid) is None
    assert rec.to_sid("s", "still collecting") == 1
    rec.release(session)
    assert rec.find(pid) is session


def test_a_session_that_moves_away_is_forgotten_without_ending() -> None:
    # (cluster mode: relay.backends.handover hears of every end but a move)
    rec, clock = store(ttl=10)
    ended: list[str] = []
    rec.ended = lambda session: ended.append(session.sid)
    for sid in ("moves", "overflows", "comes back", "overflows too"):
        rec.issue(sid)
        rec.hold(sid, "u", ["r"])
    moving = rec.session_of("moves")
    assert moving is not None and rec.to_room("r", "a") == 4
    assert rec.take(moving) == ["a"] and moving.moved and rec.take(moving) == []
    assert rec.session_of("moves") is None and rec.to_sid("moves", "b") == 0
    back = rec.session_of("comes back")
    assert back is not None and rec.claim(back) == ["a"]
    assert rec.to_room("r", "x" * 2000) == 0  # past max_bytes: forgotten
    assert ended == ["comes back", "overflows", "overflows too"]
    assert rec.sessions() == [] and rec.total == 0
    rec.adopt("from elsewhere", "P")  # a session brought from another node is live here
    assert rec.pid_of("from elsewhere") == "P"
    clock.now += 11
    assert rec.expire() == 0


def test_settings_recovery_ttl() -> None:
    assert Settings().recovery_ttl == 120
    assert Settings.from_env({"RELAY_RECOVERY_TTL": "2m"}).recovery_ttl == 120
    assert Settings.from_env({"RELAY_RECOVERY_TTL": "0"}).recovery_ttl == 0
    with pytest.raises(ConfigError, match="RELAY_RECOVERY_TTL"):
        Settings.from_env({"RELAY_RECOVERY_TTL": "soon"})


# -- on the wire ---------------------------------------------------------------------------------


class Raw:
    """A Socket.IO client over a raw websocket: it can vanish without a goodbye."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sid = ""
        self.pid: str | None = None
        self.events: list[tuple[str, Any]] = []
        self._acks = 0

    @classmethod
    async def connect(cls, live: LiveRelay, auth: dict[str, Any]) -> Raw:
        url = live.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        raw = cls(await websockets.connect(url))
        opened = await raw._recv()
        assert opened.startswith("0"), opened
        await raw.ws.send("40" + json.dumps(auth))
        answer = await raw._recv()
        if answer.startswith("44"):
            await raw.ws.close()
            raise ConnectionRefusedError(answer)
        assert answer.startswith("40"), answer
        data = json.loads(answer[2:])
        raw.sid, raw.pid = data["sid"], data.get("pid")
        return raw

    async def _recv(self) -> str:
        while True:
            text = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            assert isinstance(text, str)
            if text == "2":  # Engine.IO ping
                await self.ws.send("3")
                continue
            return text

    async def call(self, event: str, payload: Any) -> Any:
        """Emit with an ack; events arriving before the ack are recorded."""
        self._acks += 1
        await self.ws.send(f"42{self._acks}" + json.dumps([event, payload]))
        while True:
            text = await self._recv()
            if text.startswith(f"43{self._acks}["):
                return json.loads(text[len(f"43{self._acks}") :])[0]
            self._record(text)

    def _record(self, text: str) -> None:
        assert text.startswith("42["), text
        event, arg = json.loads(text[2:])
        self.events.append((event, arg))

    async def next_events(self, count: int) -> list[tuple[str, Any]]:
        while len(self.events) < count:
            self._record(await self._recv())
        return self.events[:count]

    async def vanish(self) -> None:
        """Drop the TCP connection: no Socket.IO DISCONNECT, no close handshake."""
        self.ws.transport.abort()

    async def goodbye(self) -> None:
        await self.ws.send("41")
        await self.ws.close()


@pytest.fixture(scope="module")
def secret_relay() -> Iterator[LiveRelay]:
    with serve_in_thread(Settings(secret="s3cret", api_key="k")) as live:
        yield live


async def wait_gone(live: LiveRelay, sid: str) -> None:
    """Until relay holds ``sid`` as a dropped session (it noticed the drop)."""
    relay = live.relay
    await wait_for(lambda: relay.registry.get(sid) is None and relay.recovery.waiting, TIMEOUT)


async def test_raw_client_recovers_sid_rooms_and_what_it_missed(live_relay: LiveRelay) -> None:
    room, user = unique(), unique("alice")
    a = await Raw.connect(live_relay, {"user": user})
    b = await Raw.connect(live_relay, {"user": unique("bob")})
    assert a.pid and b.pid and a.pid != b.pid
    await a.call("join", {"room": room})
    await b.call("join", {"room": room})
    await a.vanish()
    await wait_gone(live_relay, a.sid)
    p1 = await b.call("publish", {"room": room, "data": 1})
    d2 = await b.call("direct", {"to": a.sid, "data": 2})
    d3 = await b.call("direct", {"user": user, "data": 3})
    assert d2["delivered"] == 0 and d3["delivered"] == 0  # counted: connections reached now
    back = await Raw.connect(live_relay, {"user": user, "pid": a.pid})
    assert (back.sid, back.pid) == (a.sid, a.pid)
    got = await back.next_events(3)
    assert [(e, env["data"], env["offset"]) for e, env in got] == [
        ("message", 1, p1["offset"]),
        ("message", 2, None),
        ("message", 3, None),
    ]
    members = await b.call("presence", {"room": room})
    assert sorted(m["sid"] for m in members["members"]) == sorted([a.sid, b.sid])
    live = await b.call("publish", {"room": room, "data": 4})
    assert (await back.next_events(4))[3][1]["offset"] == live["offset"]
    await back.goodbye()
    await b.goodbye()


async def test_a_room_waiting_for_its_only_member_keeps_its_epoch(live_relay: LiveRelay) -> None:
    """The dropped member was the room's only one and it held no message: the room is still
    known while the session waits, so what was published meanwhile, and the recovered
    client's rejoin, count in the same epoch and offsets."""
    room, user = unique(), unique("alice")
    a = await Raw.connect(live_relay, {"user": user})
    epoch = (await a.call("join", {"room": room}))["epoch"]
    await a.vanish()
    await wait_gone(live_relay, a.sid)
    assert live_relay.relay.history.epoch(room) == epoch
    b = await Raw.connect(live_relay, {"user": unique("bob")})
    p1 = await b.call("publish", {"room": room, "data": 1})
    assert p1["offset"] == 1
    back = await Raw.connect(live_relay, {"user": user, "pid": a.pid})
    assert back.sid == a.sid
    got = await back.next_events(1)
    assert [(e, env["data"], env["offset"]) for e, env in got] == [("message", 1, 1)]
    ack = await back.call("join", {"room": room, "since": 1, "epoch": epoch})
    assert (ack["epoch"], ack["offset"], ack["members"]) == (epoch, 1, 1)
    await back.goodbye()
    await b.goodbye()


async def test_unknown_foreign_or_said_goodbye_pids_get_a_new_connection(
    live_relay: LiveRelay,
) -> None:
    user = unique("carol")
    fresh = await Raw.connect(live_relay, {"user": user, "pid": "no-such-pid"})
    assert fresh.sid and fresh.pid and fresh.pid != "no-such-pid"
    await fresh.call("join", {"room": unique()})
    await fresh.vanish()
    await wait_gone(live_relay, fresh.sid)
    # another user naming that pid does not get the session...
    thief = await Raw.connect(live_relay, {"user": unique("mallory"), "pid": fresh.pid})
    assert thief.sid != fresh.sid and thief.pid != fresh.pid
    # ...which is still there for its owner
    owner = await Raw.connect(live_relay, {"user": user, "pid": fresh.pid})
    assert owner.sid == fresh.sid
    # a goodbye is final
    await owner.goodbye()
    await wait_for(lambda: live_relay.relay.registry.get(owner.sid) is None, TIMEOUT)
    again = await Raw.connect(live_relay, {"user": user, "pid": fresh.pid})
    assert again.sid != fresh.sid
    await again.goodbye()
    await thief.goodbye()


async def test_with_a_secret_the_token_must_name_the_same_user(secret_relay: LiveRelay) -> None:
    alice = issue_token("s3cret", "alice")
    a = await Raw.connect(secret_relay, {"token": alice})
    await a.vanish()
    await wait_gone(secret_relay, a.sid)
    bob = await Raw.connect(secret_relay, {"token": issue_token("s3cret", "bob"), "pid": a.pid})
    assert bob.sid != a.sid
    with pytest.raises(ConnectionRefusedError, match="unauthorized"):
        await Raw.connect(secret_relay, {"token": "forged", "pid": a.pid})
    back = await Raw.connect(secret_relay, {"token": alice, "pid": a.pid})
    assert back.sid == a.sid
    await back.goodbye()
    await bob.goodbye()


async def test_python_socketio_clients_ignore_the_pid(live_relay: LiveRelay) -> None:
    room = unique()
    client = socketio.AsyncClient()
    got: asyncio.Queue[Any] = asyncio.Queue()
    client.on("message", got.put)
    await client.connect(live_relay.url, auth={"user": unique("py")}, transports=["websocket"])
    try:
        assert (await client.call("join", {"room": room}))["ok"] is True
        await client.call("publish", {"room": room, "data": "hi"})
        assert (await asyncio.wait_for(got.get(), TIMEOUT))["data"] == "hi"
    finally:
        await client.disconnect()


async def test_recovery_off_answers_no_pid() -> None:
    with serve_in_thread(Settings(recovery_ttl=0)) as live:
        a = await Raw.connect(live, {})
        assert a.sid and a.pid is None
        await a.goodbye()
