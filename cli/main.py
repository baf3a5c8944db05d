"""The root ``relay`` command: one Typer app per command file, joined here."""

from __future__ import annotations

from typing import Annotated

import typer

from relay import __version__
from relay.cli import hooks, listen, loadtest, send, serve, token
from relay.cli.help import CONTEXT_SETTINGS, Group

app = typer.Typer(
    cls=Group,
    name="relay",
    help="A real-time event relay: serve it, send to it, listen to it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"relay {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print relay's version and exit."
        ),
    ] = False,
) -> None:
    """A real-time event relay: serve it, send to it, listen to it."""


app.add_typer(serve.app)
app.add_typer(loadtest.app)
app.add_typer(send.app)
app.add_typer(listen.app)
app.add_typer(token.app)
app.add_typer(hooks.app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
