"""Who is connected, as whom, and in which rooms: pure bookkeeping, no I/O.

Rooms here are relay's own: client-chosen names never meet python-socketio's rooms (where every
sid has a room named after itself), so no room name can subscribe anyone to another
connection's direct messages. Every index is kept both ways, so a disconnect costs the number
of rooms that connection was in, not the number of rooms on the server.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.core.auth import OPEN, Identity
from relay.limits import Bucket


@dataclass(slots=True)
class Member:
    sid: str
    user: str | None
    rooms: set[str] = field(default_factory=set)
    identity: Identity = OPEN
    #: when it connected (Unix ms; a recovered session: when it came back)
    connected_at: int = 0
    #: this connection's rate limits (relay.core.service), made on first use
    publish_bucket: Bucket | None = None
    delivery_bucket: Bucket | None = None
    join_bucket: Bucket | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"sid": self.sid, "user": self.user}


class Registry:
    """Connections, users and room membership."""

    def __init__(self) -> None:
        self._members: dict[str, Member] = {}
        # room -> sids in join order (a dict is an insertion-ordered set)
        self._rooms: dict[str, dict[str, None]] = {}
        self._users: dict[str, set[str]] = {}
        # room -> a number that changes whenever its membership does (never reused: a room
        # emptied and filled again gets a new one), so a transport may cache its recipients
        self._versions: dict[str, int] = {}
        self._changes = itertools.count(1)

    def __len__(self) -> int:
        return len(self._members)

    def connect(self, sid: str, user: str | None, identity: Identity = OPEN) -> Member:
        member = Member(sid, user, identity=identity)
        self._members[sid] = member
        if user is not None:
            self._users.setdefault(user, set()).add(sid)
        return member

    def disconnect(self, sid: str) -> tuple[Member | None, list[str]]:
        """Forget ``sid``; returns it and the rooms it was in (each now left)."""
        member = self._members.pop(sid, None)
        if member is None:
            return None, []
        rooms = sorted(member.rooms)
        for room in rooms:
            self._remove(room, sid)
        member.rooms.clear()
        if member.user is not None:
            sids = self._users.get(member.user)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self._users[member.user]
        return member, rooms

    def get(self, sid: str) -> Member | None:
        return self._members.get(sid)

    def items(self) -> Iterable[tuple[str, Member]]:
        return self._members.items()

    def join(self, sid: str, room: str) -> bool:
        """Add ``sid`` to ``room``; False when it was already there."""
        member = self._members[sid]
        if room in member.rooms:
            return False
        member.rooms.add(room)
        self._rooms.setdefault(room, {})[sid] = None
        self._versions[room] = next(self._changes)
        return True

    def leave(self, sid: str, room: str) -> bool:
        """Remove ``sid`` from ``room``; False when it was not there."""
        member = self._members.get(sid)
        if member is None or room not in member.rooms:
            return False
        member.rooms.discard(room)
        self._remove(room, sid)
        return True

    def _remove(self, room: str, sid: str) -> None:
        sids = self._rooms.get(room)
        if sids is not None:
            sids.pop(sid, None)
            if sids:
                self._versions[room] = next(self._changes)
            else:
                del self._rooms[room]
                self._versions.pop(room, None)

    def sids(self, room: str) -> dict[str, None]:
        """The room's sids in join order (a live view: copy before awaiting)."""
        return self._rooms.get(room) or {}

    def version(self, room: str) -> int:
        """Changes whenever ``room``'s membership does; 0 for an empty room."""
        return self._versions.get(room, 0)

    def count(self, room: str) -> int:
        return len(self._rooms.get(room) or ())

    def occupied(self, room: str) -> bool:
        return room in self._rooms

    def members(self, room: str) -> list[Member]:
        return [self._members[sid] for sid in self.sids(room)]

    def user_count(self, user: str) -> int:
        """How many connections ``user`` has."""
        return len(self._users.get(user) or ())

    def sids_of_user(self, user: str) -> list[str]:
        return sorted(self._users.get(user) or ())

    def room_count(self) -> int:
        return len(self._rooms)

    def rooms_after(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` occupied rooms named after ``after``, sorted, with member counts
        (a heap selection: a page costs the number of rooms, not a sort of them all)."""
        rooms = self._rooms
        names = rooms if after is None else (room for room in rooms if room > after)
        return [(room, len(rooms[room])) for room in heapq.nsmallest(limit, names)]
