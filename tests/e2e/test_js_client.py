"""Node's official socket.io-client 4.8 against a live relay, over WebSocket and long-polling.

Each test runs ``node tests/js/scenario.mjs URL TRANSPORT SCENARIO``: real ``io(url, ...)``
clients act out the scenario and print one JSON line of what they saw; the assertions live
here. A scenario that waits for something that never comes exits non-zero within seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, LiveRelay

JS_DIR = ROOT / "tests" / "js"
SCENARIO = JS_DIR / "scenario.mjs"
CLIENT_PACKAGE = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
TRANSPORTS = ["websocket", "polling"]
ENVELOPE_KEYS = {"id", "room", "event", "from", "data", "offset", "ts"}


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, once the pinned socket.io-client is installed (never a skip)."""
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not on PATH: install Node.js 18+ to run the JS client tests")
    if not CLIENT_PACKAGE.is_file():
        pytest.fail(
            f"{JS_DIR / 'node_modules'} is missing: run `npm ci` in tests/js "
            "(tests/run.sh does it) before these tests"
        )
    version = json.loads(CLIENT_PACKAGE.read_text())["version"]
    if not version.startswith("4.8."):
        pytest.fail(f"socket.io-client {version} is installed, expected 4.8.x: run `npm ci`")
    return exe


