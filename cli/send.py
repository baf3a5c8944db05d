"""``relay send``: publish to a room, or send straight to one connection or one user.

``DATA`` is sent as JSON when it parses as JSON, else as a string. ``-`` streams stdin: one
message per non-blank line, all over one connection, in order, with a bounded number of acks
outstanding (:mod:`cli.stream`); the first refused line stops the stream, and the error names
exactly the lines that were published.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import orjson
import typer

from relay.cli.console import fail, stdout_closed, stdout_console, warn
from relay.cli.help import Command
from relay.cli.options import DEFAULT_URL, AsUser, LegacyAsUser, Token, Url, connect_as
from relay.cli.stream import MAX_FRAME, Item, Outcome, Pacer, Streamer, Unsendable, publish_rate
from relay.cli.urls import normalize_url
from relay.errors import BadRequest, RelayError, TooLarge
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.cli.client import Ack

app = typer.Typer()

MAX_LINE = MAX_FRAME  # a longer line could never be sent: it is refused before it is read whole
STDIN_CHUNK = 64 * 1024
CHUNKS_AHEAD = 4  # chunks of stdin read ahead of the sender, at most


def parse_data(text: str, raw: bool = False) -> Any:
    """``DATA`` as sent: the JSON value when ``text`` parses as JSON, else ``text`` itself."""
    if raw:
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@dataclass(frozen=True)
class Target:
    """Exactly one of a room (publish), a sid or a user (direct)."""

    room: str | None = None
    to: str | None = None
    user: str | None = None

    @classmethod
    def of(cls, room: str | None, to: str | None, user: str | None) -> Target:
        options = (("--room", room), ("--to", to), ("--user", user))
        given = [name for name, value in options if value]
        if len(given) != 1:
            got = "none" if not given else " and ".join(given)
            raise ValueError(f"give exactly one of --room, --to or --user (got {got})")
        return cls(room or None, to or None, user or None)

    @property
    def action(self) -> str:
        return "publish" if self.room is not None else "direct"

    def payload(self, event: str | None, data: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"data": data}
        if event is not None:
            body["event"] = event
        if self.room is not None:
            body["room"] = self.room
        elif self.to is not None:
            body["to"] = self.to
        else:
            body["user"] = self.user
        return body


def split_lines(pending: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines in ``pending + chunk``, and what is left after the last newline."""
    *lines, rest = (pending + chunk).split(b"\n")
    return lines, rest


def decode_line(line: bytes) -> str | None:
    """A line's text without its line ending; ``None`` for a blank line (not sent)."""
    text = line.rstrip(b"\r").decode("utf-8", errors="replace")
    return text if text.strip() else None


def chunk_reader(stream: BinaryIO) -> Callable[[int], bytes]:
    """A ``read(n)`` that returns whatever is available, up to ``n`` bytes.

    A real file descriptor is read with ``os.read``: the daemon thread then holds no lock of
    ``sys.stdin``'s buffer, which the interpreter would otherwise wait for at exit.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # e.g. BytesIO in tests
        return getattr(stream, "read1", stream.read)
    return lambda n: os.read(fd, n)


async def read_lines(stream: BinaryIO, limit: int = MAX_LINE) -> AsyncGenerator[Item, None]:
    """``(line number, text)`` for each non-blank line of ``stream`` as it arrives, read by a
    daemon thread; a line longer than ``limit`` bytes ends it with an :class:`Unsendable`.

    A daemon thread rather than the loop's executor: a blocked read of a terminal or an idle
    pipe must never keep the process from exiting after an error or Ctrl-C. The thread hands
    chunks over with ``call_soon_threadsafe`` (no coroutine is made in it, so none is left
    un-awaited when the loop closes first), and waits for a free slot before each read, so
    at most :data:`CHUNKS_AHEAD` chunks are ever held.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | OSError] = asyncio.Queue()
    slots = threading.Semaphore(CHUNKS_AHEAD)
    done = threading.Event()
    read = chunk_reader(stream)

    def pump() -> None:
        while True:
            slots.acquire()
            if done.is_set():
                return
            try:
                chunk: bytes | OSError = read(STDIN_CHUNK)
            except OSError as exc:
                chunk = exc
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:
                return  # the loop is closed: nobody wants the rest
            if not isinstance(chunk, bytes) or not chunk:
                return

    threading.Thread(target=pump, name="relay-send-stdin", daemon=True).start()
    pending = b""
    number = 0
    try:
        while True:
            chunk = await chunks.get()
            slots.release()
            if isinstance(chunk, OSError):
                raise BadRequest(f"cannot read stdin: {chunk}")
            lines, pending = split_lines(pending, chunk)
            if not chunk:
                lines, pending = ([pending] if pending else []), b""
            for line in lines:
                number += 1
                if len(line) > limit:
                    yield Unsendable(number, _too_long(number, limit))
                    return
                text = decode_line(line)
                if text is not None:
                    yield number, text
            if len(pending) > limit:
                yield Unsendable(number + 1, _too_long(number + 1, limit))
                return
            if not chunk:
                return
    finally:
        done.set()
        slots.release()  # a pump waiting for a slot sees ``done`` and ends


