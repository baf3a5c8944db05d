"""HTTP long-polling under bursts: python-engineio clients take at most 16 packets per
response, and clients batch many packets into one POST; neither may cost a message."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from engineio.payload import Payload

from tests.conftest import LiveRelay
from tests.relay.conftest import TIMEOUT, Peers, unique


async def test_a_burst_reaches_a_python_polling_client_without_a_reconnect(
    connect_ws: Peers,
) -> None:
    assert Payload.max_decode_packets == 16  # the official python client's own limit
    room = unique()
    publisher = await connect_ws()
    member = await connect_ws(transports=["polling"])
    eio_sid = member.sio.eio.sid
    await member.ok("join", {"room": room})
    # Fire without waiting for acks, so the member's queue holds far more than 16 packets.
    for i in range(1, 201):
        await publisher.sio.emit("publish", {"room": room, "data": i})
    got = await member.until(lambda e, env: e == "message" and env["offset"] == 200, TIMEOUT * 2)
    assert [env["offset"] for e, env in got if e == "message"] == list(range(1, 201))
    assert member.sio.eio.sid == eio_sid and not member.disconnected.is_set()


async def test_a_post_batching_many_packets_is_handled_whole(live_relay: LiveRelay) -> None:
    room = unique()
    base = "/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        opened = await http.get(base)
        sid = orjson.loads(opened.text[1:])["sid"]
        url = f"{base}&sid={sid}"
        assert (await http.post(url, content="40")).status_code == 200
        assert (await http.get(url)).text.startswith("40{")
        n = 40
        body = "\x1e".join(
            f"42{i}" + orjson.dumps(["publish", {"room": room, "data": i}]).decode()
            for i in range(1, n + 1)
        )
        assert (await http.post(url, content=body)).status_code == 200
        acks: dict[int, int] = {}
        while len(acks) < n:
            r = await asyncio.wait_for(http.get(url), TIMEOUT)
            assert r.status_code == 200
            for packet in r.text.split("\x1e"):
                if packet.startswith("43"):
                    head, _, rest = packet[2:].partition("[")
                    acks[int(head)] = orjson.loads("[" + rest)[0]["offset"]
        assert acks == {i: i for i in range(1, n + 1)}
        await http.post(url, content="1")
