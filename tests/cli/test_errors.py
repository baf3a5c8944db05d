"""Expected failures: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest

from tests.cli.clirun import Result, invoke, run_cli
from tests.conftest import LiveRelay, free_port


def assert_one_error_line(result: Result, *fragments: str) -> None:
    assert result.rc == 1, (result.rc, result.out, result.err)
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line


@pytest.mark.parametrize("command", [["send", "--room", "r", "1"], ["listen", "--room", "r"]])
async def test_refused_connection(command: list[str]) -> None:
    """As a real process: nothing but the one line may reach stderr."""
    url = f"http://127.0.0.1:{free_port()}"
    result = await run_cli(*command, "--url", url)
    assert_one_error_line(result, url, "connection refused")
    assert result.out == ""


async def test_relay_url_from_the_environment(live_relay: LiveRelay) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = await invoke("listen", "--room", "r", env={"RELAY_URL": down})
    assert_one_error_line(result, down, "connection refused")
    result = await invoke("send", "-r", "env", "--json", "1", env={"RELAY_URL": live_relay.url})
    assert result.rc == 0, result.err
    assert result.json_lines()[0]["offset"] == 1


async def test_error_ack_as_a_process(live_relay: LiveRelay) -> None:
    result = await run_cli("send", "--url", live_relay.url, "--room", "bad room", "1")
    assert_one_error_line(result, "publish", "'bad room'", "(bad_request)")


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["listen", "--room", "ok", "--room", "bad room"], "join bad room"),
        (["send", "--room", "r", "--event", "join", "1"], "reserved"),
        (["send", "--to", "x" * 65, "1"], "'to'"),
    ],
)
async def test_error_ack(live_relay: LiveRelay, command: list[str], what: str) -> None:
    result = await invoke(*command, "--url", live_relay.url)
    assert_one_error_line(result, what, "(bad_request)")


async def test_too_large_line_stops_the_stream(live_relay: LiveRelay) -> None:
    big = b'"' + b"x" * 70_000 + b'"'
    result = await invoke(
        "send", "--url", live_relay.url, "-r", "big", "--json", "-", input=b"1\n" + big + b"\n3\n"
    )
    # line 3 was in flight (sent before line 2's answer came back): published, and said so
    assert_one_error_line(result, "line 2", "(too_large)", "published lines 1 and 3, and no other")
    assert [ack["offset"] for ack in result.json_lines()] == [1, 2]


async def test_refused_user_name(live_relay: LiveRelay) -> None:
    result = await invoke("send", "--url", live_relay.url, "--as-user", "no spaces", "-r", "r", "1")
    assert_one_error_line(result, "refused the connection", "(bad_request)")


async def test_bad_url() -> None:
    result = await invoke("send", "--url", "ftp://x", "--room", "r", "1")
    assert_one_error_line(result, "--url")


async def test_exactly_one_target_as_a_process() -> None:
    result = await run_cli("send", "--room", "a", "--to", "b", "1", "--url", "http://127.0.0.1:9")
    assert result.rc == 2
    assert "exactly one of --room, --to or --user (got --room and --to)" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("targets", [[], ["--user", "u", "--room", "a"], ["--to", ""]])
async def test_exactly_one_target_is_a_usage_error(targets: list[str]) -> None:
    result = await invoke("send", *targets, "1", "--url", "http://127.0.0.1:9")
    assert result.rc == 2
    assert "exactly one of --room, --to or --user" in result.err


@pytest.mark.parametrize("command", ["send", "listen"])
async def test_help(command: str) -> None:
    result = await invoke(command, "--help")
    assert result.rc == 0
    assert "--url" in result.out and "RELAY_URL" in result.out


async def test_the_old_name_of_as_user_still_works(live_relay: LiveRelay) -> None:
    result = await invoke("send", "--url", live_relay.url, "--as", "no spaces", "-r", "r", "1")
    assert result.rc == 1
    assert (
        result.err_lines[0]
        == "--as and --user-name are now --as-user (the old names still work for now)"
    )
    assert result.err_lines[1].startswith("error: ") and "refused the connection" in result.err