def run_scenario(
    node: str, url: str, transport: str, scenario: str, script: Path = SCENARIO
) -> dict[str, Any]:
    """``node SCRIPT URL TRANSPORT SCENARIO``: the JSON result its last line prints."""
    cmd = [node, str(script), url, transport, scenario]
    try:
        proc = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=45)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd[1:])} did not finish in 45 s:\n{exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(
            f"{scenario} over {transport} failed (exit {proc.returncode}):\n"
            f"{proc.stderr}{proc.stdout}"
        )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{scenario} over {transport} printed nothing; stderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def assert_envelope(env: dict[str, Any], *, ack: dict[str, Any], room: str | None) -> None:
    """``env`` is the contract's envelope for the message ``ack`` acknowledged."""
    assert set(env) == ENVELOPE_KEYS, env
    assert env["id"] == ack["id"]
    assert env["room"] == room
    assert env["offset"] == ack.get("offset")
    assert isinstance(env["ts"], int) and abs(env["ts"] - time.time() * 1000) < 60_000


@pytest.fixture
def scenario(node: str, live_relay: LiveRelay) -> Any:
    def run(transport: str, name: str) -> dict[str, Any]:
        return run_scenario(node, live_relay.url, transport, name)

    return run


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_join_presence_publish_and_exclude_self(scenario: Any, transport: str) -> None:
    r = scenario(transport, "basic")
    room, sid_a, sid_b = r["room"], r["sids"]["a"], r["sids"]["b"]
    assert r["transports"] == {"a": transport, "b": transport}
    epoch = r["joinA"].pop("epoch")
    assert isinstance(epoch, str) and r["joinB"].pop("epoch") == epoch  # one room, one epoch
    assert r["joinA"] == {"ok": True, "room": room, "offset": 0, "members": 1}
    assert r["joinB"] == {"ok": True, "room": room, "offset": 0, "members": 2}
    assert r["presenceJoin"] == {
        "room": room,
        "action": "join",
        "member": {"sid": sid_b, "user": "bob"},
    }

    publish = r["publish"]
    assert publish["ok"] is True and isinstance(publish["id"], str) and publish["offset"] == 1
    for env in (r["envA"], r["envB"]):
        assert_envelope(env, ack=publish, room=room)
        assert env["event"] == "message"
        assert env["from"] == {"sid": sid_a, "user": "alice"}
        assert env["data"] == {"n": 1, "text": "héllo"}
    assert r["envA"] == r["envB"]

    assert r["excluded"]["ok"] is True and r["excluded"]["offset"] == 2
    assert_envelope(r["envB2"], ack=r["excluded"], room=room)
    assert r["after"]["offset"] == 3
    # Alice sent n=2 with exclude_self: she saw n=1 and bob's n=3, never n=2.
    assert r["aData"] == [{"n": 1, "text": "héllo"}, {"n": 3}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_custom_event_direct_and_presence(scenario: Any, transport: str) -> None:
    r = scenario(transport, "routing")
    room, bob, sids = r["room"], r["bob"], r["sids"]
    alice = {"sid": sids["a"], "user": "alice"}

    assert r["custom"]["ok"] is True
    assert_envelope(r["customEnv"], ack=r["custom"], room=room)
    assert r["customEnv"]["event"] == "chat.line"
    assert r["customEvents"] == 1

    assert r["bySid"] == {"ok": True, "id": r["bySid"]["id"], "delivered": 1}
    assert_envelope(r["bySidEnv"], ack=r["bySid"], room=None)
    assert r["bySidEnv"]["event"] == "dm"
    assert r["bySidEnv"]["from"] == alice
    assert r["bySidEnv"]["offset"] is None

    assert r["byUser"]["ok"] is True and r["byUser"]["delivered"] == 2
    for env in (r["byUserEnv1"], r["byUserEnv2"]):
        assert_envelope(env, ack=r["byUser"], room=None)
        assert env["event"] == "message"

    assert r["unknownSid"]["ok"] is True and r["unknownSid"]["delivered"] == 0
    assert r["unknownUser"]["ok"] is True and r["unknownUser"]["delivered"] == 0
    assert r["both"]["ok"] is False and r["both"]["error"]["code"] == "bad_request"

    presence = r["presence"]
    assert presence["ok"] is True and presence["room"] == room
    expected = [alice, {"sid": sids["b1"], "user": bob}]
    assert sorted(presence["members"], key=lambda m: m["sid"]) == sorted(
        expected, key=lambda m: m["sid"]
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_join_since_replays_history_before_the_ack(scenario: Any, transport: str) -> None:
    r = scenario(transport, "history")
    room = r["room"]
    assert [p["offset"] for p in r["publishes"]] == [1, 2, 3, 4]
    assert isinstance(r["join"].pop("epoch"), str)
    assert r["join"] == {"ok": True, "room": room, "offset": 4, "members": 1, "recovered": True}
    assert r["beforeAck"] == [
        {"event": "message", "data": {"n": n}, "offset": n} for n in (2, 3, 4)
    ]
    assert r["fresh"]["ok"] is True and r["fresh"]["offset"] == 0
    assert r["fresh"]["recovered"] is True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_error_acks_keep_the_socket(scenario: Any, transport: str) -> None:
    r = scenario(transport, "errors")
    for key, code in [
        ("badRoom", "bad_request"),
        ("tooLarge", "too_large"),
        ("unknown", "bad_request"),
        ("reservedPublish", "bad_request"),
        ("reservedDirect", "bad_request"),
    ]:
        ack = r[key]
        assert ack["ok"] is False, (key, ack)
        assert ack["error"]["code"] == code, (key, ack)
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"], (key, ack)
    assert r["connectedAfterTooLarge"] is True
    assert r["later"]["ok"] is True
    assert r["laterEnv"]["id"] == r["later"]["id"]
    assert r["connected"] is True and r["sidUnchanged"] is True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_user_is_a_connect_error(scenario: Any, transport: str) -> None:
    r = scenario(transport, "connect_error")
    refused = r["refused"]
    assert refused["connected"] is False
    assert refused["data"]["code"] == "bad_request"
    assert "user" in refused["data"]["message"]
    assert refused["message"] == refused["data"]["message"]
    assert r["goodConnected"] is True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disconnect_is_a_presence_leave(scenario: Any, transport: str) -> None:
    r = scenario(transport, "disconnect")
    room, sids = r["room"], r["sids"]
    assert r["leave"] == {
        "room": room,
        "action": "leave",
        "member": {"sid": sids["b"], "user": "bob"},
    }
    assert r["presence"]["members"] == [{"sid": sids["a"], "user": "alice"}]


def test_websocket_and_polling_clients_share_a_room(scenario: Any) -> None:
    r = scenario("default", "mixed")
    room, sids = r["room"], r["sids"]
    assert r["transports"] == {"ws": "websocket", "poll": "polling"}
    assert_envelope(r["pollGot"], ack=r["fromWs"], room=room)
    assert r["pollGot"]["from"] == {"sid": sids["ws"], "user": "ws"}
    assert_envelope(r["wsGot"], ack=r["fromPoll"], room=room)
    assert r["wsGot"]["from"] == {"sid": sids["poll"], "user": "poll"}


def test_default_transports_upgrade_to_websocket(scenario: Any) -> None:
    r = scenario("default", "upgrade")
    assert r["transportAtOpen"] == "polling"
    assert r["upgradedTo"] == "websocket"
    assert r["transportNow"] == "websocket"
    assert r["join"]["ok"] is True
    assert_envelope(r["otherGot"], ack=r["sent"], room=r["join"]["room"])
    assert r["otherGot"]["from"] == {"sid": r["sid"], "user": "up"}
    assert_envelope(r["clientGot"], ack=r["reply"], room=r["join"]["room"])


def test_package_lock_pins_socket_io_client() -> None:
    """The lock (what `npm ci` installs) holds exactly one socket.io-client, a 4.8.x."""
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    manifest = json.loads((JS_DIR / "package.json").read_text())
    pinned = manifest["dependencies"]["socket.io-client"]
    assert pinned.startswith("4.8.") and pinned[0].isdigit(), pinned
    assert lock["packages"]["node_modules/socket.io-client"]["version"] == pinned
    assert Path(SCENARIO).is_file()
