"""``relay serve``: run the server.

Each flag has an environment variable (``--port``/``PORT``...). The flag wins; either way the
value is parsed and checked by :class:`relay.settings.Settings`, and an error names what the
user wrote: the flag when it was typed, the variable when it came from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from relay.cli.console import fail
from relay.cli.help import Command
from relay.cli.options import from_command_line
from relay.errors import ConfigError
from relay.settings import ENV_KEYS, LOG_LEVELS, Settings

app = typer.Typer()

#: flag -> its Settings field (and parameter name); its variable is ``ENV_KEYS[field]``
FLAGS = {"--host": "host", "--port": "port", "--log-level": "log_level",
         "--max-payload": "max_payload", "--history-size": "history_size",
         "--log-format": "log_format", "--workers": "workers"}  # fmt: skip
#: what ``--help`` shows as each flag's default: Settings' defaults, as a user would type them
#: (tests/cli checks that each parses to the Settings default)
DEFAULTS = {"--host": "127.0.0.1", "--port": "8000", "--log-level": "info",
            "--max-payload": "64KiB", "--history-size": "1000",
            "--log-format": "text", "--workers": "0"}  # fmt: skip

EPILOG = (
    "Every other setting comes from the environment: the limits each client is held to "
    "(RELAY_MAX_CONNECTIONS_PER_IP, RELAY_CONNECT_RATE, RELAY_PUBLISH_RATE and more), "
    "RELAY_SECRET, RELAY_API_KEY, RELAY_HISTORY_TTL, RELAY_CORS_ORIGINS... "
    "See Configuration in README.md for each one, its default and its meaning."
)


def _flag(name: str, metavar: str, help: str) -> Any:
    return typer.Option(name, envvar=ENV_KEYS[FLAGS[name]][0], metavar=metavar, help=help)


def settings_from(env: Mapping[str, str], typed: dict[str, str]) -> Settings:
    """Settings from ``env`` and the flags that were typed (``{"--port": "9000"}``).

    A typed flag stands in for its variable, so it is parsed and checked exactly as the
    variable would be; an error about it names the flag and the text typed
    (``--history-size='-5' must be at least 0``), and the variable it shadows is not read.
    """
    keys = {ENV_KEYS[FLAGS[flag]][0]: flag for flag in typed}
    merged = {**env, **{key: typed[flag] for key, flag in keys.items()}}
    try:
        return Settings.from_env(merged)
    except ConfigError as exc:
        message = str(exc)
        for key, flag in keys.items():
            if message.startswith(f"{key}="):
                raise ConfigError(flag + message[len(key) :]) from None
        raise


@app.command(cls=Command, epilog=EPILOG)
def serve(
    ctx: typer.Context,
    host: Annotated[str, _flag("--host", "HOST", "Interface to bind.")] = DEFAULTS["--host"],
    port: Annotated[str, _flag("--port", "PORT", "Port to bind (0: any free port).")] = DEFAULTS[
        "--port"
    ],
    log_level: Annotated[
        str, _flag("--log-level", "LEVEL", f"One of {', '.join(LOG_LEVELS)}.")
    ] = DEFAULTS["--log-level"],
    max_payload: Annotated[
        str, _flag("--max-payload", "SIZE", "Largest 'data' of a message, e.g. 64KiB.")
    ] = DEFAULTS["--max-payload"],
    history_size: Annotated[
        str, _flag("--history-size", "N", "Messages kept per room.")
    ] = DEFAULTS["--history-size"],
    log_format: Annotated[
        str, _flag("--log-format", "FORMAT", "text, or json: one JSON object a line.")
    ] = DEFAULTS["--log-format"],
    workers: Annotated[
        str,
        _flag(
            "--workers",
            "N",
            "Processes serving the port (0: WEB_CONCURRENCY when Redis joins them, else 1). "
            "More than one needs REDIS_URL.",
        ),
    ] = DEFAULTS["--workers"],
) -> None:
    """Run relay until Ctrl-C or SIGTERM: in memory, or as a cluster node when REDIS_URL is set."""
    from relay.server import run

    values = {"--host": host, "--port": port, "--log-level": log_level,
              "--max-payload": max_payload, "--history-size": history_size,
              "--log-format": log_format, "--workers": workers}  # fmt: skip
    # A value Typer took from the environment is left to Settings, which names the variable.
    typed = {flag: value for flag, value in values.items() if from_command_line(ctx, FLAGS[flag])}
    try:
        settings = settings_from(os.environ, typed)
    except ConfigError as exc:
        fail(str(exc))
    try:
        run(settings)
    except ConfigError as exc:  # (the address cannot be listened on: said before any start-up)
        fail(str(exc))
