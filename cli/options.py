"""Options every client command shares, declared once.

Imported by every command module when ``relay`` starts, so it imports no client library:
``cli.client`` (aiohttp, python-socketio's client) is imported only inside the commands that
connect, and ``relay serve`` never loads it.
"""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_URL = "http://127.0.0.1:8000"

Url = Annotated[str, typer.Option(envvar="RELAY_URL", help="The relay to connect to.")]
AsUser = Annotated[
    str | None,
    typer.Option("--as", "--user-name", help="Connect as this user (open mode: auth.user)."),
]
Token = Annotated[
    str | None, typer.Option(envvar="RELAY_TOKEN", help="JWT to connect with (auth.token).")
]

__all__ = ["DEFAULT_URL", "AsUser", "Token", "Url"]
