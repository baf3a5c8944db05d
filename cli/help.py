"""How every command's ``--help`` reads: one command class and one set of context settings.

Typer shows each option's Python type in angle brackets (``<str>``, ``<bool>``, even for a
flag and for ``--help`` itself), which tells a user nothing they can type. :class:`Command`
shows a value option's metavar (``--url URL``), nothing after a flag, and no type after an
argument (its name already says what goes there). Defaults and environment variables are left
to Typer's own ``[default: …]`` and ``[env var: …]`` (``show_default``, ``envvar=``), so they
read the same on every command; help texts hold no square brackets, which rich would take as
markup and swallow.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

#: ``-h`` as well as ``--help``, on every command (the root's context settings are inherited)
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class _Argument(TyperArgument):
    """An argument whose help row shows its metavar alone, without ``<str>`` after it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _plain(param: object) -> None:
    if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
        param.metavar = ""
    elif type(param) is TyperArgument and param.metavar is not None:
        param.__class__ = _Argument


class Command(TyperCommand):
    """A Typer command whose help shows metavars instead of Python types (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _plain(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _plain(option)
        return option


class Group(TyperGroup):
    """The root ``relay`` command: its ``--help`` and ``--version`` rows without ``<bool>``
    either."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _plain(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _plain(option)
        return option


__all__ = ["CONTEXT_SETTINGS", "Command", "Group"]
