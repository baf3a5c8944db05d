"""``relay send`` and ``relay listen`` as subprocesses against a live relay."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading

import pytest

from relay.core.service import HTTP_SENDER
from tests.cli.clirun import (
    finish,
    invoke,
    read_line,
    run_cli,
    start_cli,
    stop,
    wait_for_line,
    wait_members,
)
from tests.conftest import LiveRelay, RelayProcess, free_port, start_relay_process


def shut(server: RelayProcess) -> int:
    """Stop ``relay serve`` and close its output pipe once conftest's drain thread is done."""
    code = server.stop()
    for thread in threading.enumerate():
        if thread.name.endswith("(_drain)"):
            thread.join(timeout=10)
    assert server.proc.stdout is not None
    server.proc.stdout.close()
    return code


async def test_send_reaches_a_json_listener(live_relay: LiveRelay) -> None:
    url = live_relay.url
    listener = await start_cli("listen", "--url", url, "--room", "rt", "--json", "--count", "2")
    try:
        await wait_members(url, "rt", 1)
        first = await run_cli("send", "--url", url, "--room", "rt", "--json", '{"hi": 1}')
        second = await invoke(
            "send", "--url", url, "-r", "rt", "-e", "typing", "--as-user", "alice", "not {json"
        )
        result = await finish(listener)
    finally:
        await stop(listener)
    assert first.rc == 0, first.err
    ack = json.loads(first.out)
    assert ack["ok"] is True and ack["offset"] == 1
    assert second.rc == 0, second.err
    assert re.fullmatch(r"published to rt at offset 2 \(id \S+\)\n", second.out)

    assert result.rc == 0, result.err
    # --json: the status is one JSON object on stderr, naming the room's epoch
    status = json.loads(result.err)
    assert status["status"] == "listening" and status["user"] is None
    [joined] = status["rooms"]
    assert joined["room"] == "rt" and joined["offset"] == 0
    assert isinstance(joined["epoch"], str) and joined["epoch"]
    envelopes = result.json_lines()
    assert [e["data"] for e in envelopes] == [{"hi": 1}, "not {json"]
    assert [e["offset"] for e in envelopes] == [1, 2]
    assert envelopes[0]["id"] == ack["id"]
    assert envelopes[0]["event"] == "message" and envelopes[0]["room"] == "rt"
    assert envelopes[1]["event"] == "typing"
    assert envelopes[1]["from"]["user"] == "alice"


async def test_human_listener_prints_status_and_readable_lines(live_relay: LiveRelay) -> None:
    url = live_relay.url
    listener = await start_cli("listen", "--url", url, "--room", "human", "--count", "1")
    try:
        status = await read_line(listener.stderr)
        assert re.fullmatch(r"listening on human \(offset 0, epoch [\w-]+\) as sid \S+\n", status)
        sent = await invoke("send", "--url", url, "--room", "human", "--as-user", "bob", "[1, 2]")
        result = await finish(listener)
    finally:
        await stop(listener)
    assert sent.rc == 0, sent.err
    assert result.rc == 0, result.err
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} human #1 bob: \[1, 2\]\n", result.out)


async def test_direct_to_a_sid_and_to_a_user(live_relay: LiveRelay) -> None:
    url = live_relay.url
    listener = await start_cli("listen", "--url", url, "--as-user", "carol", "--count", "2")
    try:
        status = await read_line(listener.stderr)
        m = re.fullmatch(r"listening for direct messages as sid (\S+), user carol\n", status)
        assert m, status
        to_sid = await invoke("send", "--url", url, "--to", m.group(1), "--json", '"psst"')
        to_user = await invoke("send", "--url", url, "--user", "carol", "--event", "ping", "2")
        nobody = await invoke("send", "--url", url, "--user", "nobody-here", "2")
        result = await finish(listener)
    finally:
        await stop(listener)
    assert json.loads(to_sid.out)["delivered"] == 1
    assert re.fullmatch(r"delivered to 1 connection \(id \S+\)\n", to_user.out)
    assert nobody.rc == 0 and "delivered to 0 connections" in nobody.out
    assert result.rc == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" direct anon-" + lines[0].split(" anon-")[1])
    assert lines[0].endswith(": psst")
    assert lines[1].endswith(" (ping): 2")


async def test_stdin_streams_lines_in_order_over_one_connection(live_relay: LiveRelay) -> None:
    url = live_relay.url
    listener = await start_cli("listen", "--url", url, "-r", "stream", "--json", "--count", "3")
    try:
        await wait_members(url, "stream", 1)
        sent = await run_cli(
            "send", "--url", url, "--room", "stream", "--json", "-", input=b'a\n{"b":1}\n\n3\n'
        )
        result = await finish(listener)
    finally:
        await stop(listener)
    assert sent.rc == 0, sent.err
    assert [a["offset"] for a in sent.json_lines()] == [1, 2, 3]
    envelopes = result.json_lines()
    assert [e["data"] for e in envelopes] == ["a", {"b": 1}, 3]
    assert [e["offset"] for e in envelopes] == [1, 2, 3]
    assert len({e["from"]["sid"] for e in envelopes}) == 1  # one connection sent them all


