"""``relay listen``: print what arrives in some rooms (and direct messages), resuming across drops.

Theory of operation
-------------------
Every printed envelope of a room moves that room's watermark: the highest offset seen. Every
join ack names the room's epoch, the life of its offsets, and the listener remembers it. When
the connection drops, the listener reconnects with capped exponential backoff and joins each
room again with ``since`` = its watermark and ``epoch`` = the epoch it counted in, so the
server replays exactly what was missed, and any envelope at or below the watermark is dropped
as already printed.

The server replays before it acks the join, so envelopes of a room being joined are held until
its ack says how to read them. An ack naming another epoch means the room started counting
again (a restarted in-memory server, or a room forgotten after its history expired): its
offsets say nothing about what was printed, so the watermark is reset to 0 and everything held
is printed, once, since it is all new (however far the new life has got: comparing offsets
would take a restarted room that passed the old watermark for one that merely went on). Only
without an epoch to go by (the user's ``--since`` without ``--epoch``, or a server that names
none) are offsets compared: an ack whose ``offset`` is below a ``--since`` not yet vouched for
means ``--since`` was ahead of the room, and it says so; below a watermark printed, that the
room started again. ``recovered: false`` in the same epoch means history no longer reached
back: a warning says some were missed.

All of this runs synchronously inside the client's receive path, in arrival order, so printing
is naturally back-pressured: nothing is queued in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from relay import names
from relay.cli.console import fail, note, stdout_closed, stdout_console, warn
from relay.cli.help import Command
from relay.cli.options import DEFAULT_URL, AsUser, LegacyAsUser, Token, Url, connect_as
from relay.cli.render import HumanOutput, JsonOutput, Output, json_line
from relay.cli.urls import normalize_url
from relay.errors import BadRequest, Internal, RelayError, Unavailable

if TYPE_CHECKING:
    from relay.cli.client import Ack, Connection

app = typer.Typer()

BACKOFF_BASE = 0.25
BACKOFF_CAP = 5.0


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): doubling from ``base``."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass
class Resumed:
    """How a room's join went: ``kind`` is fresh, recovered, gap, restarted or ahead (the
    user's ``--since`` is past the room's latest offset). ``epoch`` is the room's now,
    ``was`` the one the join counted in (None when unknown)."""

    room: str
    since: int | None
    offset: int
    kind: str
    epoch: str | None = None
    was: str | None = None
    #: ``since`` and ``was`` were the user's (``--since``, ``--epoch``), not what was printed
    given: bool = False


@dataclass
class Tracker:
    """Per-room watermarks and epochs, and the envelopes held while a join's ack is pending."""

    seen: dict[str, int | None]
    holding: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: rooms whose watermark is still the user's ``--since``, not an offset printed
    given: set[str] = field(default_factory=set)
    #: the epoch each room's watermark counts in (from its last join ack, or ``--epoch``)
    epochs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_rooms(
        cls, rooms: Iterable[str], since: int | None, epoch: str | None = None
    ) -> Tracker:
        rooms = list(rooms)
        return cls(
            {room: since for room in rooms},
            given=set(rooms) if since is not None else set(),
            epochs={room: epoch for room in rooms} if epoch is not None else {},
        )

    def join_payload(self, room: str) -> dict[str, Any]:
        """The ``join`` to send for ``room`` now; holds its envelopes until :meth:`joined`."""
        self.holding[room] = []
        since = self.seen.get(room)
        if since is None:
            return {"room": room}
        epoch = self.epochs.get(room)
        if epoch is None:
            return {"room": room, "since": since}
        return {"room": room, "since": since, "epoch": epoch}

    def forget_joins(self) -> None:
        """The connection dropped: what was held will be replayed to the next one."""
        self.holding.clear()

    def envelope(self, env: dict[str, Any]) -> list[dict[str, Any]]:
        """Envelopes to print now for ``env`` (none while its room's join is pending)."""
        room = env.get("room")
        if not isinstance(room, str):
            return [env]  # direct: no offsets, nothing to dedupe
        held = self.holding.get(room)
        if held is not None:
            held.append(env)
            return []
        return self._admit(room, env)

    def _admit(self, room: str, env: dict[str, Any]) -> list[dict[str, Any]]:
        offset = env.get("offset")
        if not isinstance(offset, int):
            return [env]
        last = self.seen.get(room)
        if last is not None and offset <= last:
            return []
        self.seen[room] = offset
        self.given.discard(room)
        return [env]

    def joined(self, room: str, ack: Ack) -> tuple[Resumed, list[dict[str, Any]]]:
        """Apply ``room``'s join ack; return how it went and the held envelopes to print."""
        held = self.holding.pop(room, [])
        latest = int(ack.get("offset") or 0)
        epoch = ack.get("epoch") if isinstance(ack.get("epoch"), str) else None
        last = self.seen.get(room)
        was = self.epochs.get(room)
        given = room in self.given
        if last is None:
            kind = "fresh"
            self.seen[room] = latest
        elif was is not None and epoch is not None and epoch != was:
            # Another life of the room: its offsets are not ours, all it replayed is new.
            kind = "restarted"
            self.seen[room] = 0
        elif latest < last:
            # (no epoch to go by: offsets are all there is)
            kind = "ahead" if given else "restarted"
            self.seen[room] = 0
        elif ack.get("recovered") is False:
            kind = "gap"
        else:
            kind = "recovered"
        self.given.discard(room)  # from the first join on, the room has vouched for the mark
        if epoch is not None:
            self.epochs[room] = epoch
        out: list[dict[str, Any]] = []
        for env in held:
            out.extend(self._admit(room, env))
        return Resumed(room, last, latest, kind, epoch, was, given), out


