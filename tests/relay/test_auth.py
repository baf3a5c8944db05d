"""Token and open-mode identities: pure, no sockets."""

from __future__ import annotations

import time

import jwt
import pytest

from relay.auth import authenticate, compile_patterns, issue_token, verify_token
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
    ],
)
def test_room_patterns_match_whole_names(patterns: list[str], room: str, allowed: bool) -> None:
    assert (compile_patterns(patterns).fullmatch(room) is not None) is allowed


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
