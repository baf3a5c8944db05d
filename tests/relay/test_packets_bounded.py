"""Socket.IO packets a hostile client sends: binary attachments are bounded in count and
bytes, and an event whose JSON does not parse still gets its ack (issue 11)."""

from __future__ import annotations

import httpx

from relay.settings import Settings
from relay.wire.sio import MAX_ATTACHMENTS
from tests.conftest import LiveRelay
from tests.relay.conftest import unique
from tests.relay.raw import TIMEOUT, RawPolling, RawWs
from tests.relay.test_polling_limits import _rss_kb

LIMIT = Settings().max_frame


async def test_a_flood_of_attachments_is_not_held(live_relay: LiveRelay) -> None:
    """A binary event announcing 9,999,999 attachments, then 64 MiB of them: the server
    answers the event bad_request at once and holds none of it (python-socketio appended every
    attachment to the packet, without a bound)."""
    sio = live_relay.app.state.sio
    ws = await RawWs.open(live_relay.port)
    await ws.connect()
    ws.send('459999999-7["publish",{"room":"r","data":{"_placeholder":true,"num":0}}]')
    ack = await ws.ack(7)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    assert str(MAX_ATTACHMENTS) in ack["error"]["message"]
    before = _rss_kb()
    chunk = b"\x00" * (256 * 1024)
    for _ in range(256):
        ws.send(chunk)
        await ws.writer.drain()
    assert (await ws.call(8, "join", {"room": unique()}))["ok"] is True  # (all of it was read)
    assert ws.eio_sid not in sio._binary_packet
    assert _rss_kb() - before < 32 * 1024
    ws.close()


async def test_attachments_over_the_transport_limit_in_all_are_dropped(
    live_relay: LiveRelay,
) -> None:
    sio = live_relay.app.state.sio
    ws = await RawWs.open(live_relay.port)
    await ws.connect()
    ws.send('453-7["publish",{"room":"r","data":[1,2,3]}]')
    part = b"\x01" * (LIMIT // 2)
    ws.send(part, part)
    ack = await ws.ack(7)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    assert f"{LIMIT} bytes" in ack["error"]["message"]
    assert ws.eio_sid not in sio._binary_packet
    ws.send(part)  # the third: nothing announced it any more, so nothing takes it
    assert (await ws.call(8, "join", {"room": unique()}))["ok"] is True
    ws.close()


async def test_a_few_attachments_are_still_answered_by_the_handlers(
    live_relay: LiveRelay,
) -> None:
    ws = await RawWs.open(live_relay.port)
    await ws.connect()
    holders = ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(MAX_ATTACHMENTS))
    ws.send(f'45{MAX_ATTACHMENTS}-7["publish",{{"room":"r","data":[{holders}]}}]')
    ws.send(*[b"\x02"] * MAX_ATTACHMENTS)
    ack = await ws.ack(7)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    ws.close()


async def test_an_event_whose_json_does_not_parse_gets_its_ack(live_relay: LiveRelay) -> None:
    ws = await RawWs.open(live_relay.port)
    await ws.connect()
    ws.send('427["publish",{bad json')
    ack = await ws.ack(7)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    assert "could not be parsed" in ack["error"]["message"]
    ws.send('42["publish",{bad json', '428{"no":"array"}')  # no ack id; not an array: no ack
    assert (await ws.call(9, "join", {"room": unique()}))["ok"] is True
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        session = await RawPolling.open(http)
        await session.connect()
        assert (await session.post('4211["join",{"room":')).status_code == 200
        ack = await session.ack(11)
        assert ack["ok"] is False and "could not be parsed" in ack["error"]["message"]
    ws.close()