@dataclass
class ListenOptions:
    url: str
    rooms: list[str]
    since: int | None = None
    #: the epoch ``since`` counts in (one room only: each room has its own)
    epoch: str | None = None
    events: frozenset[str] | None = None
    presence: bool = False
    count: int | None = None
    duration: float | None = None
    connect_timeout: float = 10.0
    auth: dict[str, Any] | None = None
    max_backoff: float = BACKOFF_CAP


class Listener:
    """Follows rooms over one connection at a time; :meth:`run` returns when done."""

    def __init__(
        self,
        opts: ListenOptions,
        out: Output,
        status: Callable[[dict[str, Any]], None] | None = None,
        log: Callable[[str], None] | None = None,
        alert: Callable[[str], None] | None = None,
    ) -> None:
        self.opts = opts
        self.out = out
        self.status = status or (lambda _: None)
        self.log = log or (lambda _: None)
        self.alert = alert or (lambda _: None)
        self.tracker = Tracker.for_rooms(opts.rooms, opts.since, opts.epoch)
        self.printed = 0
        self.wake = asyncio.Event()
        self.stopping = False
        self.fatal: BaseException | None = None
        self._dropped: str | None = None
        self._pending_joins: set[str] = set()
        self._reconnecting = False
        self.connecting = False

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    @property
    def done(self) -> bool:
        return self.stopping or (self.opts.count is not None and self.printed >= self.opts.count)

    async def run(self) -> int:
        """Listen until ``count``, ``duration`` or :meth:`stop`; return how many were printed."""
        from relay.cli.client import Connection

        loop = asyncio.get_running_loop()
        deadline = None if self.opts.duration is None else loop.time() + self.opts.duration
        attempt = 0
        while not self.done:
            conn = Connection(
                self.opts.url,
                timeout=self.opts.connect_timeout,
                auth=self.opts.auth,
                on_event=self._on_event,
                on_disconnect=self._on_drop,
            )
            try:
                self.connecting = True
                await self._open(conn)
                self.connecting = False
                if await self._follow(conn, deadline):
                    return self.printed
                attempt = 0
            except Unavailable as exc:
                if not self._reconnecting:
                    raise
                attempt += 1
                delay = backoff(attempt + 1, cap=self.opts.max_backoff)
                self.log(f"reconnect attempt {attempt} failed: {exc.message}; next in {delay:g}s")
                if await self._sleep(delay, deadline):
                    return self.printed
                continue
            finally:
                self.connecting = False
                await conn.close()
            delay = backoff(1, cap=self.opts.max_backoff)
            self.log(f"connection lost ({self._dropped}); reconnecting in {delay:g}s")
            self._reconnecting = True
            if await self._sleep(delay, deadline):
                return self.printed
        return self.printed

    async def _open(self, conn: Connection) -> None:
        self._dropped = None
        self.tracker.forget_joins()
        await conn.open()
        self._pending_joins = set(self.opts.rooms)
        for room in self.opts.rooms:
            await conn.emit("join", self.tracker.join_payload(room), self._join_callback(room))

    async def _follow(self, conn: Connection, deadline: float | None) -> bool:
        """Wait on this connection; True when done, False when it dropped."""
        loop = asyncio.get_running_loop()
        joins_due = loop.time() + conn.timeout
        announced = False
        while True:
            if self.fatal is not None:
                raise self.fatal
            if self.done:
                return True
            if self._dropped is not None:
                return False
            if not self._pending_joins and not announced:
                announced = True
                self._announce(conn)
            limits = [] if deadline is None else [deadline]
            if self._pending_joins:
                limits.append(joins_due)
            try:
                async with asyncio.timeout_at(min(limits) if limits else None):
                    await self.wake.wait()
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    return True
                raise Unavailable(
                    f"no answer to 'join' from {conn.url} within {conn.timeout:g}s"
                ) from None
            self.wake.clear()

    async def _sleep(self, delay: float, deadline: float | None) -> bool:
        """Back off for ``delay`` seconds; True when the listener should finish instead."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        if deadline is not None:
            until = min(until, deadline)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                while not self.done:
                    await self.wake.wait()
                    self.wake.clear()
        return self.done or (deadline is not None and loop.time() >= deadline)

    def _announce(self, conn: Connection) -> None:
        if self._reconnecting:
            self.log(f"reconnected as {_who(conn.sid, self.opts.auth)}")
            return
        tracker = self.tracker
        self.status(
            {
                "status": "listening",
                "sid": conn.sid,
                "user": (self.opts.auth or {}).get("user"),
                "rooms": [
                    {
                        "room": room,
                        "offset": tracker.seen.get(room),
                        "epoch": tracker.epochs.get(room),
                    }
                    for room in self.opts.rooms
                ],
            }
        )

    # -- receive path (synchronous, in arrival order) -------------------------------------------

    def _guard(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BrokenPipeError as exc:
            self.fatal = exc
        except RelayError as exc:
            self.fatal = exc
        except Exception as exc:
            self.fatal = Internal(f"listen failed: {type(exc).__name__}: {exc}")
        if self.fatal is not None:
            self.wake.set()

    def _join_callback(self, room: str) -> Callable[[Ack], None]:
        def on_ack(ack: Ack) -> None:
            self._guard(lambda: self._joined(room, ack))

        return on_ack

    def _joined(self, room: str, ack: Ack) -> None:
        from relay.cli.client import check_ack

        check_ack(ack, f"join {room}")
        resumed, envelopes = self.tracker.joined(room, ack)
        if resumed.kind == "restarted" and resumed.was is not None and resumed.epoch is not None:
            if resumed.given:
                self.alert(
                    f"{room} is no longer in your --epoch {resumed.was}: it started again "
                    f"(epoch {resumed.epoch}, at offset {resumed.offset}); printing all it has"
                )
            else:
                self.alert(
                    f"{room} starts again in epoch {resumed.epoch} (the server lost its "
                    f"history); printing all it has (to offset {resumed.offset})"
                )
        elif resumed.kind == "ahead":
            self.alert(
                f"{room} is at offset {resumed.offset}, behind your --since {resumed.since} "
                "(--since is ahead of the room): printing from its start"
            )
        elif resumed.kind == "restarted":
            self.alert(
                f"{room} starts again at offset {resumed.offset} (the server lost its history); "
                "printing all it has"
            )
        elif resumed.kind == "gap":
            self.alert(f"{room}: history no longer reaches back that far; some were missed")
        elif self._reconnecting:
            self.log(
                f"{room} resumed after offset {resumed.since} "
                f"({resumed.kind}; latest {resumed.offset})"
            )
        self._print(envelopes)
        self._pending_joins.discard(room)
        self.wake.set()

    def _on_event(self, event: str, data: Any) -> None:
        self._guard(lambda: self._event(event, data))

    def _event(self, event: str, data: Any) -> None:
        if self.done or not isinstance(data, dict):
            return
        if event == "presence" and "action" in data:
            if self.opts.presence:
                self.out.presence(data)
            return
        if "id" in data and "from" in data:
            self._print(self.tracker.envelope(data))

    def _print(self, envelopes: list[dict[str, Any]]) -> None:
        wanted = self.opts.events
        for env in envelopes:
            if self.done:
                break
            if wanted is not None and env.get("event") not in wanted:
                continue
            self.out.envelope(env)
            self.printed += 1
        if self.done:
            self.wake.set()

    def _on_drop(self, reason: str) -> None:
        self._dropped = reason
        self.wake.set()


@app.command(cls=Command)
def listen(
    room: Annotated[
        list[str] | None,
        typer.Option("--room", "-r", metavar="ROOM", help="A room to listen to; repeat for more."),
    ] = None,
    since: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="OFFSET",
            help="First replay every message after this offset (each room). "
            "Without it: only what is published from now on.",
        ),
    ] = None,
    epoch: Annotated[
        str | None,
        typer.Option(
            metavar="EPOCH",
            help="The epoch --since counts in, as a status line named it (one --room only). "
            "If the room has started again since, it says so and prints all the room has.",
        ),
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            "-e",
            metavar="NAME",
            help="Print only this event name; repeat for more. Without it: every event.",
        ),
    ] = None,
    presence: Annotated[
        bool, typer.Option("--presence", help="Also print members joining and leaving.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print each envelope as one JSON object per line.")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Exit (0) after printing this many messages."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, metavar="SECONDS", help="Exit (0) after listening this many seconds."),
    ] = None,
    connect_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, metavar="SECONDS", help="Seconds to wait for the connection and joins."
        ),
    ] = 10.0,
    max_backoff: Annotated[
        float,
        typer.Option(min=0.01, metavar="SECONDS", help="Longest wait between reconnect attempts."),
    ] = BACKOFF_CAP,
    as_user: AsUser = None,
    legacy_as: LegacyAsUser = None,
    token: Token = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No status or reconnect lines on stderr.")
    ] = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Print every message published to the rooms (and sent to this connection) as it arrives.

    Reconnects with backoff if the server goes away, and resumes each room from the last offset
    printed, so nothing kept in history is missed and nothing is printed twice. Ctrl-C exits 0.
    """
    name = connect_as(as_user, legacy_as)
    try:
        rooms = list(dict.fromkeys(room or []))
        opts = ListenOptions(
            url=normalize_url(url),
            rooms=rooms,
            since=since,
            epoch=None if epoch is None else resume_epoch(epoch, since, rooms),
            events=frozenset(event) if event else None,
            presence=presence or bool(event and "presence" in event),
            count=count,
            duration=timeout,
            connect_timeout=connect_timeout,
            max_backoff=max_backoff,
            auth={k: v for k, v in (("user", name), ("token", token)) if v} or None,
        )
    except RelayError as exc:
        fail(exc.message)
    out = JsonOutput(sys.stdout) if json_out else HumanOutput(stdout_console())
    status = json_status if json_out else human_status
    listener = Listener(
        opts,
        out,
        status=None if quiet else status,
        log=None if quiet else note,
        alert=None if quiet else warn,
    )
    try:
        asyncio.run(_main(listener))
    except BrokenPipeError:
        stdout_closed()
    except RelayError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the loop could take over: still a quiet, successful exit


