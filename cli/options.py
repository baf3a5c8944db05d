"""Options every client command shares, declared once.

Imported by every command module when ``relay`` starts, so it imports no client library:
``cli.client`` (aiohttp, python-socketio's client) is imported only inside the commands that
connect, and ``relay serve`` never loads it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from relay.cli.console import note

DEFAULT_URL = "http://127.0.0.1:8000"

Url = Annotated[
    str,
    typer.Option(
        envvar="RELAY_URL",
        metavar="URL",
        help="The relay to connect to: http(s)://host:port, ws(s)://host:port or host:port.",
    ),
]
# ``--as-user``, not ``--as`` or ``--user-name``: next to ``send --user`` (the target) those
# read as if they named the recipient; this names who the connection is.
AsUser = Annotated[
    str | None,
    typer.Option("--as-user", metavar="NAME", help="Connect as this user (open mode: auth.user)."),
]
#: the old spellings of ``--as-user``, still accepted (hidden, with a note)
LegacyAsUser = Annotated[str | None, typer.Option("--as", "--user-name", hidden=True)]
Token = Annotated[
    str | None,
    typer.Option(envvar="RELAY_TOKEN", metavar="JWT", help="JWT to connect with (auth.token)."),
]


def connect_as(as_user: str | None, legacy: str | None) -> str | None:
    """The user to connect as, from ``--as-user`` or (with a note) its old spelling."""
    if legacy is not None:
        note("--as and --user-name are now --as-user (the old names still work for now)")
        if as_user is None:
            return legacy
    return as_user


def _source(ctx: typer.Context, name: str) -> str:
    # compared by name: the enum's module differs between Typer versions
    source = ctx.get_parameter_source(name)
    return "" if source is None else source.name


def from_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the parameter ``name`` was typed, not filled from a default or the environment."""
    return _source(ctx, name) == "COMMANDLINE"


def from_environment(ctx: typer.Context, name: str) -> bool:
    """Whether the parameter ``name`` came from its environment variable (``envvar=``)."""
    return _source(ctx, name) == "ENVIRONMENT"


__all__ = [
    "DEFAULT_URL",
    "AsUser",
    "LegacyAsUser",
    "Token",
    "Url",
    "connect_as",
    "from_command_line",
    "from_environment",
]
