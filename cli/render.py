"""How the CLI shows envelopes, presence and acks: rich lines for people, JSON lines for scripts.

Both outputs take their stream (a rich ``Console`` or a text stream) and their clock, so tests
render into a ``StringIO``. Human lines look like::

    14:02:03.123 lobby #3 alice: {"hi": 1}
    14:02:04.010 lobby #4 alice (typing): true
    14:02:05.500 direct api: "deploy finished"
    14:02:06.000 lobby: bob joined
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, TextIO

import orjson
from rich.console import Console
from rich.text import Text

DEFAULT_EVENT = "message"


def clock_text(ts_ms: float) -> str:
    """Local wall-clock time with milliseconds: ``14:02:03.123``."""
    moment = datetime.fromtimestamp(ts_ms / 1000)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def data_text(data: Any) -> str:
    """A string as itself, anything else as JSON (``{"hi": 1}``)."""
    if isinstance(data, str):
        return data
    return json.dumps(data, ensure_ascii=False)


def sender_text(sender: Any) -> str:
    """``alice``; ``anon-AbC123`` for a connection without a user; ``api`` for the HTTP API."""
    if not isinstance(sender, dict):
        return "?"
    user, sid = sender.get("user"), sender.get("sid")
    if user:
        return str(user)
    if sid:
        return f"anon-{str(sid)[:6]}"
    return "api"


def envelope_text(env: dict[str, Any]) -> Text:
    """One human line for one envelope."""
    line = Text()
    ts = env.get("ts")
    line.append(clock_text(ts) if isinstance(ts, int | float) else "--:--:--.---", style="dim")
    line.append(" ")
    room = env.get("room")
    if room is None:
        line.append("direct", style="bold magenta")
    else:
        line.append(str(room), style="bold cyan")
        if env.get("offset") is not None:
            line.append(f" #{env['offset']}", style="dim")
    line.append(" ")
    line.append(sender_text(env.get("from")), style="green")
    event = env.get("event")
    if event and event != DEFAULT_EVENT:
        line.append(" (")
        line.append(str(event), style="yellow")
        line.append(")")
    line.append(": ")
    line.append(data_text(env.get("data")))
    return line


def presence_text(payload: dict[str, Any], now_s: float) -> Text:
    """``14:02:06.000 lobby: bob joined``."""
    line = Text(clock_text(now_s * 1000), style="dim")
    line.append(" ")
    line.append(str(payload.get("room")), style="bold cyan")
    line.append(": ")
    line.append(sender_text(payload.get("member")), style="green")
    action = payload.get("action")
    line.append(" joined" if action == "join" else " left" if action == "leave" else f" {action}")
    return line


def ack_text(ack: dict[str, Any], room: str | None) -> Text:
    """What ``relay send`` says about one accepted message."""
    ident = f" (id {ack.get('id')})"
    if "offset" in ack:
        line = Text("published to ")
        line.append(str(room), style="bold cyan")
        line.append(f" at offset {ack['offset']}")
        line.append(ident, style="dim")
        return line
    delivered = ack.get("delivered", 0)
    noun = "connection" if delivered == 1 else "connections"
    line = Text(f"delivered to {delivered} {noun}", style="" if delivered else "yellow")
    if not delivered:
        line.append(" (nobody with that sid or user is connected)", style="yellow")
    line.append(ident, style="dim")
    return line


def json_line(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class Output(Protocol):
    """Where ``send`` and ``listen`` put what they have to say on stdout."""

    def envelope(self, env: dict[str, Any]) -> None: ...

    def presence(self, payload: dict[str, Any]) -> None: ...

    def ack(self, ack: dict[str, Any], room: str | None) -> None: ...


class HumanOutput:
    """Readable, coloured lines on a rich console (colours only when it is a terminal)."""

    def __init__(self, console: Console, get_time: Callable[[], float] = time.time) -> None:
        self.console = console
        self.get_time = get_time

    def envelope(self, env: dict[str, Any]) -> None:
        self.console.print(envelope_text(env))

    def presence(self, payload: dict[str, Any]) -> None:
        self.console.print(presence_text(payload, self.get_time()))

    def ack(self, ack: dict[str, Any], room: str | None) -> None:
        self.console.print(ack_text(ack, room))


class JsonOutput:
    """One JSON object per line, flushed per line, for pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _write(self, obj: Any) -> None:
        self.stream.write(json_line(obj) + "\n")
        self.stream.flush()

    def envelope(self, env: dict[str, Any]) -> None:
        self._write(env)

    def presence(self, payload: dict[str, Any]) -> None:
        self._write({"event": "presence", **payload})

    def ack(self, ack: dict[str, Any], room: str | None) -> None:
        self._write(ack)


class QuietOutput:
    """Says nothing (``relay send --quiet``)."""

    def envelope(self, env: dict[str, Any]) -> None:
        pass

    def presence(self, payload: dict[str, Any]) -> None:
        pass

    def ack(self, ack: dict[str, Any], room: str | None) -> None:
        pass
