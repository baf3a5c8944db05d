"""relay.names: names and payload shapes, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from relay import names
from relay.errors import BadRequest

ALPHABET = "abcXYZ019_-.:@/"


@pytest.mark.parametrize("value", ["a", "x" * 128, ALPHABET, "team-42:chat/general@eu.1", "1"])
def test_room_names_accepted(value: str) -> None:
    assert names.room_name(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 129, "a b", "a\nb", "caf\u00e9", "a#b", "a?b", "a,b", "a\\b", 1, None, [], b"a"],
)
def test_room_names_refused(value: Any) -> None:
    with pytest.raises(BadRequest):
        names.room_name(value)


@pytest.mark.parametrize("value", ["a", "x" * 64, ALPHABET])
def test_user_and_event_names_accepted(value: str) -> None:
    assert names.user_name(value) == value
    assert names.event_name(value) == value


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a!", 3, 1.0, [], {}, True])
def test_user_and_event_names_refused(value: Any) -> None:
    with pytest.raises(BadRequest):
        names.user_name(value)
    with pytest.raises(BadRequest):
        names.event_name(value)


def test_event_name_defaults_to_message() -> None:
    assert names.event_name(None) == "message"


@pytest.mark.parametrize(
    "event",
    [
        "connect", "connect_error", "disconnect", "disconnecting", "newListener",
        "removeListener", "join", "leave", "publish", "direct", "presence",
    ],
)  # fmt: skip
def test_reserved_event_names(event: str) -> None:
    assert event in names.RESERVED_EVENTS
    with pytest.raises(BadRequest, match="reserved"):
        names.event_name(event)
    # Reserved as events only: a user or a room may be called so.
    assert names.user_name(event) == event
    assert names.room_name(event) == event


def test_messages_say_what_arrived() -> None:
    with pytest.raises(BadRequest) as info:
        names.room_name(12)
    assert "'room'" in info.value.message and "int" in info.value.message
    with pytest.raises(BadRequest) as info:
        names.room_name("y" * 500)
    assert "1-128" in info.value.message and len(info.value.message) < 200
    assert info.value.code == "bad_request"


def test_payload_takes_exactly_one_object() -> None:
    assert names.payload(({"room": "a"},), "join") == {"room": "a"}
    for args in [(), ("a",), (1,), ([],), (None,), ({"room": "a"}, 2)]:
        with pytest.raises(BadRequest, match="'join' takes one object"):
            names.payload(args, "join")


def test_payload_drops_null_optional_fields_but_keeps_null_data() -> None:
    got = names.payload(({"room": "a", "since": None, "event": None, "data": None},), "publish")
    assert got == {"room": "a", "data": None}


def test_payload_nested_too_deeply() -> None:
    with pytest.raises(BadRequest, match="nested too deeply"):
        names.payload((names.NESTED_TOO_DEEPLY,), "publish")


@pytest.mark.parametrize("value", [0, 1, 2**53])
def test_offsets_accepted(value: int) -> None:
    assert names.offset(value) == value


@pytest.mark.parametrize("value", [-1, True, False, 1.0, "1", None, [1]])
def test_offsets_refused(value: Any) -> None:
    with pytest.raises(BadRequest, match="'since'"):
        names.offset(value)


def test_flag_and_sid() -> None:
    assert names.flag(True, "exclude_self") is True
    assert names.flag(False, "exclude_self") is False
    for bad in (0, 1, "true", None):
        with pytest.raises(BadRequest, match="exclude_self"):
            names.flag(bad, "exclude_self")
    assert names.sid("abc") == "abc"
    for bad in ("", "x" * 65, 5, None):
        with pytest.raises(BadRequest, match="'to'"):
            names.sid(bad)
