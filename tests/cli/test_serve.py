"""``relay serve``'s flags are checked like their variables, and errors name what was typed."""

from __future__ import annotations

import pytest

from relay.cli.serve import settings_from
from relay.errors import ConfigError
from tests.cli.clirun import run_cli
from tests.cli.test_errors import assert_one_error_line


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (["--log-level", "loud"], {}, "error: --log-level='loud' is not a log level"),
        (["--history-size", "-5"], {}, "error: --history-size='-5' must be at least 0"),
        ([], {"RELAY_HISTORY_SIZE": "-5"}, "error: RELAY_HISTORY_SIZE='-5' must be at least 0"),
        (["--port", "http"], {}, "error: --port='http' is not an integer"),
        (["--max-payload", "2MiB"], {}, "error: --max-payload='2MiB' must leave room"),
        # a typed flag wins over its variable, which is then neither read nor blamed
        (["--log-level", "info", "--history-size", "-1"], {"RELAY_LOG_LEVEL": "loud"},
         "error: --history-size='-1' must be at least 0"),
    ],
)  # fmt: skip
async def test_a_bad_flag_or_variable_is_one_line_naming_it(
    args: list[str], env: dict[str, str], error: str
) -> None:
    """As a real process, so a traceback anywhere on the way would show."""
    result = await run_cli("serve", "--port", "0", *args, env=env, timeout=60)
    assert_one_error_line(result)
    assert result.err_lines[0].startswith(error), result.err_lines[0]


def test_flags_stand_in_for_their_variables() -> None:
    env = {"PORT": "9000", "RELAY_HISTORY_SIZE": "-5", "RELAY_LOG_LEVEL": "debug"}
    settings = settings_from(env, {"--history-size": "7", "--host": "0.0.0.0"})
    assert (settings.port, settings.history_size, settings.host) == (9000, 7, "0.0.0.0")
    assert settings.log_level == "debug"
    with pytest.raises(ConfigError, match=r"^RELAY_LOG_LEVEL='x' is not a log level"):
        settings_from({"RELAY_LOG_LEVEL": "x"}, {"--port": "1"})
