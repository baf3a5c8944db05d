"""Connection state recovery across nodes (relay.backends.handover), with Node's official
socket.io-client: ``node tests/js/cluster_recovery.mjs URL_A URL_B TRANSPORT SCENARIO [PID_A]``
acts it out against two real relay processes on one real Redis and prints what it saw; the
assertions live here."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest
import redis

from tests.cluster.conftest import Nodes
from tests.e2e.test_js_client import (  # noqa: F401  (node: the fixture)
    JS_DIR,
    TRANSPORTS,
    node,
)

SCRIPT = JS_DIR / "cluster_recovery.mjs"
SHUTDOWN_TIMEOUT_S = 8


def run(node: str, a: str, b: str, transport: str, scenario: str, pid: int = 0) -> dict[str, Any]:  # noqa: F811
    cmd = [node, str(SCRIPT), a, b, transport, scenario, str(pid)]
    try:
        proc = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{scenario} over {transport} did not finish in 60 s:\n{exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(f"{scenario} over {transport} failed:\n{proc.stderr}{proc.stdout}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{scenario} printed nothing; stderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class Scripted:
    """The script as a subprocess the test talks to: it prints ``{"cue": name}`` lines and
    waits for an answer on stdin (the test acts meanwhile: stops a node)."""

    def __init__(self, node: str, a: str, b: str, transport: str, scenario: str) -> None:  # noqa: F811
        self.proc = subprocess.Popen(
            [node, str(SCRIPT), a, b, transport, scenario],
            cwd=JS_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def __enter__(self) -> Scripted:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def cue(self, name: str) -> None:
        """Wait for the script's cue ``name`` (its own deadlines bound the wait)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"no cue {name!r}; the script said:\n{err}")
        assert json.loads(line) == {"cue": name}, line

    def answer(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            pytest.fail(f"the script failed (exit {self.proc.returncode}):\n{err}{out}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_dropped_from_a_live_node_recovers_on_another(
    node: str,  # noqa: F811
    nodes: Nodes,
    transport: str,
) -> None:
    a, b = nodes.start(), nodes.start()
    r = run(node, a.url, b.url, transport, "handover")
    sid, room = r["sid"], r["room"]
    assert r["first"] == {"lifecycle": "connect", "sid": sid, "recovered": False}
    assert r["dropped"]["reason"] in ("transport close", "forced close")
    # while away, directs reached no live connection (they wait in its session)
    assert [ack["delivered"] for ack in r["acks"] if "delivered" in ack] == [0, 0]
    assert r["again"] == {"lifecycle": "connect", "sid": sid, "recovered": True}
    # what it missed (room messages of two rooms, a direct to its sid and one to its user), in
    # order, once each, after the CONNECT answer; then live traffic on the new node
    assert r["received"] == [
        {"event": "message", "data": {"n": 1}, "offset": 1},
        {"event": "dm", "data": {"n": 2}, "offset": None},
        {"event": "chat", "data": {"n": 3}, "offset": 2},
        {"event": "message", "data": {"n": 4}, "offset": None},
        {"event": "message", "data": {"n": 5}, "offset": 1},
        {"event": "message", "data": {"n": 6}, "offset": 3},
        {"event": "message", "data": {"n": 7}, "offset": 2},
        {"event": "message", "data": {"n": 8}, "offset": None},
    ]
    assert r["connectIndex"] < r["firstMessageIndex"]
    assert r["directAfter"]["delivered"] == 1
    rejoined = r["rejoined"]
    assert (rejoined["room"], rejoined["action"], rejoined["member"]["sid"]) == (room, "join", sid)
    # listed once, in the room, on its new node
    assert [m["sid"] for m in r["presence"]["members"]].count(sid) == 1
    assert len(r["presence"]["members"]) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigterm_saves_sessions_and_clients_recover_on_another_node(
    node: str,  # noqa: F811
    nodes: Nodes,
    transport: str,
) -> None:
    a = nodes.start(RELAY_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT_S))
    b = nodes.start()
    js = Scripted(node, a.url, b.url, transport, "sigterm")
    with js:
        js.cue("stop A")
        a.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        js.answer()
        assert a.proc.wait(timeout=SHUTDOWN_TIMEOUT_S + 5) == 0, "".join(a.lines)
        took = time.monotonic() - stopped
        r = js.result()
    assert took < SHUTDOWN_TIMEOUT_S, took
    sid = r["sid"]
    assert r["again"] == {"lifecycle": "connect", "sid": sid, "recovered": True}, r
    messages = [e["offset"] for e in r["received"] if e["event"] == "message"]
    # every offset once, in order: nothing lost or doubled across the move
    assert messages == list(range(1, 21)) == sorted(r["sent"])
    assert [e["data"] for e in r["received"] if e["event"] == "dm"] == [{"n": 100}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_session_saved_by_a_stopped_node_gets_what_redis_kept_meanwhile(
    node: str,  # noqa: F811
    nodes: Nodes,
    transport: str,
) -> None:
    a, b = nodes.start(), nodes.start()
    js = Scripted(node, a.url, b.url, transport, "saved")
    with js:
        js.cue("dropped")
        assert a.stop(signal.SIGTERM, timeout=15) == 0  # its session is now only in Redis
        js.answer()
        r = js.result()
    assert r["again"] == {"lifecycle": "connect", "sid": r["sid"], "recovered": True}
    assert [ack.get("delivered") for ack in r["acks"][:2]] == [0, 0]
    # directs appended to the saved session, then the room's stream after the offset it had
    # (a saved session gives its directs before its rooms' replay: see relay.backends.handover)
    assert r["received"] == [
        {"event": "dm", "data": {"n": 1}, "offset": None},
        {"event": "message", "data": {"n": 2}, "offset": None},
        {"event": "message", "data": {"n": 3}, "offset": 1},
        {"event": "message", "data": {"n": 4}, "offset": 2},
        {"event": "message", "data": {"n": 5}, "offset": 3},
        {"event": "message", "data": {"n": 6}, "offset": 4},
    ]
    # presence of the room while only Redis held the session was kept for it too
    assert r["presence"] == [["join", "carol"], ["leave", "carol"]], r


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_killed_node_s_clients_recover_with_since_and_epoch(
    node: str,  # noqa: F811
    nodes: Nodes,
    transport: str,
) -> None:
    a, b = nodes.start(), nodes.start()
    r = run(node, a.url, b.url, transport, "sigkill", a.proc.pid)
    # SIGKILL saved nothing: a new connection, which rejoins from the offset it had
    assert r["again"]["recovered"] is False and r["again"]["sid"] != r["sid"]
    assert [e["offset"] for e in r["before"]] == [1, 2, 3] and r["last"] == 3
    assert r["rejoin"]["recovered"] is True and r["rejoin"]["epoch"] == r["joined"]["epoch"]
    assert [e["offset"] for e in r["received"]] == [4, 5, 6, 7, 8, 9]
    assert [e["data"]["n"] for e in r["received"]] == [4, 5, 6, 7, 8, 9]


def _save_args(packets: list[str], ttl_ms: int = 60_000) -> tuple[list[str], list[Any]]:
    keys = [
        "relay:session:P1",
        "relay:session:P1:p",
        "relay:held",
        "relay:pid:P1",
        "relay:node:n1:sids",
        "relay:user:u",
    ]
    size = sum(len(p.encode()) for p in packets)
    return keys, ["S1", "u", "{}", ttl_ms, "P1", "", "", size, *packets]


def test_a_saved_session_cannot_grow_past_its_bounds(redis_server: Any) -> None:
    from relay.backends import scripts

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    keys, args = _save_args(["a" * 10, "b" * 10])
    assert r.eval(scripts.SAVE, len(keys), *keys, *args) == 2
    assert r.hget("relay:held", "S1") == "- P1" and r.hget("relay:user:u", "S1") == "="
    assert 0 < r.pttl("relay:session:P1:p") <= 60_000

    def direct(packet: str, max_packets: int, max_bytes: int) -> int:
        k = ["relay:conns", "relay:held"]
        return int(r.eval(scripts.DIRECT_SID, 2, *k, "S1", "n2", packet, max_packets, max_bytes))

    # within bounds: appended, not counted as delivered
    assert direct("c" * 10, 4, 100) == 0
    assert r.lrange("relay:session:P1:p", 0, -1) == ["a" * 10, "b" * 10, "c" * 10]
    assert r.hget("relay:session:P1", "bytes") == "30"
    # past the byte bound: the session is forgotten, as a node forgets one that missed too much
    assert direct("d" * 80, 4, 100) == 0
    assert not r.exists("relay:session:P1", "relay:session:P1:p")
    assert r.hget("relay:held", "S1") is None

    # the packet bound, through a direct to the user
    keys, args = _save_args(["a", "b", "c"])
    r.eval(scripts.SAVE, len(keys), *keys, *args)
    k = ["relay:user:u", "relay:held"]
    assert r.eval(scripts.DIRECT_USER, 2, *k, "n2", "x", 4, 1000) == 0
    assert r.llen("relay:session:P1:p") == 4
    assert r.eval(scripts.DIRECT_USER, 2, *k, "n2", "y", 4, 1000) == 0
    assert not r.exists("relay:session:P1", "relay:session:P1:p")
    # and the user's mark of a session gone is cleaned up on the next direct
    assert r.eval(scripts.DIRECT_USER, 2, *k, "n2", "z", 4, 1000) == 0
    assert r.hget("relay:user:u", "S1") is None
    r.close()


def test_presence_kept_for_saved_sessions_is_bounded_too(redis_server: Any) -> None:
    from relay.backends import scripts

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    keys, args = _save_args(["a"])
    args[2] = '{"lobby": ["E", 7]}'
    r.eval(scripts.SAVE, len(keys), *keys, *args)
    assert r.smembers("relay:{lobby}:saved") == {"P1"}
    assert 0 < r.pttl("relay:{lobby}:saved") <= 60_000
    presence = ["relay:{lobby}:saved"]
    assert (
        r.eval(scripts.PRESENCE, 1, *presence, "relay:{lobby}:ch", "0 - n - p", "p1", 3, 1000) == 1
    )
    assert (
        r.eval(scripts.PRESENCE, 1, *presence, "relay:{lobby}:ch", "0 - n - p", "p2", 3, 1000) == 1
    )
    assert r.lrange("relay:session:P1:p", 0, -1) == ["a", "p1", "p2"]
    # a fourth packet passes the bound: the session is forgotten, and the room's set tidied
    assert (
        r.eval(scripts.PRESENCE, 1, *presence, "relay:{lobby}:ch", "0 - n - p", "p3", 3, 1000) == 0
    )
    assert not r.exists("relay:session:P1", "relay:session:P1:p", "relay:{lobby}:saved")
    assert r.hget("relay:held", "S1") is None
    r.close()


def test_a_saved_session_expires_with_its_recovery_window(redis_server: Any) -> None:
    from relay.backends import scripts

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    keys, args = _save_args(["a"], ttl_ms=5_000)
    r.eval(scripts.SAVE, len(keys), *keys, *args)
    assert 0 < r.pttl("relay:session:P1") <= 5_000
    assert 0 < r.pttl("relay:session:P1:p") <= 5_000
    # a claim by another user leaves it alone; the right user takes it, once
    claim = ["relay:session:P1", "relay:session:P1:p", "relay:held", "relay:pid:P1", "s:n2"]
    assert r.eval(scripts.CLAIM, 5, *claim, "mallory", "n2", "P1") == [0, ""]
    got = r.eval(scripts.CLAIM, 5, *claim, "u", "n2", "P1")
    assert got[:4] == [1, "S1", "{}", ["a"]] and 0 < got[4] <= 5_000
    assert r.hget("relay:held", "S1") == "n2 P1"
    assert r.eval(scripts.CLAIM, 5, *claim, "u", "n2", "P1") == [0, ""]
    r.close()
