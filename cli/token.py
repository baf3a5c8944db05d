"""``relay token``: sign a connection token for a user."""

from __future__ import annotations

from typing import Annotated

import typer

from relay.cli.console import fail
from relay.cli.help import Command
from relay.core.auth import issue_token
from relay.errors import ConfigError, RelayError
from relay.settings import parse_duration

app = typer.Typer()


@app.command(cls=Command)
def token(
    user: Annotated[
        str, typer.Argument(metavar="USER", help="The user the token names (its 'sub').")
    ],
    room: Annotated[
        list[str] | None,
        typer.Option(
            "--room",
            metavar="PATTERN",
            help="A room pattern the user may use ('*' matches any run of characters); "
            "repeat for more. Without it: any room.",
        ),
    ] = None,
    ttl: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="Lifetime, e.g. 3600, 15m, 24h; 0 for a token that never expires.",
        ),
    ] = "1h",
    secret: Annotated[
        str | None,
        typer.Option(envvar="RELAY_SECRET", metavar="SECRET", help="The server's secret."),
    ] = None,
) -> None:
    """Print an HS256 token that connects as USER to a relay started with the same secret."""
    if not secret:
        fail("no secret: pass --secret or set RELAY_SECRET to the server's secret")
    try:
        seconds = parse_duration("--ttl", ttl)
        signed = issue_token(secret, user, rooms=room, ttl_s=seconds or None)
    except ConfigError as exc:
        fail(str(exc))
    except RelayError as exc:
        fail(exc.message)
    typer.echo(signed)
