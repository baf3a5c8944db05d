"""``relay serve``: run the server."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.console import fail
from relay.errors import ConfigError
from relay.settings import LOG_LEVELS, Settings, parse_size

app = typer.Typer()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind [env: RELAY_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [env: PORT].")] = None,
    log_level: Annotated[
        str | None, typer.Option(help=f"One of {', '.join(LOG_LEVELS)} [env: RELAY_LOG_LEVEL].")
    ] = None,
    max_payload: Annotated[
        str | None, typer.Option(help="Largest 'data', e.g. 64KiB [env: RELAY_MAX_PAYLOAD].")
    ] = None,
    history_size: Annotated[
        int | None, typer.Option(help="Messages kept per room [env: RELAY_HISTORY_SIZE].")
    ] = None,
) -> None:
    """Run relay (in-memory, one process) until Ctrl-C or SIGTERM."""
    from relay.server import run

    try:
        settings = Settings.from_env(
            os.environ,
            host=host,
            port=port,
            log_level=log_level,
            max_payload=parse_size("--max-payload", max_payload) if max_payload else None,
            history_size=history_size,
        )
    except ConfigError as exc:
        fail(str(exc))
    run(settings)
