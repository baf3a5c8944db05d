"""relay.core.webhooks' pure parts: signing, checking, backoff, the publish match cache."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from relay.core import webhooks
from relay.core.rooms import Member
from relay.core.webhooks import Webhooks, backoff, check_signature, event_dict, retry_after, sign
from relay.settings import Settings
from tests.conftest import ROOT


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"events":[]}'
    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == "sha256=" + mac
    assert check_signature("k", "1700000000", "sha256=" + mac, body, now=1700000100) is None


def test_check_signature_names_what_is_wrong() -> None:
    body = b"{}"
    good = sign("k", 1000, body)
    assert "match" in (check_signature("other", "1000", good, body, now=1000) or "")
    assert "match" in (check_signature("k", "1000", good, b"{ }", now=1000) or "")
    assert "301 s off" in (check_signature("k", "1000", good, body, now=1301) or "")
    assert "Unix seconds" in (check_signature("k", "soon", good, body, now=1000) or "")
    assert "header" in (check_signature("k", None, good, body, now=1000) or "")


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    assert [backoff(n, lambda: 1.0) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert backoff(1, lambda: 0.0) == 0.125
    assert backoff(50, lambda: 1.0) == webhooks.BACKOFF_CAP_S


def test_retry_after_takes_seconds_only() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(" 1.5 ") == 1.5
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after(None) is None


def test_event_dict_has_room_only_where_it_applies() -> None:
    assert event_dict(("connect", 5, "s", None, None)) == {
        "name": "connect", "ts": 5, "sid": "s", "user": None}  # fmt: skip
    assert event_dict(("publish", 5, "s", "u", "r", "chat", 3)) == {
        "name": "publish", "ts": 5, "sid": "s", "user": "u", "room": "r", "event": "chat",
        "offset": 3}  # fmt: skip


def test_publish_patterns_match_whole_names_and_the_cache_is_bounded() -> None:
    settings = Settings(
        webhook_url="http://127.0.0.1:1/", webhook_secret="k", webhook_publish=("chat.*", "a*b")
    )
    hooks = Webhooks(settings, lambda: 0)
    for event in ("chat.x", "chat.", "xchat.x", "ab", "a-b", "abc", "chat"):
        hooks.published("s", None, "r", event, 1)
    assert [e[5] for e in hooks._queue] == ["chat.x", "chat.", "ab", "a-b"]
    for i in range(webhooks.MATCH_CACHE_SIZE * 2):
        hooks.published("s", None, "r", f"e{i}", 1)
    assert len(hooks._wanted) <= webhooks.MATCH_CACHE_SIZE


def test_a_full_queue_drops_and_counts() -> None:
    settings = Settings(webhook_url="http://127.0.0.1:1/", webhook_secret="k", webhook_queue=3)
    hooks = Webhooks(settings, lambda: 0)
    member = Member("s", "u")
    for _ in range(5):
        hooks.connected(member)
    assert hooks.describe()["queued"] == 3
    assert hooks.dropped["queue_full"] == 2


def test_the_readmes_verifier_accepts_relays_signature() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Webhooks") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```", start)]
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    body = b'{"events":[]}'
    now = int(time.time())
    headers = {"X-Relay-Timestamp": str(now), "X-Relay-Signature": sign("k", now, body)}
    assert namespace["verify"](b"k", headers, body) is True
    assert namespace["verify"](b"other", headers, body) is False
    stale = {"X-Relay-Timestamp": str(now - 400), "X-Relay-Signature": sign("k", now - 400, body)}
    assert namespace["verify"](b"k", stale, body) is False


def test_room_occupancy_is_the_caller_s_to_report_when_decided_elsewhere() -> None:
    settings = Settings(webhook_url="http://127.0.0.1:1/", webhook_secret="k")
    here, elsewhere = Webhooks(settings, lambda: 7), Webhooks(settings, lambda: 7)
    elsewhere.rooms_here = False  # (a cluster: Redis decides a room's first and last member)
    alice = Member("s1", "alice")
    for hooks in (here, elsewhere):
        hooks.joined(alice, "r", True)
        hooks.left(alice, "r", True)
    assert [e[0] for e in here._queue] == ["join", "room_occupied", "leave", "room_vacated"]
    assert [e[0] for e in elsewhere._queue] == ["join", "leave"]
    elsewhere.occupied("s1", "alice", "r")
    elsewhere.vacated("s2", None, "r")
    assert [event_dict(e) for e in list(elsewhere._queue)[2:]] == [
        {"name": "room_occupied", "ts": 7, "sid": "s1", "user": "alice", "room": "r"},
        {"name": "room_vacated", "ts": 7, "sid": "s2", "user": None, "room": "r"},
    ]