def resume_epoch(epoch: str, since: int | None, rooms: list[str]) -> str:
    """``--epoch``, checked: it qualifies ``--since`` in one room (each room has its own)."""
    if since is None:
        raise BadRequest("--epoch goes with --since: it says which life of the room OFFSET is in")
    if len(rooms) != 1:
        raise BadRequest(
            f"--epoch takes exactly one --room (each room has its own epoch), got {len(rooms)}"
        )
    return names.epoch(epoch, "--epoch")


def human_status(info: dict[str, Any]) -> None:
    note(status_text(info))


def json_status(info: dict[str, Any]) -> None:
    """With ``--json``: the status as one JSON object on stderr (stdout holds envelopes)."""
    sys.stderr.write(json_line(info) + "\n")
    sys.stderr.flush()


def _who(sid: str | None, auth: dict[str, Any] | None) -> str:
    who = f"sid {sid}"
    if auth and auth.get("user"):
        who += f", user {auth['user']}"
    return who


def status_text(info: dict[str, Any]) -> str:
    """The human status line: ``listening on lobby (offset 3, epoch AbC…) as sid …``."""
    who = _who(info.get("sid"), {"user": info.get("user")})
    rooms = info.get("rooms") or []
    if not rooms:
        return f"listening for direct messages as {who}"
    shown = []
    for r in rooms:
        epoch = "" if r.get("epoch") is None else f", epoch {r['epoch']}"
        shown.append(f"{r['room']} (offset {r.get('offset')}{epoch})")
    return f"listening on {', '.join(shown)} as {who}"


async def _main(listener: Listener) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def interrupt() -> None:
        listener.stop()
        if listener.connecting and task is not None:
            task.cancel()  # a connection attempt is not worth waiting for

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, interrupt)
    with contextlib.suppress(asyncio.CancelledError):
        await listener.run()
