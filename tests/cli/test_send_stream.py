"""``relay send -``: the first refused line stops the stream, and the error says exactly which
lines were published; the relay's publish rate is kept to, and ``rate_limited`` retried in order.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import re
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from relay.cli.client import Connection
from relay.cli.send import read_lines
from relay.cli.stream import MAX_TRIES, Item, Pacer, Streamer, Unsendable
from relay.limits import Rate
from relay.settings import Settings
from tests.cli.clirun import Result, invoke, run_cli
from tests.conftest import LiveRelay, serve_in_thread


def history(url: str, room: str) -> list[Any]:
    """The data of every message the room holds, in offset order."""
    r = httpx.get(f"{url}/api/v1/rooms/{room}/history", params={"since": 0, "limit": 1000})
    r.raise_for_status()
    return [m["data"] for m in r.json()["messages"]]


def published_lines(error: str) -> set[int]:
    """The line numbers an error's ``published lines 1-4 and 6`` names."""
    m = re.search(r"published lines? ([\d, and-]+), and no other", error)
    assert m, error
    out: set[int] = set()
    for part in re.split(r", | and ", m.group(1)):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def one_error(result: Result) -> str:
    assert result.rc == 1, (result.rc, result.out, result.err)
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("error: ")
    return result.err_lines[0]


async def test_a_refused_line_stops_the_stream_and_the_error_names_what_was_published(
    live_relay: LiveRelay,
) -> None:
    """Line 2 is refused; of the 600 after it only those already in flight (the window) may
    go out, and the error names exactly the lines the room now holds."""
    lines = [b"1", b'"' + b"x" * 70_000 + b'"', *(str(n).encode() for n in range(3, 603))]
    result = await invoke(
        "send", "--url", live_relay.url, "-r", "stopped", "--json", "-",
        input=b"\n".join(lines) + b"\n",
    )  # fmt: skip
    error = one_error(result)
    assert error.startswith("error: line 2: ") and "(too_large)" in error
    held = history(live_relay.url, "stopped")
    assert 1 in held and len(held) < 100  # the stream stopped: at most a window's worth went out
    assert published_lines(error) == set(held)  # exactly, by line number (data n is line n)
    assert [ack["offset"] for ack in result.json_lines()] == list(range(1, len(held) + 1))


async def test_with_one_in_flight_nothing_after_the_refused_line_is_published(
    live_relay: LiveRelay,
) -> None:
    result = await invoke(
        "send", "--url", live_relay.url, "-r", "one-by-one", "--window", "1", "-",
        input=b'1\n\n{"room": 1}\n"' + b"x" * 70_000 + b'"\n5\n6\n',
    )  # fmt: skip
    error = one_error(result)
    assert error.startswith("error: line 4: ")
    assert error.endswith("published lines 1 and 3, and no other")  # line 2 is blank
    assert history(live_relay.url, "one-by-one") == [1, {"room": 1}]


async def test_a_line_over_the_frame_limit_is_refused_with_its_number(
    live_relay: LiveRelay,
) -> None:
    """A line whose packet cannot fit in one relay frame is refused before it is sent (sent,
    the relay would close the connection: "lost the connection", no line number)."""
    near = b"x" * (1024 * 1024 - 40)  # fits as a line, not as a packet
    for big, number in ((near, 3), (b"y" * (3 * 1024 * 1024), 3)):
        result = await run_cli(
            "send", "--url", live_relay.url, "-r", "frames", "--window", "1", "-",
            input=b"a\nb\n" + big + b"\nc\n",
        )  # fmt: skip
        error = one_error(result)
        assert error.startswith(f"error: line {number}: ") or error.startswith(
            f"error: line {number} is over"
        ), error
        assert "frame limit" in error and "published lines 1-2, and no other" in error
        assert "never awaited" not in result.err
    assert history(live_relay.url, "frames") == ["a", "b", "a", "b"]


async def test_streaming_keeps_to_the_relays_publish_rate_in_order() -> None:
    """The relay allows 200/s in bursts of 20; 300 lines arrive whole and in order, and the
    relay never had to refuse one (relay send paces itself from /healthz)."""
    settings = Settings(publish_rate=Rate(200.0, 20.0))
    with serve_in_thread(settings) as live:
        data = "".join(f"{n}\n" for n in range(1, 301)).encode()
        result = await run_cli("send", "--url", live.url, "-r", "paced", "-q", "-", input=data)
        assert result.rc == 0, result.err
        assert result.err == ""
        assert history(live.url, "paced") == list(range(1, 301))
        health = (await asyncio.to_thread(httpx.get, f"{live.url}/healthz")).json()
        assert health["rate_limited"] == 0


