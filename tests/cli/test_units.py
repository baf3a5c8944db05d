"""Pure pieces of send and listen: DATA parsing, targets, rendering, dedupe, backoff, URLs."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any

import pytest
from rich.console import Console

from relay.cli.client import check_ack, error_from, normalize_url
from relay.cli.listen import Tracker, backoff
from relay.cli.render import HumanOutput, JsonOutput, clock_text, data_text, sender_text
from relay.cli.send import Target, decode_line, parse_data, split_lines
from relay.errors import BadRequest, Forbidden, Internal, TooLarge


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"hi": 1}', {"hi": 1}),
        ("3", 3),
        ("-2.5", -2.5),
        ("true", True),
        ("null", None),
        ('"3"', "3"),
        ("[1, 2]", [1, 2]),
        ("hello", "hello"),
        ("{not json", "{not json"),
        ("NaN", "NaN"),  # not JSON, whatever Python's json module thinks
        ("", ""),
        ("  spaced  ", "  spaced  "),
    ],
)
def test_parse_data(text: str, value: Any) -> None:
    assert parse_data(text) == value
    assert type(parse_data(text)) is type(value)


def test_raw_data_is_always_a_string() -> None:
    assert parse_data('{"hi": 1}', raw=True) == '{"hi": 1}'


def test_target_needs_exactly_one() -> None:
    assert Target.of("lobby", None, None).action == "publish"
    assert Target.of(None, "sid1", None).payload("e", 1) == {"to": "sid1", "event": "e", "data": 1}
    assert Target.of(None, None, "bob").payload(None, [1]) == {"user": "bob", "data": [1]}
    assert Target.of("r", None, None).payload(None, None) == {"room": "r", "data": None}
    with pytest.raises(ValueError, match="got none"):
        Target.of(None, None, None)
    with pytest.raises(ValueError, match="got --room and --user"):
        Target.of("r", None, "u")


def test_lines_split_across_chunks() -> None:
    lines, rest = split_lines(b"", b"a\nb")
    assert (lines, rest) == ([b"a"], b"b")
    lines, rest = split_lines(rest, b'c\r\n{"x":\xc3\xa9}\n')
    assert [decode_line(line) for line in lines] == ["bc", '{"x":é}']
    assert rest == b""
    assert decode_line(b"   ") is None
    assert decode_line(b"\xff") == "\ufffd"


def test_human_rendering_into_a_string_console() -> None:
    buf = io.StringIO()
    out = HumanOutput(Console(file=buf, width=200, color_system=None), get_time=lambda: 0.0)
    ts = 1_700_000_000_123
    base = {"id": "x", "ts": ts}
    out.envelope(
        {**base, "room": "lobby", "event": "message", "offset": 3, "data": {"hi": 1},
         "from": {"sid": "abcdefgh", "user": "alice"}}
    )  # fmt: skip
    out.envelope(
        {**base, "room": None, "event": "ping", "offset": None, "data": "[b]not markup[/b]",
         "from": {"sid": "abcdefgh", "user": None}}
    )  # fmt: skip
    out.envelope(
        {**base, "room": "lobby", "event": "message", "offset": 4, "data": None,
         "from": {"sid": None, "user": None}}
    )  # fmt: skip
    out.presence({"room": "lobby", "action": "join", "member": {"sid": "s", "user": "bob"}})
    out.ack({"ok": True, "id": "i1", "offset": 7}, "lobby")
    out.ack({"ok": True, "id": "i2", "delivered": 0}, None)
    t = clock_text(ts)
    assert buf.getvalue().splitlines() == [
        f'{t} lobby #3 alice: {{"hi": 1}}',
        f"{t} direct anon-abcdef (ping): [b]not markup[/b]",
        f"{t} lobby #4 api: null",
        f"{clock_text(0)} lobby: bob joined",
        "published to lobby at offset 7 (id i1)",
        "delivered to 0 connections (nobody with that sid or user is connected) (id i2)",
    ]


def test_human_rendering_has_colours_only_on_a_terminal() -> None:
    env = {"id": "x", "ts": 0, "room": "r", "event": "message", "offset": 1, "data": 1,
           "from": {"sid": None, "user": "u"}}  # fmt: skip
    plain, coloured = io.StringIO(), io.StringIO()
    HumanOutput(Console(file=plain, width=100)).envelope(env)
    HumanOutput(Console(file=coloured, width=100, force_terminal=True)).envelope(env)
    assert "\x1b[" not in plain.getvalue()
    assert "\x1b[" in coloured.getvalue()


def test_json_rendering_is_one_object_per_line() -> None:
    class Stream(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    buf = Stream()
    out = JsonOutput(buf)
    env = {"id": "x", "room": "r", "data": {"é": [1, "two"]}, "offset": 1}
    out.envelope(env)
    out.presence({"room": "r", "action": "leave", "member": {"sid": "s", "user": None}})
    out.ack({"ok": True, "id": "x", "offset": 1}, "r")
    lines = buf.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [
        env,
        {"event": "presence", "room": "r", "action": "leave", "member": {"sid": "s", "user": None}},
        {"ok": True, "id": "x", "offset": 1},
    ]
    assert buf.flushes == 3


def test_small_formatters() -> None:
    assert data_text("plain") == "plain"
    assert data_text([1, {"a": None}]) == '[1, {"a": null}]'
    assert sender_text({"sid": None, "user": None}) == "api"
    assert sender_text(None) == "?"
    moment = datetime(2024, 5, 1, 9, 8, 7, 654000)
    assert clock_text(moment.timestamp() * 1000) == "09:08:07.654"


def env(room: str | None, offset: int | None, data: Any = None) -> dict[str, Any]:
    return {"id": f"{room}-{offset}", "room": room, "offset": offset, "data": data}


def test_tracker_fresh_join_then_dedupes() -> None:
    t = Tracker.for_rooms(["r"], None)
    assert t.join_payload("r") == {"room": "r"}
    resumed, out = t.joined("r", {"ok": True, "offset": 5})
    assert (resumed.kind, out) == ("fresh", [])
    assert t.envelope(env("r", 6)) == [env("r", 6)]
    assert t.envelope(env("r", 6)) == []
    assert t.envelope(env("r", 5)) == []
    assert t.envelope(env(None, None, "direct")) == [env(None, None, "direct")]


def test_tracker_resume_holds_replay_until_the_ack() -> None:
    t = Tracker.for_rooms(["r"], None)
    t.join_payload("r")
    t.joined("r", {"ok": True, "offset": 0})
    for n in (1, 2):
        t.envelope(env("r", n))
    t.forget_joins()  # the connection dropped
    assert t.join_payload("r") == {"room": "r", "since": 2}
    # the server replays 2 (a harmless overlap) and 3 before the ack
    assert t.envelope(env("r", 2)) == []
    assert t.envelope(env("r", 3)) == []
    resumed, out = t.joined("r", {"ok": True, "offset": 3, "recovered": True})
    assert resumed.kind == "recovered" and resumed.since == 2
    assert out == [env("r", 3)]
    assert t.envelope(env("r", 4)) == [env("r", 4)]


def test_tracker_restarted_room_prints_everything_again() -> None:
    t = Tracker.for_rooms(["r"], None)
    t.join_payload("r")
    t.joined("r", {"ok": True, "offset": 6})
    t.envelope(env("r", 7, "old-7"))
    t.forget_joins()  # the connection dropped; the server restarted
    assert t.join_payload("r") == {"room": "r", "since": 7}
    t.envelope(env("r", 1, "new-1"))
    resumed, out = t.joined("r", {"ok": True, "offset": 1, "recovered": False})
    assert resumed.kind == "restarted"
    assert out == [env("r", 1, "new-1")]
    assert t.envelope(env("r", 2, "new-2")) == [env("r", 2, "new-2")]
    assert t.envelope(env("r", 2, "new-2")) == []


def test_tracker_gap_keeps_the_watermark() -> None:
    t = Tracker.for_rooms(["r"], 2)
    t.join_payload("r")
    t.envelope(env("r", 50))
    resumed, out = t.joined("r", {"ok": True, "offset": 60, "recovered": False})
    assert resumed.kind == "gap"
    assert out == [env("r", 50)]


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n, 0.25, 5) for n in range(1, 8)] == [0.25, 0.5, 1, 2, 4, 5, 5]


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("localhost:9000/", "http://localhost:9000"),
        ("wss://relay.example.com/socket.io/", "https://relay.example.com"),
        ("HTTPS://Example.com/base/", "https://Example.com/base"),
    ],
)
def test_normalize_url(raw: str, url: str) -> None:
    assert normalize_url(raw) == url


@pytest.mark.parametrize("raw", ["ftp://x", "http://", "http://h:notaport", "://"])
def test_bad_urls(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalize_url(raw)


def test_acks_become_errors() -> None:
    assert check_ack({"ok": True, "id": "1"}, "publish") == {"ok": True, "id": "1"}
    with pytest.raises(Forbidden, match=r"^join x: no \(forbidden\)$"):
        check_ack({"ok": False, "error": {"code": "forbidden", "message": "no"}}, "join x")
    assert isinstance(error_from({"code": "too_large", "message": "big"}, "p"), TooLarge)
    assert isinstance(error_from({"code": "brand_new", "message": "?"}, "p"), Internal)
    with pytest.raises(Internal):
        check_ack("nonsense", "publish")


def test_tracker_since_ahead_of_the_room_is_not_a_restart() -> None:
    t = Tracker.for_rooms(["r"], 99999)
    assert t.join_payload("r") == {"room": "r", "since": 99999}
    t.envelope(env("r", 1, "old-1"))  # the server replays the room from its start
    resumed, out = t.joined("r", {"ok": True, "offset": 1, "recovered": False})
    assert (resumed.kind, resumed.since, resumed.offset) == ("ahead", 99999, 1)
    assert out == [env("r", 1, "old-1")]
    # later, a drop and a restarted server: that one is a restart
    t.forget_joins()
    t.join_payload("r")
    resumed, _ = t.joined("r", {"ok": True, "offset": 0, "recovered": False})
    assert resumed.kind == "restarted"


def test_tracker_since_the_room_reached_then_a_restart_is_a_restart() -> None:
    t = Tracker.for_rooms(["r"], 5)
    t.join_payload("r")
    assert t.joined("r", {"ok": True, "offset": 5, "recovered": True})[0].kind == "recovered"
    t.forget_joins()
    t.join_payload("r")
    assert t.joined("r", {"ok": True, "offset": 0, "recovered": False})[0].kind == "restarted"


def test_tracker_rejoins_with_since_and_the_epoch_it_counted_in() -> None:
    t = Tracker.for_rooms(["r"], None)
    assert t.join_payload("r") == {"room": "r"}
    t.joined("r", {"ok": True, "offset": 0, "epoch": "E1"})
    t.envelope(env("r", 1))
    t.forget_joins()
    assert t.join_payload("r") == {"room": "r", "since": 1, "epoch": "E1"}
    t.envelope(env("r", 2))
    resumed, out = t.joined("r", {"ok": True, "offset": 2, "epoch": "E1", "recovered": True})
    assert (resumed.kind, resumed.epoch, resumed.was) == ("recovered", "E1", "E1")
    assert out == [env("r", 2)]


def test_tracker_a_new_epoch_past_the_old_watermark_is_a_restart() -> None:
    """Watermark 2 in E1; the room restarted (E2) and reached 3 before the rejoin."""
    t = Tracker.for_rooms(["r"], None)
    t.join_payload("r")
    t.joined("r", {"ok": True, "offset": 0, "epoch": "E1"})
    for n in (1, 2):
        t.envelope(env("r", n, f"old-{n}"))
    t.forget_joins()
    assert t.join_payload("r") == {"room": "r", "since": 2, "epoch": "E1"}
    new = [env("r", n, f"new-{n}") for n in (1, 2, 3)]
    for e in new:  # the server replays all E2 holds: another epoch than the join's
        assert t.envelope(e) == []
    resumed, out = t.joined("r", {"ok": True, "offset": 3, "epoch": "E2", "recovered": False})
    assert (resumed.kind, resumed.since, resumed.epoch, resumed.was) == ("restarted", 2, "E2", "E1")
    assert out == new  # all of it, once
    assert t.envelope(env("r", 3, "new-3")) == []
    assert t.envelope(env("r", 4, "new-4")) == [env("r", 4, "new-4")]
    t.forget_joins()
    assert t.join_payload("r") == {"room": "r", "since": 4, "epoch": "E2"}


def test_tracker_the_user_s_epoch_goes_with_the_user_s_since() -> None:
    t = Tracker.for_rooms(["r"], 5, "E0")
    assert t.join_payload("r") == {"room": "r", "since": 5, "epoch": "E0"}
    t.envelope(env("r", 1, "x"))
    resumed, out = t.joined("r", {"ok": True, "offset": 9, "epoch": "E1", "recovered": False})
    assert (resumed.kind, resumed.given, resumed.was) == ("restarted", True, "E0")
    assert out == [env("r", 1, "x")]
    same = Tracker.for_rooms(["r"], 5, "E1")
    same.join_payload("r")
    resumed, _ = same.joined("r", {"ok": True, "offset": 9, "epoch": "E1", "recovered": True})
    assert (resumed.kind, resumed.given) == ("recovered", True)