async def test_since_replays_and_event_filters(live_relay: LiveRelay) -> None:
    url = live_relay.url
    for event, data in (("a", "1"), ("b", "2"), ("a", "3")):
        sent = await invoke("send", "--url", url, "-r", "replay", "-e", event, "-q", data)
        assert sent.rc == 0 and sent.out == "", sent.err
    result = await invoke(
        "listen", "--url", url, "-r", "replay", "--since", "0", "-e", "a", "--json", "--count", "2"
    )
    assert result.rc == 0, result.err
    assert [(e["offset"], e["data"]) for e in result.json_lines()] == [(1, 1), (3, 3)]


async def test_timeout_with_nothing_received_exits_zero(live_relay: LiveRelay) -> None:
    result = await invoke("listen", "--url", live_relay.url, "-r", "quiet", "--timeout", "0.3")
    assert result.rc == 0, result.err
    assert result.out == ""
    assert result.err.startswith("listening on quiet")


async def test_sigint_exits_zero_quietly(live_relay: LiveRelay) -> None:
    listener = await start_cli("listen", "--url", live_relay.url, "-r", "intr")
    try:
        await read_line(listener.stderr)
        listener.send_signal(signal.SIGINT)
        result = await finish(listener, timeout=10)
    finally:
        await stop(listener)
    assert result.rc == 0
    assert "Traceback" not in result.err and "KeyboardInterrupt" not in result.err


async def test_listener_resumes_after_its_connection_is_cut(live_relay: LiveRelay) -> None:
    """Server up, connection dropped: what was published meanwhile is replayed, once."""
    url = live_relay.url
    listener = await start_cli(
        "listen", "--url", url, "-r", "cut", "--json", "--count", "4", "--max-backoff", "0.2"
    )
    try:
        await wait_members(url, "cut", 1)
        for data in ("1", "2"):
            assert (await invoke("send", "--url", url, "-r", "cut", "-q", data)).rc == 0
        assert [json.loads(await read_line(listener.stdout))["data"] for _ in "12"] == [1, 2]

        async def cut_and_publish() -> None:
            # One step of the server's loop: the listener is out before message 3 exists.
            relay, sio = live_relay.relay, live_relay.app.state.sio
            for sid in list(relay.registry.sids("cut")):
                await sio.disconnect(sid)
            relay.publish(HTTP_SENDER, "cut", "message", 3)

        loop = live_relay.server.servers[0].get_loop()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(cut_and_publish(), loop))
        assert json.loads(await read_line(listener.stdout))["data"] == 3  # replayed on rejoin
        assert (await invoke("send", "--url", url, "-r", "cut", "-q", "4")).rc == 0
        result = await finish(listener)
    finally:
        await stop(listener)
    assert result.rc == 0, result.err
    assert [json.loads(line)["offset"] for line in result.out.splitlines()] == [4]
    assert "connection lost" in result.err
    assert "cut resumed after offset 2 (recovered; latest 3)" in result.err


@pytest.mark.slow
async def test_listener_survives_a_server_restart() -> None:
    """The restarted in-memory relay counts from 1 again: new messages still print, once."""
    port = free_port()
    server = await asyncio.to_thread(start_relay_process, port=port)
    listener = None
    try:
        url = server.url
        listener = await start_cli(
            "listen", "--url", url, "-r", "lobby", "--json", "--count", "4", "--max-backoff", "0.2"
        )
        await wait_members(url, "lobby", 1)
        for data in ("before-1", "before-2"):
            assert (await invoke("send", "--url", url, "-r", "lobby", "-q", data)).rc == 0
        before = [json.loads(await read_line(listener.stdout)) for _ in range(2)]
        assert [(e["offset"], e["data"]) for e in before] == [(1, "before-1"), (2, "before-2")]

        assert await asyncio.to_thread(shut, server) == 0
        await wait_for_line(listener.stderr, "reconnect attempt")  # it tried while down
        server = await asyncio.to_thread(start_relay_process, port=port)
        await wait_members(url, "lobby", 1)
        for data in ("after-1", "after-2"):
            assert (await invoke("send", "--url", url, "-r", "lobby", "-q", data)).rc == 0
        result = await finish(listener)
    finally:
        if listener is not None:
            await stop(listener)
        await asyncio.to_thread(shut, server)
    assert result.rc == 0, result.err
    after = result.json_lines()
    assert [(e["offset"], e["data"]) for e in after] == [(1, "after-1"), (2, "after-2")]
    assert "lobby starts again in epoch " in result.err
    assert "Traceback" not in result.err


