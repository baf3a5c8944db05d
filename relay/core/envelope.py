"""Envelopes and their wire form, encoded once per message.

A message is encoded to its Socket.IO EVENT packet text (``2["event",{envelope}]``) exactly once,
when it is accepted; every recipient, live or replaying history, receives those same bytes.
``data`` is serialized once too: the size check and the envelope share one encoding.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

from relay.errors import BadRequest, TooLarge

#: orjson encodes at most 255 levels of arrays and objects; the envelope adds one.
MAX_DEPTH = 254


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class IdFactory:
    """Short ids unique across processes: a random prefix per process, then a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(5).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


def encode_data(data: Any, limit: int) -> bytes:
    """Serialize ``data`` as JSON, enforcing the payload ``limit`` in bytes."""
    try:
        raw = orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError) as exc:
        if "recursion" in str(exc).lower():
            raise BadRequest(f"'data' is nested too deeply (at most {MAX_DEPTH} levels)") from None
        raise BadRequest(
            f"'data' must be JSON (objects, arrays, strings, numbers): {exc}"
        ) from None
    if len(raw) > limit:
        raise TooLarge(f"'data' is {len(raw)} bytes as JSON; the limit is {limit}")
    return raw


@dataclass(slots=True)
class Message:
    """One accepted message: its routing fields and the packet every recipient gets.

    Treat it as immutable. The packet is the only copy of the message's content (the parsed
    ``data`` is not kept: a history of large messages would cost several times its size);
    :meth:`envelope_json` cuts the envelope out of it without decoding, and :attr:`envelope`
    decodes it for whoever needs the dict.
    """

    id: str
    room: str | None
    event: str
    offset: int | None
    ts: int
    packet: str

    def envelope_json(self) -> str:
        """The envelope as JSON text, sliced out of ``packet`` (``2["<event>",{...}]``).

        No decode and re-encode: a page of history costs a copy of its bytes, and data nested
        as deep as the encoder allowed once is never re-encoded one level deeper.
        """
        return self.packet[len(self.event) + 5 : -1]

    @property
    def envelope(self) -> dict[str, Any]:
        return orjson.loads(self.envelope_json())  # type: ignore[no-any-return]

    @property
    def size(self) -> int:
        """What the message costs in memory, roughly: its packet and a fixed overhead."""
        return len(self.packet) + MESSAGE_OVERHEAD


#: bytes a kept message costs beyond its packet's characters (the object, its id, the
#: packet's header, its slot in a room's deque), measured with ``sys.getsizeof``
MESSAGE_OVERHEAD = 256


def build(
    *,
    id: str,
    room: str | None,
    event: str,
    sender_sid: str | None,
    sender_user: str | None,
    data_json: bytes,
    offset: int | None,
    ts: int,
) -> Message:
    """Make the message and its Socket.IO packet text from already-encoded ``data``."""
    head = {
        "id": id,
        "room": room,
        "event": event,
        "from": {"sid": sender_sid, "user": sender_user},
        "data": orjson.Fragment(data_json),
        "offset": offset,
        "ts": ts,
    }
    packet = "2" + orjson.dumps([event, head]).decode()
    return Message(id, room, event, offset, ts, packet)


def event_packet(event: str, payload: Any) -> str:
    """Socket.IO EVENT packet text for a server-generated event such as ``presence``."""
    return "2" + orjson.dumps([event, payload]).decode()
