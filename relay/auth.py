"""Who a connection is: open mode (``auth.user``) or HS256 tokens (``auth.token``).

With no secret configured relay runs open: a client may name itself with ``auth: {user}``.
With ``RELAY_SECRET`` set, a connection needs ``auth: {token}``: a JWT signed HS256 with that
secret, whose ``sub`` is the user and whose optional ``rooms`` claim lists the room patterns
(``*`` matches any run of characters, ``:`` included; the whole name must match; case
matters) the user may join, publish to and look at. ``exp`` and ``nbf`` are honoured; only
HS256 is accepted, so a token cannot pick its own algorithm (``none`` included).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from relay import names
from relay.errors import BadRequest, Forbidden, Unauthorized

ALGORITHM = "HS256"
LEEWAY_S = 5  # clocks of token issuers and relay may differ by a few seconds


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex matching a whole room name against any of ``patterns``."""
    parts = ["".join(".*" if c == "*" else re.escape(c) for c in p) for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts) or "(?!)")


@dataclass(frozen=True, slots=True)
class Identity:
    """The user behind a connection and the rooms it may use (``None``: any room)."""

    user: str | None
    rooms: tuple[str, ...] | None = None
    _matcher: re.Pattern[str] | None = None

    @classmethod
    def scoped(cls, user: str | None, rooms: tuple[str, ...] | None) -> Identity:
        matcher = compile_patterns(rooms) if rooms is not None else None
        return cls(user, rooms, matcher)

    def allows(self, room: str) -> bool:
        return self._matcher is None or self._matcher.fullmatch(room) is not None

    def check_room(self, room: str, action: str) -> None:
        if not self.allows(room):
            raise Forbidden(f"this token may not {action} room {room!r}")


OPEN = Identity(None)


def _rooms_claim(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise Unauthorized("the token's 'rooms' claim must be a list of room patterns")
    return tuple(value)


def verify_token(token: Any, secret: str) -> Identity:
    """Check an HS256 token and return its identity, or raise :class:`Unauthorized`."""
    if not isinstance(token, str) or not token:
        raise Unauthorized("a token is required: connect with auth: {token}")
    options = {"require": ["sub"]}
    try:
        with warnings.catch_warnings():
            # Short secrets are the operator's choice; PyJWT's advice belongs in the docs.
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options=options,  # type: ignore[arg-type]
                leeway=LEEWAY_S,
            )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized("the token is not valid yet (nbf)") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthorized("only HS256 tokens are accepted") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("the token's signature does not match the server's secret") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"the token is not valid: {exc}") from None
    sub = claims.get("sub")
    try:
        user = names.user_name(sub, "sub")
    except BadRequest as exc:
        raise Unauthorized(f"the token's {exc.message}") from None
    return Identity.scoped(user, _rooms_claim(claims.get("rooms")))


def authenticate(auth: Any, secret: str | None) -> Identity:
    """The identity of a connecting client from its Socket.IO ``auth`` object."""
    if auth is not None and not isinstance(auth, Mapping):
        raise BadRequest(f"'auth' must be an object, got {type(auth).__name__}")
    auth = auth or {}
    if secret is None:
        user = auth.get("user")
        return OPEN if user is None else Identity(names.user_name(user))
    return verify_token(auth.get("token"), secret)


def issue_token(
    secret: str,
    user: str,
    rooms: Iterable[str] | None = None,
    ttl_s: float | None = 3600,
    now: float | None = None,
) -> str:
    """Sign a token for ``user`` (what ``relay token`` prints)."""
    names.user_name(user)
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": user, "iat": issued}
    if rooms is not None:
        claims["rooms"] = list(rooms)
    if ttl_s is not None:
        claims["exp"] = issued + int(ttl_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=ALGORITHM)
