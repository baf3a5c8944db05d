"""Validation of names and client payloads: pure functions, no I/O.

Room names are 1-128 characters, event and user names 1-64, all drawn from ASCII letters,
digits and ``_-.:@/``; so is an epoch a client sends back (1-64 of them). Reserved event names
cannot be published or sent directly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from relay.errors import BadRequest

#: one character of a name (relay.apispec puts it in the OpenAPI document's patterns)
ALLOWED_CHARS = r"[A-Za-z0-9_\-.:@/]"
ROOM_RE = re.compile(ALLOWED_CHARS + r"{1,128}")
NAME_RE = re.compile(ALLOWED_CHARS + r"{1,64}")

RESERVED_EVENTS = frozenset(
    {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
        "join",
        "leave",
        "publish",
        "direct",
        "presence",
    }
)

DEFAULT_EVENT = "message"


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def room_name(value: Any, field: str = "room") -> str:
    """Return ``value`` if it is a valid room name, else raise :class:`BadRequest`."""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string, got {type(value).__name__}")
    if ROOM_RE.fullmatch(value) is None:
        raise BadRequest(
            f"'{field}' must be 1-128 characters of A-Z a-z 0-9 _-.:@/, got {_describe(value)}"
        )
    return value


def user_name(value: Any, field: str = "user") -> str:
    """Return ``value`` if it is a valid user name, else raise :class:`BadRequest`."""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string, got {type(value).__name__}")
    if NAME_RE.fullmatch(value) is None:
        raise BadRequest(
            f"'{field}' must be 1-64 characters of A-Z a-z 0-9 _-.:@/, got {_describe(value)}"
        )
    return value


def event_name(value: Any) -> str:
    """Return the event to deliver: ``message`` when absent, else a valid, unreserved name."""
    if value is None:
        return DEFAULT_EVENT
    if not isinstance(value, str):
        raise BadRequest(f"'event' must be a string, got {type(value).__name__}")
    if NAME_RE.fullmatch(value) is None:
        raise BadRequest(
            f"'event' must be 1-64 characters of A-Z a-z 0-9 _-.:@/, got {_describe(value)}"
        )
    if value in RESERVED_EVENTS:
        raise BadRequest(f"'event' {value!r} is reserved and cannot be sent")
    return value


class NestedTooDeeply:
    """Stands in for the arguments of a client event whose JSON nests deeper than the decoder
    allows, so the event is still answered (``bad_request``) rather than silently dropped."""

    def __repr__(self) -> str:
        return "<nested too deeply>"


NESTED_TOO_DEEPLY = NestedTooDeeply()


def payload(args: Sequence[Any], event: str) -> dict[str, Any]:
    """The single object argument of a client event, with ``null`` fields dropped."""
    if args and args[0] is NESTED_TOO_DEEPLY:
        raise BadRequest(f"'{event}' payload is nested too deeply (JSON deeper than 1,024 levels)")
    if len(args) != 1 or not isinstance(args[0], dict):
        got = "no argument" if not args else ", ".join(type(a).__name__ for a in args)
        raise BadRequest(f"'{event}' takes one object argument, got {got}")
    # ``data`` is required and may be any JSON value, null included; other nulls mean absent.
    given: dict[str, Any] = args[0]
    if None not in given.values():  # the common case: nothing to drop, no copy
        return given
    return {k: v for k, v in given.items() if v is not None or k == "data"}


def offset(value: Any, field: str = "since") -> int:
    """A non-negative integer offset (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"'{field}' must be a non-negative integer, got {_describe(value)}")
    return value


def epoch(value: Any, field: str = "epoch") -> str:
    """An epoch as a ``join`` ack gave it: 1-64 characters of the name alphabet.

    Any such string is accepted (one the room never had is simply not its epoch); the bound
    keeps a client from making relay hold or compare something big.
    """
    if not isinstance(value, str):
        raise BadRequest(
            f"'{field}' must be a string (the epoch of a 'join' ack), got {type(value).__name__}"
        )
    if NAME_RE.fullmatch(value) is None:
        raise BadRequest(
            f"'{field}' must be 1-64 characters of A-Z a-z 0-9 _-.:@/ (the epoch of a 'join'"
            f" ack), got {_describe(value)}"
        )
    return value


def flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"'{field}' must be true or false, got {_describe(value)}")
    return value


def sid(value: Any, field: str = "to") -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise BadRequest(f"'{field}' must be a connection id (string), got {_describe(value)}")
    return value
