"""Who a connection is: open mode (``auth.user``) or HS256 tokens (``auth.token``).

With no secret configured relay runs open: a client may name itself with ``auth: {user}``.
With ``RELAY_SECRET`` set, a connection needs ``auth: {token}``: a JWT signed HS256 with that
secret, whose ``sub`` is the user and whose optional ``rooms`` claim lists the room patterns
(``*`` matches any run of characters, ``:`` included; the whole name must match; case
matters) the user may join, publish to and look at. ``exp`` and ``nbf`` are honoured; only
HS256 is accepted, so a token cannot pick its own algorithm (``none`` included).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from relay import names
from relay.errors import BadRequest, Forbidden, RelayError, Unauthorized

ALGORITHM = "HS256"
LEEWAY_S = 5  # clocks of token issuers and relay may differ by a few seconds


#: a token's ``rooms`` claim may hold at most this many patterns, each at most this long
MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 256


class Glob:
    """One room pattern: ``*`` matches any run of characters, the rest itself; whole names.

    Matching takes time linear in the name and the pattern, whatever the pattern (a regex of
    ``.*`` runs backtracks: ``*a*a*a*a*a*b`` took seconds against a 128-character name): the
    pattern is cut at its stars, the first piece must start the name, the last must end it,
    and each piece between is found at its leftmost place after the one before, which is
    always the right choice when nothing but ``*`` is special.
    """

    __slots__ = ("_exact", "_head", "_middle", "_min", "_tail")

    def __init__(self, pattern: str) -> None:
        pieces = pattern.split("*")
        self._exact = pattern if len(pieces) == 1 else None
        self._head = pieces[0]
        self._tail = pieces[-1] if len(pieces) > 1 else ""
        self._middle = tuple(p for p in pieces[1:-1] if p)
        self._min = len(self._head) + len(self._tail) + sum(map(len, self._middle))

    def match(self, name: str) -> bool:
        if self._exact is not None:
            return name == self._exact
        if len(name) < self._min or not name.startswith(self._head):
            return False
        end = len(name) - len(self._tail)
        if not name.endswith(self._tail):
            return False
        pos = len(self._head)
        for piece in self._middle:
            found = name.find(piece, pos, end)
            if found < 0:
                return False
            pos = found + len(piece)
        return True


class Matcher:
    """Whether a room name matches any of a token's patterns."""

    __slots__ = ("_globs",)

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._globs = tuple(Glob(p) for p in dict.fromkeys(patterns))

    def fullmatch(self, name: str) -> bool:
        return any(glob.match(name) for glob in self._globs)


@functools.lru_cache(maxsize=4096)
def compile_patterns(patterns: tuple[str, ...]) -> Matcher:
    """The matcher of a ``rooms`` claim, made once per distinct claim (every connection of a
    token, and every token with the same rooms, share it)."""
    return Matcher(patterns)


@dataclass(frozen=True, slots=True)
class Identity:
    """The user behind a connection, the rooms it may use (``None``: any room), and when its
    token expires (Unix seconds; ``None``: never, or no token)."""

    user: str | None
    rooms: tuple[str, ...] | None = None
    _matcher: Matcher | None = None
    expires: float | None = None

    @classmethod
    def scoped(
        cls, user: str | None, rooms: tuple[str, ...] | None, expires: float | None = None
    ) -> Identity:
        matcher = compile_patterns(rooms) if rooms is not None else None
        return cls(user, rooms, matcher, expires)

    def allows(self, room: str) -> bool:
        return self._matcher is None or self._matcher.fullmatch(room)

    def check_room(self, room: str, action: str) -> None:
        if not self.allows(room):
            raise Forbidden(f"this token may not {action} room {room!r}")


OPEN = Identity(None)


def room_patterns(
    value: Any, what: str, error: type[RelayError] = Unauthorized
) -> tuple[str, ...] | None:
    """``value`` as room patterns (a token's claim, a connect hook's answer), bounded in count
    and length, or ``error`` saying what (``what``: "the token's 'rooms' claim") is wrong."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise error(f"{what} must be a list of room patterns")
    if len(value) > MAX_PATTERNS or any(len(p) > MAX_PATTERN_LENGTH for p in value):
        raise error(
            f"{what} may hold at most {MAX_PATTERNS} patterns of at most"
            f" {MAX_PATTERN_LENGTH} characters"
        )
    return tuple(value)


def _expiry(value: Any) -> float | None:
    # (PyJWT checked ``exp`` already: a number, not past)
    return float(value) + LEEWAY_S if isinstance(value, int | float) else None


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
    return Identity.scoped(
        user,
        room_patterns(claims.get("rooms"), "the token's 'rooms' claim"),
        _expiry(claims.get("exp")),
    )


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
