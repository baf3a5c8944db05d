"""Every command's help: ``-h`` too, defaults and environment variables shown one way, no
``<str>``/``<bool>`` types, and no help text swallowed as rich markup."""

from __future__ import annotations

import re

import pytest

from relay.cli.serve import DEFAULTS, FLAGS
from relay.settings import ENV_KEYS, Settings
from tests.cli.clirun import invoke

COMMANDS = ["serve", "send", "listen", "token", "loadtest", "hooks"]


@pytest.mark.parametrize("command", COMMANDS)
async def test_every_command_has_dash_h_and_plain_metavars(command: str) -> None:
    long, short = await invoke(command, "--help"), await invoke(command, "-h")
    assert long.rc == short.rc == 0, (long.err, short.err)
    assert long.out == short.out
    assert "-h" in long.out
    assert not re.search(r"<(str|bool|int|float|list|path)", long.out), long.out


async def test_root_help_has_dash_h() -> None:
    result = await invoke("-h")
    assert result.rc == 0 and "loadtest" in result.out and "serve" in result.out
    assert result.out == (await invoke("--help")).out
    assert "<bool>" not in result.out


async def test_serve_shows_each_flags_variable_and_default() -> None:
    out = (await invoke("serve", "--help")).out
    assert " ." not in out  # "Interface to bind ." was help text with its [env: ...] eaten
    for flag, field in FLAGS.items():
        row = out[out.index(flag) :]
        row = row[: row.index("│ --", 1)] if "│ --" in row[1:] else row
        assert f"[env var: {ENV_KEYS[field][0]}]" in row, (flag, row)
        assert f"[default: {DEFAULTS[flag]}]" in row, (flag, row)
    assert "README.md" in out and "RELAY_PUBLISH_RATE" in out  # where the limits are told


def test_serve_help_defaults_are_the_settings_defaults() -> None:
    defaults = Settings()
    for flag, field in FLAGS.items():
        key, parse = ENV_KEYS[field]
        assert parse(key, DEFAULTS[flag]) == getattr(defaults, field), flag


async def test_token_secret_shows_its_variable() -> None:
    out = (await invoke("token", "--help")).out
    assert "The server's secret." in out and "[env var: RELAY_SECRET]" in out
    assert "[default: 1h]" in out


@pytest.mark.parametrize("command", ["send", "listen"])
async def test_the_sender_is_as_user_and_the_old_names_are_hidden(command: str) -> None:
    out = (await invoke(command, "--help")).out
    assert "--as-user" in out
    assert "--user-name" not in out and not re.search(r"--as\b(?!-)", out)


async def test_loadtest_shows_defaults_and_variables() -> None:
    out = (await invoke("loadtest", "--help")).out
    for shown in ("[env var: RELAY_URL]", "[env var: RELAY_TOKEN]", "[default: 100]",
                  "[default: broadcast]", "[default: 900.0]"):  # fmt: skip
        assert shown in out, shown