def _too_long(number: int, limit: int) -> TooLarge:
    return TooLarge(
        f"line {number} is over {limit:,} bytes, the frame limit of a relay connection, "
        "so it was not sent (a relay takes 'data' up to its RELAY_MAX_PAYLOAD, "
        "64 KiB unless raised)"
    )


async def _run(
    url: str,
    target: Target,
    event: str | None,
    data: str,
    raw: bool,
    auth: dict[str, Any] | None,
    timeout: float,
    report: Callable[[Ack], None],
    window: int,
    api_key: str | None = None,
) -> Outcome:
    from relay.cli.client import Connection

    streaming = data == "-"

    async def messages() -> AsyncGenerator[Item, None]:
        if not streaming:
            yield 1, target.payload(event, parse_data(data, raw))
            return
        lines = read_lines(sys.stdin.buffer)
        try:
            async for item in lines:
                if isinstance(item, Unsendable):
                    yield item
                else:
                    number, line = item
                    yield number, target.payload(event, parse_data(line, raw))
        finally:
            await lines.aclose()

    if api_key is not None:
        from relay.cli.httpsend import send_over_http

        source = messages()
        try:
            return await send_over_http(normalize_url(url), api_key, source, report, timeout)
        finally:
            await source.aclose()

    async with Connection(normalize_url(url), timeout=timeout, auth=auth) as conn:
        # Streamed lines keep below the relay's publish rate (a single message needs no pace);
        # a relay that does not say is taken to have the default one.
        pacer = None
        if streaming:
            rate = await publish_rate(conn)
            pacer = Pacer(Settings.publish_rate if rate is None else rate)
        source = messages()
        try:
            return await Streamer(
                conn,
                target.action,
                source,
                report,
                window=window if streaming else 1,
                label=(lambda n: f"line {n}") if streaming else None,
                pacer=pacer,
            ).run()
        finally:
            await source.aclose()


@app.command(cls=Command)
def send(
    data: Annotated[
        str,
        typer.Argument(
            help="What to send: JSON if it parses as JSON, else a string. "
            "'-' sends each non-blank line of stdin as one message, over one connection.",
            show_default=False,
            metavar="DATA",
        ),
    ],
    room: Annotated[
        str | None,
        typer.Option("--room", "-r", metavar="ROOM", help="Publish to everyone in this room."),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="SID", help="Send to one connection (its sid)."),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", metavar="USER", help="Send to every connection of this user."),
    ] = None,
    event: Annotated[
        str, typer.Option("--event", "-e", metavar="NAME", help="Event name.")
    ] = "message",
    as_user: AsUser = None,
    legacy_as: LegacyAsUser = None,
    token: Token = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send DATA as a string, never JSON.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print each ack as one JSON object per line.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1, metavar="SECONDS", help="Seconds to wait for the connection and each ack."
        ),
    ] = 10.0,
    window: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Acks outstanding at once while streaming stdin."),
    ] = 64,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="RELAY_API_KEY",
            metavar="KEY",
            help="Send through the HTTP API with this key, as a backend does (from.sid null), "
            "instead of over a Socket.IO connection.",
        ),
    ] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Publish DATA to a room (--room), or send it to one connection (--to) or user (--user).

    With an API key (--api-key or RELAY_API_KEY) it goes through the HTTP API; otherwise over
    a Socket.IO connection."""
    from relay.cli.render import HumanOutput, JsonOutput, Output, QuietOutput

    try:
        target = Target.of(room, to, user)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    out: Output
    if quiet:
        out = QuietOutput()
    elif json_out:
        out = JsonOutput(sys.stdout)
    else:
        out = HumanOutput(stdout_console())
    name = connect_as(as_user, legacy_as)
    auth = {k: v for k, v in (("user", name), ("token", token)) if v} or None
    if api_key is not None:
        if name is not None:
            raise typer.BadParameter(
                "--as-user names a Socket.IO connection's user; with an API key the message is "
                "sent by the HTTP API, from no connection (from.user null)"
            )
        if not api_key.strip():
            raise typer.BadParameter("--api-key (or RELAY_API_KEY) is empty")
        if token:
            warn("--token (RELAY_TOKEN) is not used: with an API key relay send uses the HTTP API")

    def report(ack: Ack) -> None:
        out.ack(ack, target.room)

    try:
        outcome = asyncio.run(
            _run(url, target, event, data, raw, auth, timeout, report, window, api_key)
        )
    except RelayError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:
        stdout_closed()
    for published, resent in outcome.overtaken:
        warn(
            f"line {published} was published before line {resent}, which the relay had "
            "refused as rate_limited and which was sent again: their offsets show the order"
        )
    if outcome.error is not None:
        if data != "-":
            fail(outcome.error.message)
        fail(f"{outcome.error.message}; {outcome.summary()}")
    if not outcome.sent and not quiet:
        warn("stdin had no lines: nothing was sent")
