"""relay.core.envelope: ids, payload limits and the once-encoded packet, without sockets."""

from __future__ import annotations

import time

import orjson
import pytest

from relay.core import envelope
from relay.errors import BadRequest, TooLarge


def test_ids_are_unique_and_per_process_prefixed() -> None:
    a, b = envelope.IdFactory(), envelope.IdFactory()
    ids = [a() for _ in range(1000)] + [b() for _ in range(1000)]
    assert len(set(ids)) == 2000
    assert a().split("-")[0] != b().split("-")[0]


def test_encode_data_limit_is_in_json_bytes() -> None:
    assert envelope.encode_data("x" * 8, 10) == b'"xxxxxxxx"'
    with pytest.raises(TooLarge) as info:
        envelope.encode_data("x" * 9, 10)
    assert info.value.code == "too_large"
    assert "11 bytes" in info.value.message and "10" in info.value.message
    with pytest.raises(TooLarge):
        envelope.encode_data("\u00e9" * 5, 10)  # 10 UTF-8 bytes + 2 quotes


@pytest.mark.parametrize("data", [None, 0, 1.5, "s", [1, [2]], {"a": {"b": None}}, True])
def test_encode_data_accepts_any_json(data: object) -> None:
    assert orjson.loads(envelope.encode_data(data, 1000)) == data


def test_encode_data_refuses_what_is_not_json() -> None:
    with pytest.raises(BadRequest):
        envelope.encode_data({1, 2}, 1000)
    with pytest.raises(BadRequest):
        envelope.encode_data(b"bytes", 1000)
    with pytest.raises(BadRequest, match="nested too deeply"):
        envelope.encode_data(orjson.loads("[" * 300 + "]" * 300), 10**6)
    nested = orjson.loads("[" * envelope.MAX_DEPTH + "]" * envelope.MAX_DEPTH)
    envelope.encode_data(nested, 10**6)


def test_build_makes_the_envelope_and_its_packet() -> None:
    data = {"text": "hi", "n": [1, 2]}
    raw = envelope.encode_data(data, 1000)
    msg = envelope.build(
        id="i-1",
        room="lobby",
        event="chat",
        sender_sid="s1",
        sender_user="alice",
        data_json=raw,
        offset=7,
        ts=123,
    )
    expected = {
        "id": "i-1",
        "room": "lobby",
        "event": "chat",
        "from": {"sid": "s1", "user": "alice"},
        "data": data,
        "offset": 7,
        "ts": 123,
    }
    assert msg.envelope == expected
    assert orjson.loads(msg.envelope_json()) == expected
    assert (msg.id, msg.room, msg.event, msg.offset, msg.ts) == ("i-1", "lobby", "chat", 7, 123)
    assert msg.packet.startswith("2[")
    assert orjson.loads(msg.packet[1:]) == ["chat", expected]


def test_direct_envelope_has_null_room_and_offset() -> None:
    msg = envelope.build(
        id="i",
        room=None,
        event="message",
        sender_sid=None,
        sender_user=None,
        data_json=b"null",
        offset=None,
        ts=1,
    )
    assert orjson.loads(msg.packet[1:])[1] == {
        "id": "i",
        "room": None,
        "event": "message",
        "from": {"sid": None, "user": None},
        "data": None,
        "offset": None,
        "ts": 1,
    }


def test_event_packet_and_clock() -> None:
    assert envelope.event_packet("presence", {"a": 1}) == '2["presence",{"a":1}]'
    now = envelope.now_ms()
    assert abs(now - time.time() * 1000) < 1000