async def streamer_run(
    url: str, room: str, count: int, pacer: Pacer | None = None, **kw: Any
) -> tuple[Any, list[Any]]:
    acks: list[Any] = []

    async def source() -> AsyncIterator[Item]:
        for n in range(1, count + 1):
            yield n, {"room": room, "data": n}

    async with Connection(url, timeout=10) as conn:
        outcome = await Streamer(
            conn, "publish", source(), acks.append, label=lambda n: f"line {n}", pacer=pacer, **kw
        ).run()
    return outcome, acks


async def test_rate_limited_lines_are_resent_and_any_overtaking_is_named() -> None:
    """Unpaced (a relay that states no rate), 150 lines against 100/s in bursts of 10: every
    line is published once; a refused line is resent after the relay's wait, and a line that
    was accepted ahead of it meanwhile is named (the only way the order can break)."""
    with serve_in_thread(Settings(publish_rate=Rate(100.0, 10.0))) as live:
        outcome, _ = await streamer_run(live.url, "retried", 150)
        held = await asyncio.to_thread(history, live.url, "retried")
    assert outcome.error is None, outcome.error
    assert outcome.published == set(range(1, 151))
    assert sorted(held) == list(range(1, 151))
    overtaking = {line for line, _ in outcome.overtaken}
    in_order = [n for n in held if n not in overtaking]
    assert in_order == sorted(in_order)
    for line, refused in outcome.overtaken:
        assert held.index(line) < held.index(refused) and refused < line


async def test_retries_of_one_line_are_bounded() -> None:
    """A relay that keeps refusing (here: resent at once, at 1 message a minute): the line is
    tried MAX_TRIES times, then the stream stops, naming it."""

    async def no_wait(_: float) -> None:
        await asyncio.sleep(0)

    with serve_in_thread(Settings(publish_rate=Rate(1 / 60, 1.0))) as live:
        outcome, _ = await streamer_run(live.url, "bounded", 3, sleep=no_wait)
        health = (await asyncio.to_thread(httpx.get, f"{live.url}/healthz")).json()
    assert outcome.published == {1}
    assert outcome.error is not None and outcome.error.code == "rate_limited"
    assert outcome.error.message.startswith("line 2: ")
    assert f"still refused after {MAX_TRIES} tries" in outcome.error.message
    assert health["rate_limited"] == MAX_TRIES + 1  # line 3, in flight with line 2, once
    assert outcome.summary() == "published line 1, and no other"


def test_pacer_keeps_below_the_rate_with_half_the_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def send(n: int) -> None:
        pacer = Pacer(Rate(100.0, 20.0), clock=lambda: now[0], sleep=sleep)
        for _ in range(n):
            await pacer.wait()

    asyncio.run(send(10 + 90))
    # 10 at once (half the burst of 20), then 90 at 90/s: one second
    assert now[0] == pytest.approx(1.0, rel=0.01)
    assert Pacer(None).rate is None and Pacer(Rate(0.0, 0.0)).rate is None


@pytest.fixture
def stdin_pipe() -> Iterator[tuple[io.BufferedReader, int]]:
    r, w = os.pipe()
    reader = os.fdopen(r, "rb")
    try:
        yield reader, w
    finally:
        reader.close()
        os.close(w)


def test_stopping_early_leaves_no_coroutine_unawaited(
    stdin_pipe: tuple[io.BufferedReader, int],
) -> None:
    """The reader thread hands chunks over without making coroutines: when the loop is gone
    first (the stream stopped on line 2 with more of stdin still coming), no coroutine is left
    un-awaited (the old reader made one in its thread, and Python warned as it was dropped)."""
    reader, w = stdin_pipe
    with warnings.catch_warnings():  # what earlier tests left for the collector is not ours
        warnings.simplefilter("ignore")
        gc.collect()

    async def first_lines() -> list[Item]:
        out: list[Item] = []
        async for item in read_lines(reader, limit=8 * 1024):
            out.append(item)
        return out

    with warnings.catch_warnings(record=True) as caught:  # (records the reader thread's too)
        warnings.simplefilter("always")
        os.write(w, b"1\n" + b"x" * (20 * 1024))  # line 2 is long and not finished yet
        got = asyncio.run(first_lines())
        os.write(w, b"y" * 1024)  # the reader thread reads again, after the loop closed
        for thread in threading.enumerate():
            if thread.name == "relay-send-stdin":
                thread.join(timeout=5)
                assert not thread.is_alive()
        gc.collect()
    assert got[0] == (1, "1")
    assert isinstance(got[1], Unsendable) and got[1].number == 2
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
