"""Per-room offsets and history: the memory behind ``since`` and recovery.

Theory of operation
-------------------
Each room relay knows of owns a :class:`RoomLog`: the last offset handed out, a deque of the
most recent messages, oldest first, and the room's *epoch*. A room is known from its first
member or its first message until it has neither (then it is forgotten, and its offsets start
again from 1). Offsets start at 1 and grow by one per message, so the deque is always a
contiguous run ``[first, ..., last]`` and a lookup by offset is arithmetic, not a search.

The epoch names one life of a room's offsets: a random string drawn when its log is made at
offset 0, so it differs after the room is forgotten and made again, and after a restart (a
new process draws new ones). Offsets are only comparable within one epoch, so a ``since``
that comes with another epoch than the room's is answered as one beyond history: everything
held is replayed and ``recovered`` is false. It costs a string per room, nothing per message.

Three bounds apply to what is kept:

- a count per room (``size``), enforced on every append;
- an age (``ttl``), enforced lazily on every read and eagerly by :meth:`History.sweep`, which the
  server runs periodically;
- the bytes of every room together (``max_bytes``). Past it, rooms are trimmed to a common cap,
  oldest messages first, cutting only the biggest rooms (max-min fairness): a room that
  floods pays for its flood, and a quiet room keeps its history until everything else is as
  small as it is. One trim brings the total down to 90% of the bound, so the work of sorting
  the rooms is paid once per tenth of the bound appended, not on every message.

Trimming of any kind only moves a room's ``first`` offset forward, so a ``since`` older than
what is kept is answered ``recovered: false``, never with a silent gap.

Replay is decided here and delivered by the caller in the same event-loop step as the join
itself, so no live message can slip between the replayed tail and the first live one: the
two are merged by offset simply because nothing else runs in between.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from relay.core.envelope import Message

#: random bytes in an epoch (each 3 make 4 characters of URL-safe base64: 12 characters)
EPOCH_BYTES = 9


def new_epoch() -> str:
    """A fresh epoch: 12 URL-safe characters, 72 random bits (never the same one twice)."""
    return secrets.token_urlsafe(EPOCH_BYTES)


@dataclass(slots=True)
class RoomLog:
    last: int = 0
    messages: deque[Message] = field(default_factory=deque)
    #: what ``messages`` cost (:attr:`Message.size` summed)
    bytes: int = 0
    #: this life of the room's offsets (see the theory of operation)
    epoch: str = field(default_factory=new_epoch)

    @property
    def first(self) -> int:
        """Offset of the oldest message kept (``last + 1`` when none is)."""
        return self.last - len(self.messages) + 1


@dataclass(slots=True, frozen=True)
class Replay:
    messages: list[Message]
    recovered: bool


#: a trim for the global bound brings the total down to this share of it
TRIM_TO = 0.9


class History:
    """Offsets and bounded history for every room, with no I/O."""

    def __init__(
        self,
        size: int,
        ttl_s: float,
        clock_ms: Callable[[], int],
        max_bytes: int = 0,
    ) -> None:
        self.size = size
        self.ttl_ms = int(ttl_s * 1000)
        self.max_bytes = max_bytes  # 0: no global bound
        self._clock = clock_ms
        self._rooms: dict[str, RoomLog] = {}
        #: bytes kept in every room together
        self.bytes = 0
        #: messages dropped to keep the global bound (not those past their count or age)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, room: str) -> bool:
        return room in self._rooms

    def latest(self, room: str) -> int:
        """The room's latest offset, 0 for a room that never had a message."""
        log = self._rooms.get(room)
        return log.last if log is not None else 0

    def epoch(self, room: str) -> str | None:
        """The room's epoch, None for a room not known (it gets one when it is made)."""
        log = self._rooms.get(room)
        return log.epoch if log is not None else None

    def next_offset(self, room: str) -> int:
        log = self._rooms.get(room)
        return (log.last if log is not None else 0) + 1

    def touch(self, room: str) -> str:
        """Know ``room`` (it got a member) even before its first message; its epoch."""
        log = self._rooms.get(room)
        if log is None:
            log = self._rooms[room] = RoomLog()
        return log.epoch

    def append(self, room: str, message: Message) -> None:
        """Record ``message``, whose offset must be :meth:`next_offset`."""
        log = self._rooms.get(room)
        if log is None:
            log = self._rooms[room] = RoomLog()
        assert message.offset == log.last + 1, "offsets are handed out in order"
        log.last = message.offset
        if self.size <= 0:
            return
        messages = log.messages
        messages.append(message)
        size = message.size
        log.bytes += size
        self.bytes += size
        if len(messages) > self.size:
            self._pop(log)
        if self.max_bytes and self.bytes > self.max_bytes:
            self._evict()

    def _pop(self, log: RoomLog) -> None:
        size = log.messages.popleft().size
        log.bytes -= size
        self.bytes -= size

    def _evict(self) -> None:
        """Trim the biggest rooms to a common cap until the total is under ``TRIM_TO``."""
        excess = self.bytes - int(self.max_bytes * TRIM_TO)
        logs = sorted((log for log in self._rooms.values() if log.bytes), key=_by_bytes)
        logs.reverse()
        # water-filling: the cap is the largest level at which cutting every room above it
        # down to it frees ``excess`` bytes
        above = 0  # bytes of the rooms before logs[i]
        for i, log in enumerate(logs):
            level = log.bytes
            if above - i * level >= excess:
                # cutting rooms 0..i-1 down to a cap between their sizes and this one is enough
                cap = (above - excess) // i
                break
            above += level
        else:
            cap = max(0, (above - excess) // max(1, len(logs)))
        for log in logs:
            if log.bytes <= cap:
                break
            while log.bytes > cap and log.messages:
                self._pop(log)
                self.evicted += 1

    def _trim(self, log: RoomLog, now: int) -> None:
        cutoff = now - self.ttl_ms
        messages = log.messages
        while messages and messages[0].ts <= cutoff:
            self._pop(log)

    def replay(self, room: str, since: int, epoch: str | None = None) -> Replay:
        """What a ``join`` with ``since`` must replay, and whether that is all it missed.

        ``epoch``: the life of the room ``since`` counts in (None: the current one, whatever
        it is); another one than the room's is answered like a ``since`` beyond history.
        """
        log = self._rooms.get(room)
        if log is None:
            return Replay([], since == 0 and epoch is None)
        self._trim(log, self._clock())
        if since > log.last or (epoch is not None and epoch != log.epoch):
            # The client counts from a previous life of this room (a restart, or expiry).
            return Replay(list(log.messages), False)
        first = log.first
        start = max(since + 1, first)
        messages = list(_tail(log.messages, start - first))
        return Replay(messages, since + 1 >= first)

    def page(self, room: str, since: int, limit: int) -> list[Message]:
        """The oldest ``limit`` messages with an offset above ``since``."""
        log = self._rooms.get(room)
        if log is None or limit <= 0:
            return []
        self._trim(log, self._clock())
        first = log.first
        out: list[Message] = []
        for message in _tail(log.messages, max(since + 1, first) - first):
            out.append(message)
            if len(out) >= limit:
                break
        return out

    def sweep(self, occupied: Callable[[str], bool]) -> int:
        """Expire old messages; forget empty rooms nobody is in. Returns rooms dropped."""
        now = self._clock()
        dropped: list[str] = []
        for room, log in self._rooms.items():
            self._trim(log, now)
            if not log.messages and not occupied(room):
                dropped.append(room)
        for room in dropped:
            del self._rooms[room]
        return len(dropped)

    def forget_if_idle(self, room: str) -> None:
        """Drop ``room`` now if it holds no history (called when its last member leaves)."""
        log = self._rooms.get(room)
        if log is None:
            return
        self._trim(log, self._clock())
        if not log.messages:
            del self._rooms[room]


def _by_bytes(log: RoomLog) -> int:
    return log.bytes


def _tail(messages: deque[Message], skip: int) -> Iterator[Message]:
    """Iterate ``messages`` from index ``skip`` without copying what comes before."""
    if skip <= 0:
        yield from messages
        return
    if skip >= len(messages):
        return
    if skip > len(messages) // 2:
        # Walk back from the end: cheaper than skipping most of a long deque.
        n = len(messages) - skip
        tail = [messages[-i] for i in range(n, 0, -1)]
        yield from tail
        return
    for i, message in enumerate(messages):
        if i >= skip:
            yield message
