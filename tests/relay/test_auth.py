"""Token and open-mode identities: pure, no sockets."""

from __future__ import annotations

import re
import time

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.auth import authenticate, compile_patterns, issue_token, verify_token
from relay.errors import BadRequest, Forbidden, Unauthorized

SECRET = "test-secret-with-enough-length-for-hs256"


def test_open_mode_names_user_or_none() -> None:
    assert authenticate(None, None).user is None
    assert authenticate({"user": "alice"}, None).user == "alice"
    assert authenticate({"user": "alice"}, None).allows("anything")
    with pytest.raises(BadRequest):
        authenticate({"user": "bad name!"}, None)
    with pytest.raises(BadRequest):
        authenticate("alice", None)


@pytest.mark.parametrize(
    ("patterns", "room", "allowed"),
    [
        (["lobby"], "lobby", True),
        (["lobby"], "lobby2", False),
        (["lobby"], "Lobby", False),
        (["team-42:*"], "team-42:general", True),
        (["team-42:*"], "team-42:a:b", True),
        (["team-42:*"], "team-43:general", False),
        (["*"], "x", True),
        (["a.b"], "axb", False),
        ([], "lobby", False),
        (["a*a"], "a", False),
        (["a*a"], "aa", True),
        (["a*b*c"], "abc", True),
        (["a*b*c"], "acb", False),
        (["*:*"], "x:", True),
        (["**"], "", True),
        (["x*", "*y"], "ay", True),
        (["*a*a*a*a*a*b"], "a" * 127 + "b", True),
        (["*a*a*a*a*a*b"], "a" * 128, False),
    ],
)
def test_room_patterns_match_whole_names(patterns: list[str], room: str, allowed: bool) -> None:
    assert compile_patterns(tuple(patterns)).fullmatch(room) is allowed


def _reference(patterns: list[str], name: str) -> bool:
    """The contract's meaning, as a (backtracking) regex: fine for short strings."""
    parts = ["".join(".*" if c == "*" else re.escape(c) for c in p) for p in patterns]
    return any(re.fullmatch(p, name, re.DOTALL) for p in parts)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.text(alphabet="ab*:", max_size=8), max_size=3),
    st.text(alphabet="ab:", max_size=10),
)
def test_room_patterns_agree_with_the_regex_meaning(patterns: list[str], name: str) -> None:
    assert compile_patterns(tuple(patterns)).fullmatch(name) is _reference(patterns, name)


def test_room_patterns_take_linear_time() -> None:
    # As a regex, this pattern against 128 characters backtracked for 3.4 s per check.
    matcher = compile_patterns(("*a*a*a*a*a*b", "*a*a*a*a*a*a*a*a*a*a*c"))
    name = "a" * 128
    start = time.process_time()
    for _ in range(1000):
        assert matcher.fullmatch(name) is False
    assert time.process_time() - start < 1.0


def test_room_patterns_are_compiled_once_per_claim() -> None:
    first = verify_token(issue_token(SECRET, "alice", rooms=["team-7:*"]), SECRET)
    second = verify_token(issue_token(SECRET, "bob", rooms=["team-7:*"]), SECRET)
    assert first._matcher is not None and first._matcher is second._matcher


def test_a_rooms_claim_is_bounded() -> None:
    with pytest.raises(Unauthorized, match="at most 100 patterns"):
        verify_token(issue_token(SECRET, "alice", rooms=[f"r{i}" for i in range(101)]), SECRET)
    with pytest.raises(Unauthorized, match="at most 100 patterns"):
        verify_token(issue_token(SECRET, "alice", rooms=["a" * 257]), SECRET)


def test_a_token_expiry_is_part_of_the_identity() -> None:
    now = time.time()
    identity = verify_token(issue_token(SECRET, "alice", ttl_s=60, now=now), SECRET)
    assert identity.expires is not None and now + 60 <= identity.expires <= now + 70
    assert verify_token(issue_token(SECRET, "alice", ttl_s=None), SECRET).expires is None


def test_valid_token_gives_user_and_rooms() -> None:
    token = issue_token(SECRET, "alice", rooms=["lobby", "team-42:*"])
    identity = authenticate({"token": token}, SECRET)
    assert identity.user == "alice"
    assert identity.allows("team-42:x") and not identity.allows("other")
    identity.check_room("lobby", "join")
    with pytest.raises(Forbidden):
        identity.check_room("other", "join")
    assert verify_token(issue_token(SECRET, "bob"), SECRET).allows("anything")


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "not.a.jwt",
        jwt.encode({"sub": "alice"}, "another-secret-of-sufficient-len", algorithm="HS256"),
        jwt.encode({"sub": "alice"}, SECRET * 2, algorithm="HS512"),
        jwt.encode({"sub": "alice"}, None, algorithm="none"),  # type: ignore[arg-type]
        jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "alice", "nbf": int(time.time()) + 600}, SECRET, algorithm="HS256"),
        jwt.encode({"user": "alice"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "bad name!"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "alice", "rooms": "lobby"}, SECRET, algorithm="HS256"),
    ],
)
def test_bad_tokens_are_unauthorized(token: object) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticate({"token": token}, SECRET)
    assert info.value.code == "unauthorized" and info.value.message


def test_short_secrets_work_without_warnings() -> None:
    token = issue_token("s3cret", "alice")
    assert verify_token(token, "s3cret").user == "alice"


def test_user_without_token_is_refused_when_a_secret_is_set() -> None:
    with pytest.raises(Unauthorized):
        authenticate({"user": "alice"}, SECRET)
