"""Issue 11's per-connection and server-wide limits, tried against a live relay as an attacker
would: rates answered ``rate_limited`` (never a disconnect), room caps, bounded history memory,
token expiry, and the HTTP API's own limit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import orjson
import socketio

from relay.core.auth import issue_token
from relay.limits import OFF, Rate
from relay.settings import Settings
from tests.conftest import serve_in_thread, wait_for
from tests.relay.conftest import Peers, unique
from tests.relay.raw import RawWs

SECRET = "limits-test-secret-long-enough-for-hs256"
API_KEY = "limits-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_publishing_past_the_rate_is_refused_and_the_connection_stays() -> None:
    settings = Settings(publish_rate=Rate(20, 20))
    with serve_in_thread(settings) as live:
        peers = Peers(live.url, "websocket")
        try:
            flooder, listener = await peers(), await peers()
            room = unique()
            await listener.ok("join", {"room": room})
            start = time.monotonic()
            acks = await asyncio.gather(
                *(
                    flooder.sio.call("publish", {"room": room, "data": i}, timeout=30)
                    for i in range(60)
                )
            )
            elapsed = time.monotonic() - start
            accepted = [a for a in acks if a["ok"]]
            refused = [a for a in acks if not a["ok"]]
            # the burst, plus what the rate refilled meanwhile; every other one refused
            assert 20 <= len(accepted) <= 20 + 20 * elapsed + 2
            assert refused and all(a["error"]["code"] == "rate_limited" for a in refused)
            assert "RELAY_PUBLISH_RATE" in refused[0]["error"]["message"]
            assert refused[0]["error"]["retry_after_ms"] >= 1
            # direct shares the bucket (a new connection: the flooder's refills meanwhile)
            other = await peers()
            await other.ok("publish", {"room": room, "data": "one"})
            for _ in range(19):
                await other.call("publish", {"room": room, "data": "spent"})
            ack = await other.call("direct", {"to": listener.sid, "data": "x"})
            assert ack["ok"] is False and ack["error"]["code"] == "rate_limited"
            # still connected; the listener got exactly the accepted ones, in order
            assert flooder.sio.connected
            got = [
                arg["offset"]
                for _, arg in await listener.until(
                    lambda e, a: e == "message" and a["offset"] == accepted[-1]["offset"]
                )
            ]
            assert got == [a["offset"] for a in accepted]
            listener.pending()  # (the other connection's)
            # the rate refills: publishing works again
            await wait_for_ok(flooder, {"room": room, "data": "later"})
            async with httpx.AsyncClient(base_url=live.url) as http:
                assert (await http.get("/healthz")).json()["rate_limited"] >= len(refused)
        finally:
            await peers.close()


async def wait_for_ok(peer: Any, payload: dict[str, Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ack = await peer.call("publish", payload)
        if ack["ok"]:
            return
        assert ack["error"]["code"] == "rate_limited", ack
        assert time.monotonic() < deadline, "the rate never refilled"
        await asyncio.sleep(ack["error"]["retry_after_ms"] / 1000)


async def test_a_client_that_ignores_rate_limited_is_read_less_often() -> None:
    # Refusing costs a parse and an ack per event: 400,000 refused publishes in 10 s took
    # 7 s of CPU. After a refusal relay reads nothing from that websocket for a while.
    settings = Settings(publish_rate=Rate(0.1, 5))  # (no refill to speak of meanwhile)
    with serve_in_thread(settings) as live:
        peers = Peers(live.url, "websocket")
        try:
            flooder = await peers()
            room = unique()
            for i in range(5):  # the burst
                await flooder.ok("publish", {"room": room, "data": i})
            ack = await flooder.call("publish", {"room": room, "data": "refused"})
            assert ack["error"]["code"] == "rate_limited"
            # the next event is sent once that answer is in: it is not read for a while (at
            # least 0.25 s, at most 2 s)
            start = time.monotonic()
            ack = await flooder.call("publish", {"room": room, "data": "held"})
            assert time.monotonic() - start >= 0.25
            assert flooder.sio.connected
            # a polling client is not paused (its events come in HTTP requests), only refused
        finally:
            await peers.close()


async def test_rooms_per_connection_and_join_rate() -> None:
    settings = Settings(max_rooms_per_connection=5, join_rate=Rate(20, 10))
    with serve_in_thread(settings) as live:
        peers = Peers(live.url, "websocket")
        try:
            peer = await peers()
            rooms = [unique() for _ in range(6)]
            for room in rooms[:5]:
                await peer.ok("join", {"room": room})
            ack = await peer.call("join", {"room": rooms[5]})
            assert ack["error"]["code"] == "rate_limited"
            assert "RELAY_MAX_ROOMS_PER_CONNECTION" in ack["error"]["message"]
            await peer.ok("join", {"room": rooms[0]})  # (one it is in: fine)
            await peer.ok("leave", {"room": rooms[0]})
            await peer.ok("join", {"room": rooms[5]})
            assert live.relay.registry.get(peer.sid).rooms == set(rooms[1:])
            # a tight loop of joins and presence (100,000 joins took 2 s): the bucket's burst,
            # then its rate, and refusals (and pauses in reading) for the rest
            fresh = await peers()  # (a full bucket)
            start = time.monotonic()
            acks = await asyncio.gather(
                *(fresh.sio.call("presence", {"room": rooms[1]}, timeout=30) for _ in range(40))
            )
            elapsed = time.monotonic() - start
            accepted = [a for a in acks if a["ok"]]
            refused = [a for a in acks if not a["ok"]]
            assert 10 <= len(accepted) <= 10 + 20 * elapsed + 1, (len(accepted), elapsed)
            assert refused and refused[0]["error"]["code"] == "rate_limited"
            assert "RELAY_JOIN_RATE" in refused[0]["error"]["message"]
            assert peer.sio.connected and fresh.sio.connected
        finally:
            await peers.close()


async def test_the_server_holds_at_most_max_rooms() -> None:
    settings = Settings(max_rooms=10, join_rate=OFF, publish_rate=OFF, api_key=API_KEY)
    with serve_in_thread(settings) as live:
        peers = Peers(live.url, "websocket")
        try:
            peer = await peers()
            for i in range(6):
                await peer.ok("join", {"room": f"cap-join-{i}"})
            for i in range(4):
                await peer.ok("publish", {"room": f"cap-pub-{i}", "data": i})
            assert len(live.relay.history) == 10
            ack = await peer.call("join", {"room": "one-too-many"})
            assert ack["error"]["code"] == "unavailable" and "RELAY_MAX_ROOMS" in str(ack)
            ack = await peer.call("publish", {"room": "one-too-many", "data": 1})
            assert ack["error"]["code"] == "unavailable"
            async with httpx.AsyncClient(base_url=live.url, headers=AUTH) as http:
                r = await http.post("/api/v1/rooms/one-too-many/events", json={"data": 1})
                assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
                # rooms it knows still work
                r = await http.post("/api/v1/rooms/cap-pub-0/events", json={"data": 2})
                assert r.status_code == 200 and r.json()["offset"] == 2
                health = (await http.get("/healthz")).json()
                assert health["rooms_known"] == 10 and health["limits"]["max_rooms"] == 10
            # a room that empties (no history) is forgotten, and makes room for a new one
            await peer.ok("leave", {"room": "cap-join-0"})
            await peer.ok("join", {"room": "one-too-many"})
            assert len(live.relay.history) == 10
        finally:
            await peers.close()


async def test_history_memory_is_bounded_across_rooms() -> None:
    settings = Settings(history_max_bytes=2 * 1024 * 1024, publish_rate=OFF, join_rate=OFF)
    with serve_in_thread(settings) as live:
        peers = Peers(live.url, "websocket")
        try:
            peer = await peers()
            quiet = unique()
            await peer.ok("publish", {"room": quiet, "data": "keep me"})
            big = "y" * 60_000
            for i in range(100):  # 6 MB into 10 rooms: three times the bound
                await peer.ok("publish", {"room": f"{quiet}-flood-{i % 10}", "data": big})
            history = live.relay.history
            assert history.bytes <= 2 * 1024 * 1024 and history.evicted > 0
            # the small room kept its message, and a join with since says so
            listener = await peers()
            ack = await listener.ok("join", {"room": quiet, "since": 0})
            assert ack["recovered"] is True
            event, arg = await listener.next()
            assert event == "message" and arg["data"] == "keep me"
            # a flooded room says it lost some
            ack = await listener.ok("join", {"room": f"{quiet}-flood-0", "since": 0})
            assert ack["recovered"] is False
            async with httpx.AsyncClient(base_url=live.url) as http:
                health = (await http.get("/healthz")).json()
            assert 0 < health["history_bytes"] <= 2 * 1024 * 1024
            assert health["history_evicted"] == history.evicted
        finally:
            await peers.close()


async def test_a_token_that_expires_ends_its_connection() -> None:
    with serve_in_thread(Settings(secret=SECRET, api_key=API_KEY)) as live:
        client = socketio.AsyncClient(reconnection=False)
        refused: asyncio.Queue[Any] = asyncio.Queue()
        gone = asyncio.Event()
        client.on("connect_error", lambda data: refused.put_nowait(data))
        client.on("disconnect", lambda *_: gone.set())
        # exp 2 s away (PyJWT and relay allow 5 s of clock leeway on top)
        token = jwt.encode({"sub": "eve", "exp": int(time.time()) + 2}, SECRET, "HS256")
        long_lived = issue_token(SECRET, "bob", ttl_s=3600)
        other = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(live.url, auth={"token": token}, transports=["websocket"])
            await other.connect(live.url, auth={"token": long_lived}, transports=["websocket"])
            assert len(live.relay.registry) == 2
            data = await asyncio.wait_for(refused.get(), 15)
            # the same shape as a refusal at connect time
            assert data["data"] == {"code": "unauthorized", "message": "the token has expired"}
            await wait_for(lambda: len(live.relay.registry) == 1, timeout=5)
            assert other.connected and live.relay.registry.get(other.get_sid()) is not None
        finally:
            for c in (client, other):
                if c.connected:
                    await c.disconnect()


async def test_the_api_has_its_own_rate_per_key() -> None:
    settings = Settings(api_key=API_KEY, api_rate=Rate(10, 10))
    with serve_in_thread(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, headers=AUTH) as http:
            codes = [
                (await http.post("/api/v1/rooms/api-rate/events", json={"data": i})).status_code
                for i in range(30)
            ]
            assert codes.count(200) >= 10 and 429 in codes
            r = await http.post("/api/v1/rooms/api-rate/events", json={"data": "x"})
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert "RELAY_API_RATE" in r.json()["error"]["message"]
            # what was refused was not published: offsets count only the accepted ones
            # (the key's bucket is empty: wait as the server says, within a deadline)
            deadline = time.monotonic() + 10
            r = await http.get("/api/v1/rooms/api-rate/history?limit=1000")
            while r.status_code == 429 and time.monotonic() < deadline:
                await asyncio.sleep(r.json()["error"]["retry_after_ms"] / 1000)
                r = await http.get("/api/v1/rooms/api-rate/history?limit=1000")
            assert r.status_code == 200
            offsets = [m["offset"] for m in r.json()["messages"]]
            assert offsets == list(range(1, len(offsets) + 1)) and len(offsets) < 31
            # an unauthenticated flood is refused before it costs a token
            async with httpx.AsyncClient(base_url=live.url) as anon:
                assert (await anon.get("/api/v1/rooms/x/members")).status_code == 401


async def test_a_connection_fanning_out_to_a_big_room_is_held_to_its_delivery_rate() -> None:
    # 100 publishes a second into a room of 1,000 were 100,000 deliveries a second from one
    # connection: the delivery budget charges a publish by the members it reaches
    settings = Settings(publish_rate=OFF, delivery_rate=Rate(100, 200))
    with serve_in_thread(settings) as live:
        peers = Peers(live.url, "websocket")
        try:
            room = unique()
            members = [await peers() for _ in range(20)]
            for member in members:
                await member.ok("join", {"room": room})
            sender = await peers()
            acks = [await sender.call("publish", {"room": room, "data": i}) for i in range(12)]
            assert [a["ok"] for a in acks[:10]] == [True] * 10  # 10 x 20 = the burst of 200
            refused = [a for a in acks[10:] if not a["ok"]]
            assert refused and refused[0]["error"]["code"] == "rate_limited"
            assert "RELAY_DELIVERY_RATE" in refused[0]["error"]["message"]
            # a publish to an empty room reaches nobody: it costs no delivery
            await sender.ok("publish", {"room": unique(), "data": "nobody"})
            # a direct to one connection costs one
            ack = await sender.call("direct", {"to": members[0].sid, "data": "x"})
            assert ack["ok"] is False or ack["delivered"] == 1
            assert sender.sio.connected
        finally:
            await peers.close()


async def test_events_read_with_a_refused_one_are_handled_after_the_pause_in_order() -> None:
    # a refusal pauses the connection: the frames of the same read after it are kept, not
    # handled, until the pause ends; then every one is answered, in order
    settings = Settings(publish_rate=Rate(4, 2))
    with serve_in_thread(settings) as live:
        ws = await RawWs.open(live.port)
        try:
            await ws.connect()
            room = unique()
            ws.send(
                *(
                    f"42{i}" + orjson.dumps(["publish", {"room": room, "data": i}]).decode()
                    for i in range(1, 9)
                )
            )  # eight events in one write
            answers = []
            times = []
            for i in range(1, 9):
                answers.append(await ws.ack(i, timeout=15))
                times.append(time.monotonic())
            assert [a["ok"] for a in answers[:3]] == [True, True, False]  # burst 2, refused
            # the rest waited for the pause (0.25 s at least, from the refusal; seen here, the
            # gap can be a little shorter: the refusal's ack itself may reach us late)
            assert times[3] - times[2] >= 0.2
            accepted = [a["offset"] for a in answers if a["ok"]]
            assert accepted == list(range(1, len(accepted) + 1)) and len(accepted) >= 3
            assert all(a["error"]["code"] == "rate_limited" for a in answers if not a["ok"])
        finally:
            ws.abort()
