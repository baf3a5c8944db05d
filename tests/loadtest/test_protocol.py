"""Engine.IO / Socket.IO framing and scenario parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.loadtest import protocol
from relay.loadtest.scenario import Scenario, ScenarioError


def test_parse_message_kinds() -> None:
    assert protocol.parse_message('40{"sid":"abc"}') == ("0", None, {"sid": "abc"})
    assert protocol.parse_message('4312[{"ok":true}]') == ("3", 12, [{"ok": True}])
    assert protocol.parse_message('42["presence",{"a":1}]') == ("2", None, ["presence", {"a": 1}])
    assert protocol.parse_message("41") == ("1", None, None)
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_message("2")


@pytest.mark.parametrize(
    ("args", "result"),
    [
        ([{"ok": True, "offset": 1}], (True, None)),
        ([{"id": "x"}], (True, None)),  # a server that acks without "ok"
        ([{"ok": False, "error": {"code": "forbidden", "message": "no"}}], (False, "forbidden")),
        ([{"error": "boom"}], (False, "boom")),
        ([], (True, None)),
    ],
)
def test_ack_result_is_tolerant(args: list[object], result: tuple[bool, str | None]) -> None:
    assert protocol.ack_result(args) == result


def test_endpoints_and_packets() -> None:
    assert (
        protocol.endpoint("http://h:1", "websocket")
        == "ws://h:1/socket.io/?EIO=4&transport=websocket"
    )
    assert protocol.endpoint("https://h", "websocket").startswith("wss://h/socket.io/")
    assert (
        protocol.endpoint("ws://h:1", "polling") == "http://h:1/socket.io/?EIO=4&transport=polling"
    )
    assert protocol.event_packet("join", {"room": "a"}, 3) == '423["join",{"room":"a"}]'
    assert protocol.connect_packet(None) == "40"
    assert protocol.connect_packet({"token": "t"}) == '40{"token":"t"}'
    hs = protocol.parse_open('0{"sid":"s","pingInterval":25000,"pingTimeout":5000,"upgrades":[]}')
    assert (hs.sid, hs.ping_timeout_ms) == ("s", 5000)
    frame = b'42["message",{"data":{"lt":"x"}}]'
    assert protocol.delivery_payload(frame) == {"data": {"lt": "x"}}
    assert protocol.split_payload("2\x1e40") == ["2", "40"]


def test_scenario_toml_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[loadtest]\nclients = 50\nmode = "mixed"\nmax-p99-ms = 20\n')
    scn = Scenario.load(f, {"clients": 70, "rate": None})
    assert (scn.clients, scn.mode, scn.max_p99_ms, scn.rate) == (70, "mixed", 20, 100.0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("clients = 0", "clients"),
        ('transport = "carrier-pigeon"', "transport"),
        ("bogus = 1", "bogus"),
        ("max_loss = 2", "max_loss"),
        ("clients = [", "not valid TOML"),
    ],
)
def test_scenario_errors_name_the_option(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "s.toml"
    f.write_text(text + "\n")
    with pytest.raises(ScenarioError, match=needle):
        Scenario.load(f, {})
