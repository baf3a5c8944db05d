"""The root ``relay`` command: one Typer app per command file, joined here."""

from __future__ import annotations

import typer

from cli import listen, loadtest, send, serve, token
from cli.help import CONTEXT_SETTINGS, Group

app = typer.Typer(
    cls=Group,
    name="relay",
    help="A real-time event relay: serve it, send to it, listen to it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)
app.add_typer(serve.app)
app.add_typer(loadtest.app)
app.add_typer(send.app)
app.add_typer(listen.app)
app.add_typer(token.app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
