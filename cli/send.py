"""``relay send``: publish to a room, or send straight to one connection or one user.

``DATA`` is sent as JSON when it parses as JSON, else as a string. ``-`` streams stdin: one
message per non-blank line, all over one connection, in order, with a bounded number of acks
outstanding; the first rejected line stops the stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import orjson
import typer

from cli.console import fail, stdout_closed, stdout_console, warn
from cli.options import DEFAULT_URL, AsUser, Token, Url
from relay.errors import BadRequest, RelayError, TooLarge

if TYPE_CHECKING:
    from cli.client import Ack, Connection

app = typer.Typer()

MAX_LINE = 1024 * 1024  # the transport's frame limit: a longer line could never be sent
STDIN_CHUNK = 64 * 1024


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


async def read_lines(stream: BinaryIO) -> AsyncIterator[str]:
    """Non-blank lines of ``stream`` as they arrive, read by a daemon thread.

    A daemon thread rather than the loop's executor: a blocked read of a terminal or an idle
    pipe must never keep the process from exiting after an error or Ctrl-C.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | OSError] = asyncio.Queue(maxsize=4)
    read = chunk_reader(stream)

    def pump() -> None:
        while True:
            try:
                chunk: bytes | OSError = read(STDIN_CHUNK)
            except OSError as exc:
                chunk = exc
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
            except (RuntimeError, asyncio.CancelledError, concurrent.futures.CancelledError):
                return  # the loop is gone: nobody wants the rest
            if not isinstance(chunk, bytes) or not chunk:
                return

    threading.Thread(target=pump, name="relay-send-stdin", daemon=True).start()
    pending = b""
    number = 0
    while True:
        chunk = await chunks.get()
        if isinstance(chunk, OSError):
            raise BadRequest(f"cannot read stdin: {chunk}")
        lines, pending = split_lines(pending, chunk)
        if not chunk:
            lines, pending = ([pending] if pending else []), b""
        for line in lines:
            number += 1
            text = decode_line(line)
            if text is not None:
                yield text
        if len(pending) > MAX_LINE:
            raise TooLarge(f"line {number + 1} of stdin is over {MAX_LINE} bytes")
        if not chunk:
            return


async def send_all(
    conn: Connection,
    target: Target,
    event: str | None,
    messages: AsyncIterator[Any],
    report: Callable[[Ack], None],
    window: int = 64,
    label: Callable[[int], str] | None = None,
) -> int:
    """Send every message in order, with at most ``window`` acks outstanding; return the count.

    Acks are checked and reported in sending order; the first error ack raises.
    """
    inflight: deque[tuple[int, asyncio.Future[Ack]]] = deque()
    action = target.action
    describe = label or (lambda n: action)
    sent = 0

    from cli.client import check_ack

    async def settle() -> None:
        number, future = inflight.popleft()
        report(check_ack(await conn.wait(future, describe(number)), describe(number)))

    async for data in messages:
        sent += 1
        inflight.append((sent, await conn.request(action, target.payload(event, data))))
        while len(inflight) >= max(1, window):
            await settle()
    while inflight:
        await settle()
    return sent


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
) -> int:
    from cli.client import Connection, normalize_url

    streaming = data == "-"

    async def messages() -> AsyncIterator[Any]:
        if streaming:
            async for line in read_lines(sys.stdin.buffer):
                yield parse_data(line, raw)
        else:
            yield parse_data(data, raw)

    async with Connection(normalize_url(url), timeout=timeout, auth=auth) as conn:
        return await send_all(
            conn,
            target,
            event,
            messages(),
            report,
            window=window if streaming else 1,
            label=(lambda n: f"line {n}") if streaming else None,
        )


@app.command()
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
        str | None, typer.Option("--room", "-r", help="Publish to everyone in this room.")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Send to one connection (its sid).")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Send to every connection of this user.")
    ] = None,
    event: Annotated[
        str | None, typer.Option("--event", "-e", help="Event name (default: message).")
    ] = None,
    as_user: AsUser = None,
    token: Token = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send DATA as a string, never JSON.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print each ack as one JSON object per line.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the connection and each ack.")
    ] = 10.0,
    window: Annotated[
        int, typer.Option(min=1, help="Acks outstanding at once while streaming stdin.")
    ] = 64,
    url: Url = DEFAULT_URL,
) -> None:
    """Publish DATA to a room (--room), or send it to one connection (--to) or user (--user)."""
    from cli.render import HumanOutput, JsonOutput, Output, QuietOutput

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
    auth = {k: v for k, v in (("user", as_user), ("token", token)) if v} or None

    def report(ack: Ack) -> None:
        out.ack(ack, target.room)

    try:
        sent = asyncio.run(_run(url, target, event, data, raw, auth, timeout, report, window))
    except RelayError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:
        stdout_closed()
    if sent == 0 and not quiet:
        warn("stdin had no lines: nothing was sent")
