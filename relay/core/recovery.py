"""Connection state recovery: what a dropped connection missed, kept until it comes back.

Theory of operation
-------------------
Every connection gets a private session id, the ``pid``, in its Socket.IO CONNECT answer
(``{"sid", "pid"}``); official clients (socket.io-client 4.6+) remember it and send it back as
``auth.pid`` when they reconnect. python-socketio clients ignore it.

When a connection is lost for a transport reason (the socket closed or errored, or it stopped
answering pings) rather than because either side said goodbye, relay does two things at once:

- for everyone else, the connection disconnects as it always did: it leaves its rooms and their
  members hear a presence ``leave`` (presence only ever lists reachable connections);
- here, a :class:`Session` remembers its sid, user, rooms and pid for ``ttl`` seconds, and
  collects, in order, every packet that would have been written to it meanwhile: the messages
  and presence events of the rooms it was in, and direct messages to its sid or its user.

A reconnect whose ``auth.pid`` names a live session (same user, and a token that still allows
its rooms) takes over the old sid, rejoins the rooms (members hear a presence ``join``), is
answered ``{"sid": old sid, "pid": same pid}`` (the client's ``socket.recovered`` becomes true),
then receives the collected packets before anything live. Any other reconnect is a new
connection. Collecting and replaying happen in the same event-loop steps as live delivery, so
nothing is lost between the two and nothing is delivered twice.

While a session waits, the rooms it was in stay known to relay.core.history even if nobody else is
in them and they hold no message (``Relay.in_use``): they keep their offsets and epoch, so what
the session collects, and what its client already saw, still count in the same ones when it
comes back.

Bounds: a session holds at most ``max_packets`` packets and ``max_bytes`` of them (the
per-connection send buffer, the most a live connection may have queued); past either, or past
``ttl``, it is forgotten and a reconnect starts afresh. All sessions together hold at most
``max_total`` bytes: a client that drops connection after connection and sends their sids
direct messages would otherwise make the server keep ``max_bytes`` for each of them. A session
whose next packet would pass that bound is forgotten, like one that missed too much. Packets
are the very strings other recipients got (encoded once), so a session costs a reference per
packet, not a copy (the byte counts count them anyway: a direct message's packet is its own).

In cluster mode a session may also move to the node its client reconnects to (or be saved in
Redis when its node shuts down): :mod:`relay.backends.handover`. Such a session comes back
with ``offsets`` (per room, the epoch and the last offset it got), from which its rooms are
rejoined; :meth:`Recovery.take` forgets one that moved without calling ``ended``.

What this cannot do: packets already written to the old socket when it died, but never read by
the client, are gone (the server cannot tell them from packets the client did read without
per-packet acknowledgements from the client, which relay's envelopes do not carry).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("relay.core.recovery")

#: at most this many packets are kept for one dropped connection
MAX_PACKETS = 1000


@dataclass(slots=True, eq=False)
class Session:
    """A dropped connection waiting to be recovered."""

    sid: str
    pid: str
    user: str | None
    rooms: tuple[str, ...]
    deadline: float
    packets: deque[str] = field(default_factory=deque)
    size: int = 0
    #: a reconnect is taking this session over (it may no longer be found, still collects)
    reserved: bool = False
    #: it left this process for another (relay.backends.handover): its end is no end
    moved: bool = False
    #: a session brought from another node: room -> (epoch, the last offset it got), from
    #: which it rejoins each room; None for one of this process (its rooms never stopped)
    offsets: dict[str, tuple[str, int]] | None = None


class Recovery:
    """Pids of live connections and the sessions of dropped ones; no I/O."""

    def __init__(
        self,
        ttl_s: float,
        max_bytes: int,
        max_packets: int = MAX_PACKETS,
        clock: Callable[[], float] = time.monotonic,
        max_total: int = 0,
    ) -> None:
        self.ttl = ttl_s
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self.max_total = max_total  # 0: no bound across sessions
        #: bytes collected by every session together
        self.total = 0
        #: sessions forgotten because they (or all together) missed too much
        self.overflowed = 0
        self._clock = clock
        self._pids: dict[str, str] = {}  # live sid -> pid
        self._by_pid: dict[str, Session] = {}
        self._by_sid: dict[str, Session] = {}
        self._by_room: dict[str, dict[str, Session]] = {}
        self._by_user: dict[str, dict[str, Session]] = {}
        #: told of every session that ends here (expired, overflowed, claimed; not one that
        #: moved to another node): a cluster backend forgets what it wrote of it
        self.ended: Callable[[Session], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        """Sessions waiting to be recovered."""
        return len(self._by_sid)

    # -- live connections ----------------------------------------------------------------------

    def issue(self, sid: str) -> str | None:
        """A fresh pid for the new connection ``sid`` (None when recovery is off)."""
        if not self.enabled:
            return None
        pid = self._pids[sid] = secrets.token_urlsafe(16)
        return pid

    def pid_of(self, sid: str) -> str | None:
        return self._pids.get(sid)

    def adopt(self, sid: str, pid: str) -> None:
        """``sid`` (a session brought from another node) is live here under ``pid``."""
        self._pids[sid] = pid

    def forget(self, sid: str) -> None:
        """``sid`` is gone for good (it said goodbye, or was refused)."""
        self._pids.pop(sid, None)

    def hold(self, sid: str, user: str | None, rooms: Iterable[str]) -> Session | None:
        """``sid`` lost its transport: keep its session for ``ttl`` seconds."""
        pid = self._pids.pop(sid, None)
        if pid is None or not self.enabled:
            return None
        session = Session(sid, pid, user, tuple(rooms), self._clock() + self.ttl)
        self._by_pid[pid] = session
        self._by_sid[sid] = session
        for room in session.rooms:
            self._by_room.setdefault(room, {})[sid] = session
        if user is not None:
            self._by_user.setdefault(user, {})[sid] = session
        return session

    def session_of(self, sid: str) -> Session | None:
        """The session ``sid`` left behind, while it waits."""
        return self._by_sid.get(sid)

    def sessions(self) -> list[Session]:
        """Every session waiting to be recovered."""
        return list(self._by_sid.values())

    def holds(self, room: str) -> bool:
        """Whether a session waiting to be recovered was in ``room``."""
        return room in self._by_room

    # -- coming back ---------------------------------------------------------------------------

    def find(self, pid: str) -> Session | None:
        """The unexpired, unreserved session ``pid`` names, if any."""
        session = self._by_pid.get(pid)
        if session is None or session.reserved:
            return None
        if self._clock() >= session.deadline:
            self._drop(session)
            return None
        return session

    def reserve(self, session: Session) -> None:
        """A reconnect is taking ``session`` over: no other may find it meanwhile."""
        session.reserved = True

    def release(self, session: Session) -> None:
        """The takeover did not happen after all: ``session`` may be found again."""
        session.reserved = False

    def claim(self, session: Session) -> list[str]:
        """End ``session``: its sid is live again (same pid); returns what it collected."""
        if self._by_sid.get(session.sid) is not session:
            return []
        missed = list(session.packets)
        self._drop(session)
        self._pids[session.sid] = session.pid
        return missed

    def take(self, session: Session) -> list[str]:
        """``session`` moves to another node: forget it here; returns what it collected."""
        if self._by_sid.get(session.sid) is not session:
            return []
        missed = list(session.packets)
        session.moved = True
        self._drop(session)
        return missed

    # -- collecting ----------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Whether any session is collecting (the callers' fast check)."""
        return bool(self._by_sid)

    def holds_room(self, room: str) -> bool:
        """Whether a held session was in ``room`` (it must go on collecting its traffic)."""
        return room in self._by_room

    def to_room(self, room: str, packet: str) -> int:
        """Collect a packet sent to ``room``'s members; returns how many sessions took it."""
        sessions = self._by_room.get(room)
        if not sessions:
            return 0
        return sum(self._add(s, packet) for s in list(sessions.values()))

    def to_user(self, user: str, packet: str) -> int:
        sessions = self._by_user.get(user)
        if not sessions:
            return 0
        return sum(self._add(s, packet) for s in list(sessions.values()))

    def to_sid(self, sid: str, packet: str) -> int:
        session = self._by_sid.get(sid)
        return 0 if session is None else self._add(session, packet)

    def _add(self, session: Session, packet: str) -> bool:
        n = len(packet)
        size = session.size + n
        if (
            len(session.packets) >= self.max_packets
            or size > self.max_bytes
            or (self.max_total and self.total + n > self.max_total)
        ):
            # It missed more than it may be given back: a reconnect starts afresh.
            log.info("%s missed too much to be recovered", session.sid)
            self._drop(session)
            self.overflowed += 1
            return False
        session.packets.append(packet)
        session.size = size
        self.total += n
        return True

    # -- housekeeping --------------------------------------------------------------------------

    def expire(self) -> int:
        """Forget the sessions past their deadline; returns how many."""
        now = self._clock()
        old = [s for s in self._by_sid.values() if now >= s.deadline]
        for session in old:
            self._drop(session)
        return len(old)

    def _drop(self, session: Session) -> None:
        if self._by_sid.get(session.sid) is not session:
            return
        del self._by_sid[session.sid]
        self._by_pid.pop(session.pid, None)
        for room in session.rooms:
            _discard(self._by_room, room, session.sid)
        if session.user is not None:
            _discard(self._by_user, session.user, session.sid)
        session.packets.clear()
        self.total -= session.size
        session.size = 0
        if self.ended is not None and not session.moved:
            self.ended(session)


def _discard(index: dict[str, dict[str, Session]], key: str, sid: str) -> None:
    sessions = index.get(key)
    if sessions is not None:
        sessions.pop(sid, None)
        if not sessions:
            del index[key]


__all__ = ["MAX_PACKETS", "Recovery", "Session"]
