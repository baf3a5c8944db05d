"""A receiver's answer is read within bounds: one that answers without end (fast, or a byte at
a time) neither grows relay's memory nor holds the one request in flight past the timeout.

The receivers are raw TCP servers on free ports, writing what a misbehaving one would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from relay.core import webhooks
from relay.core.rooms import Member
from relay.core.webhooks import Webhooks
from relay.settings import Settings
from tests.conftest import wait_for

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000000000\r\n\r\n"
#: what the flooding receiver writes at most (an unbounded read would hold all of it)
FLOOD_MAX = 256 * 1024 * 1024

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """Counts requests and the bytes its answers managed to write."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[float] = []
        self.written = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            self.requests.append(time.monotonic())
            writer.write(HEAD)
            await self.answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # (relay closed the connection: what these tests want)
        finally:
            writer.close()


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[Raw]:
    raw = Raw(answer)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.handle(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hooks"
    try:
        yield raw
    finally:
        server.close()


def hooks_for(url: str, timeout: float) -> Webhooks:
    settings = Settings(
        webhook_url=url, webhook_secret="k", webhook_linger=0, webhook_timeout=timeout
    )
    return Webhooks(settings, lambda: 0)


async def test_an_answer_without_end_is_read_only_so_far_and_the_status_stands() -> None:
    async def flood(writer: asyncio.StreamWriter) -> None:
        chunk = b"x" * 65536
        while raw.written < FLOOD_MAX:
            writer.write(chunk)
            await writer.drain()
            raw.written += len(chunk)
        await asyncio.sleep(60)  # (then nothing: an unbounded read waits for the rest)

    async with serving(flood) as raw:
        hooks = hooks_for(raw.url, timeout=10)
        hooks.start()
        try:
            started = time.monotonic()
            hooks.connected(Member("s1", None))
            await wait_for(lambda: hooks.stats["sent"] == 1, timeout=5)
            assert time.monotonic() - started < 5  # (well within the 10 s timeout)
            hooks.connected(Member("s2", None))  # the slot is free for the next batch
            await wait_for(lambda: hooks.stats["sent"] == 2, timeout=5)
        finally:
            await hooks.close(1)
    assert len(raw.requests) == 2  # each batch once: a 200 is delivered, whatever follows
    # what relay took before closing: its bound and the kernel's buffers, not the flood
    assert raw.written < 2 * 16 * 1024 * 1024 + 2 * webhooks.ANSWER_MAX, raw.written


async def test_an_answer_that_dribbles_frees_the_slot_at_the_timeout() -> None:
    async def dribble(writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(b"x")
            await writer.drain()
            raw.written += 1
            await asyncio.sleep(0.05)

    async with serving(dribble) as raw:
        hooks = hooks_for(raw.url, timeout=0.5)
        hooks.start()
        try:
            hooks.connected(Member("s1", None))
            hooks_started = time.monotonic()
            await wait_for(lambda: hooks.stats["sent"] == 1, timeout=5)
            assert time.monotonic() - hooks_started < 0.5 + 1
            hooks.connected(Member("s2", None))
            await wait_for(lambda: hooks.stats["sent"] == 2, timeout=5)
        finally:
            await hooks.close(1)
    assert len(raw.requests) == 2 and hooks.stats["retries"] == 0
    assert raw.written < 40  # (about 0.5 s of it, twice)