async def test_since_ahead_of_the_room_says_so(live_relay: LiveRelay) -> None:
    url = live_relay.url
    for data in ("1", "2", "3"):
        assert (await invoke("send", "--url", url, "-r", "short", "-q", data)).rc == 0
    result = await invoke(
        "listen", "--url", url, "-r", "short", "--since", "99999", "--count", "3", "--json"
    )
    assert result.rc == 0, result.err
    assert [e["data"] for e in result.json_lines()] == [1, 2, 3]
    assert result.err_lines == [
        "short is at offset 3, behind your --since 99999 (--since is ahead of the room): "
        "printing from its start"
    ]


@pytest.mark.slow
async def test_a_restarted_room_past_the_old_watermark_is_printed_whole() -> None:
    """The restarted room is already at offset 3 when the listener (watermark 2) rejoins.

    Comparing offsets would take that for a room that went on (3 > 2): the server would replay
    offset 3 alone and the listener would miss new-1 and new-2. The epoch in the join says
    otherwise: everything the new room holds is printed, once, and stderr says it started
    again. (The listener is stopped with SIGSTOP while the server restarts and the three are
    published, so it cannot rejoin any earlier: no sleeps, no race.)
    """
    port = free_port()
    server = await asyncio.to_thread(start_relay_process, port=port)
    listener = None
    try:
        url = server.url
        listener = await start_cli(
            "listen", "--url", url, "-r", "lobby", "--json", "--count", "5", "--max-backoff", "0.2"
        )
        old_epoch = json.loads(await read_line(listener.stderr))["rooms"][0]["epoch"]
        await wait_members(url, "lobby", 1)
        for data in ("old-1", "old-2"):
            assert (await invoke("send", "--url", url, "-r", "lobby", "-q", data)).rc == 0
        before = [json.loads(await read_line(listener.stdout)) for _ in range(2)]
        assert [(e["offset"], e["data"]) for e in before] == [(1, "old-1"), (2, "old-2")]

        listener.send_signal(signal.SIGSTOP)
        try:
            await asyncio.to_thread(server.stop, signal.SIGKILL)  # a crash: history is gone
            server = await asyncio.to_thread(start_relay_process, port=port)
            for data in ("new-1", "new-2", "new-3"):
                assert (await invoke("send", "--url", url, "-r", "lobby", "-q", data)).rc == 0
        finally:
            listener.send_signal(signal.SIGCONT)
        result = await finish(listener)
    finally:
        if listener is not None:
            await stop(listener)
        await asyncio.to_thread(shut, server)
    assert result.rc == 0, result.err
    after = [(e["offset"], e["data"]) for e in result.json_lines()]
    assert after == [(1, "new-1"), (2, "new-2"), (3, "new-3")]
    starts_again = [line for line in result.err_lines if "starts again" in line]
    assert len(starts_again) == 1, result.err
    m = re.fullmatch(
        r"lobby starts again in epoch (\S+) \(the server lost its history\); "
        r"printing all it has \(to offset 3\)",
        starts_again[0],
    )
    assert m and m.group(1) != old_epoch, starts_again
    assert "Traceback" not in result.err


async def test_since_with_an_epoch_resumes_that_life_of_the_room(live_relay: LiveRelay) -> None:
    url = live_relay.url
    for data in ("1", "2", "3"):
        assert (await invoke("send", "--url", url, "-r", "lives", "-q", data)).rc == 0
    first = await invoke("listen", "--url", url, "-r", "lives", "--timeout", "0.01")
    m = re.match(r"listening on lives \(offset 3, epoch (\S+)\)", first.err)
    assert m, first.err
    epoch = m.group(1)
    # the room is still known (3 messages in history): same epoch, a plain resume
    same = await invoke(
        "listen", "--url", url, "-r", "lives", "--since", "1", "--epoch", epoch, "--json",
        "--count", "2",
    )  # fmt: skip
    assert same.rc == 0, same.err
    assert [e["data"] for e in same.json_lines()] == [2, 3]
    assert same.err == ""  # nothing to warn about (and done before a status line)
    # an epoch the room no longer has: all of it, and a line saying why
    other = await invoke(
        "listen", "--url", url, "-r", "lives", "--since", "1", "--epoch", "gone-epoch",
        "--count", "3",
    )  # fmt: skip
    assert other.rc == 0, other.err
    assert [line.split(": ", 1)[1] for line in other.out.splitlines()] == ["1", "2", "3"]
    assert (
        f"lives is no longer in your --epoch gone-epoch: it started again (epoch {epoch}, "
        "at offset 3); printing all it has"
    ) in other.err_lines


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-r", "a", "--epoch", "abc"], "--epoch goes with --since"),
        (["-r", "a", "-r", "b", "--since", "1", "--epoch", "abc"], "--epoch takes exactly one"),
        (["-r", "a", "--since", "1", "--epoch", "no spaces"], "'--epoch' must be 1-64"),
    ],
)
async def test_bad_epoch_options_are_one_line_errors(args: list[str], says: str) -> None:
    result = await invoke("listen", "--url", "http://127.0.0.1:9", *args)
    assert result.rc != 0
    assert len(result.err_lines) == 1 and says in result.err, result.err
