"""Options every client command shares, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.client import DEFAULT_URL

Url = Annotated[str, typer.Option(envvar="RELAY_URL", help="The relay to connect to.")]
AsUser = Annotated[
    str | None,
    typer.Option("--as", "--user-name", help="Connect as this user (open mode: auth.user)."),
]
Token = Annotated[
    str | None, typer.Option(envvar="RELAY_TOKEN", help="JWT to connect with (auth.token).")
]

__all__ = ["DEFAULT_URL", "AsUser", "Token", "Url"]
