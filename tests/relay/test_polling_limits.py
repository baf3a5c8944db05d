"""Long-polling under a hostile client: what the server queues for a session that never polls
is bounded by ``RELAY_MAX_BUFFER`` as on a websocket (issue 11), and POST bodies are read only
up to the transport limit, with a clear answer for one that is too large or not text."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread
from tests.relay.conftest import Peers, unique
from tests.relay.raw import TIMEOUT, RawPolling, RawWs
from tests.relay.test_sessions import Ledger, gone

BOUND = 256 * 1024


class Records(logging.Handler):
    """Every log record of the server (which runs in this process) at INFO and above."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.records if text in r.getMessage()]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("relay", "engineio", "socketio", "uvicorn")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LiveRelay, Ledger]]:
    """A relay holding at most 256 KiB for any one connection."""
    with serve_in_thread(Settings(max_buffer=BOUND)) as live:
        yield live, Ledger().attach(live.relay, monkeypatch)


@pytest.fixture
async def http(bounded: tuple[LiveRelay, Ledger]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bounded[0].url, timeout=TIMEOUT) as client:
        yield client


def _queued(live: LiveRelay, eio_sid: str) -> int:
    sock = live.app.state.sio.eio.sockets.get(eio_sid)
    return 0 if sock is None else sock.queue.qsize()


async def test_a_session_that_never_polls_is_dropped_as_a_slow_client(
    bounded: tuple[LiveRelay, Ledger], http: httpx.AsyncClient, records: Records
) -> None:
    """Issue 11: a session that only POSTs and never GETs had 1,000 × 60 KB direct messages
    queued and stayed connected."""
    live, ledger = bounded
    room = unique()
    peers = Peers(live.url, "websocket")
    sender = await peers()
    await sender.ok("join", {"room": room})
    session = await RawPolling.open(http)
    sid = await session.connect()
    assert (await session.call(1, "join", {"room": room}))["ok"] is True
    data = "x" * 60_000
    delivered = 0
    for _ in range(3 * BOUND // 60_000):  # three times the bound, then it has to be gone
        ack = await sender.ok("direct", {"to": sid, "data": data})
        delivered += ack["delivered"]
        assert (await session.post("3")).status_code in (200, 400)  # a PONG, as a live client
    assert delivered <= BOUND // 60_000 + 2
    left = await sender.until(
        lambda e, p: e == "presence" and p["action"] == "leave" and p["member"]["sid"] == sid
    )
    assert left
    await gone(live, session.eio_sid, sid)
    assert ledger.disconnects == [(sid, True)]  # lost, not a goodbye: recoverable, as a websocket
    (line,) = records.lines("slow client")
    assert line.startswith(f"dropping polling session {session.eio_sid}: send buffer over its")
    assert line.endswith(f" > {BOUND} bytes): slow client")
    assert (await session.get()).status_code == 400
    await peers.close()


async def test_pings_and_upgrades_a_client_never_reads_are_bounded(
    bounded: tuple[LiveRelay, Ledger], http: httpx.AsyncClient
) -> None:
    """Engine.IO packets a client sends that make the server answer (UPGRADE -> NOOP) go
    through the same bound; its PINGs are not answered (they are the server's to send)."""
    live, ledger = bounded
    session = await RawPolling.open(http)
    sid = await session.connect()
    r = await session.post(*["2"] * 100)
    assert r.status_code == 200 and _queued(live, session.eio_sid) == 0  # no PONGs
    for _ in range(8):  # 8 × 4,000 NOOPs: far past the bound in packets, if not in bytes
        r = await session.post(*["5"] * 4000)
        assert r.status_code in (200, 400)
    await gone(live, session.eio_sid, sid)
    assert ledger.disconnects == [(sid, True)]


async def test_the_bound_holds_on_a_broadcast_too(
    bounded: tuple[LiveRelay, Ledger], http: httpx.AsyncClient
) -> None:
    live, ledger = bounded
    room = unique()
    peers = Peers(live.url, "websocket")
    publisher = await peers()
    await publisher.ok("join", {"room": room})
    session = await RawPolling.open(http)
    sid = await session.connect()
    assert (await session.call(1, "join", {"room": room}))["ok"] is True
    for _ in range(3 * BOUND // 30_000):
        await publisher.ok("publish", {"room": room, "data": "y" * 30_000})
    await gone(live, session.eio_sid, sid)
    assert ledger.disconnects == [(sid, True)]
    members = (await publisher.ok("presence", {"room": room}))["members"]
    assert [m["sid"] for m in members] == [publisher.sid]
    await peers.close()


async def test_a_polling_client_that_polls_gets_everything(
    bounded: tuple[LiveRelay, Ledger], http: httpx.AsyncClient
) -> None:
    """The bound is on what waits, not on what passes: ten times the bound, fetched as it
    comes, all arrives."""
    live, _ = bounded
    peers = Peers(live.url, "websocket")
    sender = await peers()
    session = await RawPolling.open(http)
    sid = await session.connect()
    got = 0
    for i in range(10 * BOUND // 60_000):
        await sender.ok("direct", {"to": sid, "data": f"{i}" + "z" * 60_000})
        while got <= i:
            got += sum(p.startswith("42") for p in await session.packets())
    assert got == 10 * BOUND // 60_000
    await peers.close()


# -- POST bodies -------------------------------------------------------------------------------


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for _ in range(total // size):
        yield b"3" * size


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_post_over_the_limit_is_answered_413_however_it_is_sent(
    live_relay: LiveRelay,
) -> None:
    """Issue 11: a POST over 1 MiB got no response. Declared (Content-Length) or chunked, it
    is answered 413 at once, the body is not held, and the session goes on."""
    limit = Settings().max_frame
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        session = await RawPolling.open(http)
        await session.connect()
        r = await http.post(session.url, content=b"3" * (limit + 1))
        assert r.status_code == 413 and str(limit) in r.text
        before = _rss_kb()
        cpu = time.process_time()
        r = await http.post(session.url, content=_chunks(64 * 1024 * 1024))
        assert r.status_code == 413
        assert time.process_time() - cpu < 20  # (both sides; linear in the bytes sent)
        assert _rss_kb() - before < 32 * 1024
        assert (await session.call(1, "join", {"room": unique()}))["ok"] is True


async def test_a_chunked_post_within_the_limit_is_read(live_relay: LiveRelay) -> None:
    """A body without Content-Length was read as empty (python-engineio reads
    CONTENT_LENGTH bytes, 0 when there is none)."""
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        session = await RawPolling.open(http)

        async def body() -> AsyncIterator[bytes]:
            yield b"4"
            yield b"0"

        assert (await http.post(session.url, content=body())).status_code == 200
        assert any(p.startswith("40{") for p in await session.packets())


async def test_a_body_that_is_not_utf8_is_a_400_and_one_line(
    live_relay: LiveRelay, records: Records
) -> None:
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=TIMEOUT) as http:
        session = await RawPolling.open(http)
        await session.connect()
        for body in (b"42\xff\xfe", b"4\x1e\x1e", b"d=nothing"):
            r = await http.post(session.url, content=body)
            assert r.status_code == 400, (body, r.status_code, r.text)
        assert (await session.call(1, "join", {"room": unique()}))["ok"] is True
    assert not [r for r in records.records if r.exc_info], "a traceback was logged"
    assert len(records.lines(f"refused a POST from {session.eio_sid}")) == 3


async def test_a_payload_of_many_packets_costs_linear_time(live_relay: LiveRelay) -> None:
    """A 1 MiB body of 500,000 PONGs is decoded in one pass."""
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=30) as http:
        session = await RawPolling.open(http)
        await session.connect()
        cpu = time.process_time()
        r = await http.post(session.url, content="\x1e".join(["3"] * 349_000).encode())
        assert r.status_code == 200
        assert time.process_time() - cpu < 20
        assert (await session.call(1, "join", {"room": unique()}))["ok"] is True


async def test_a_websocket_ping_from_the_client_is_not_answered(live_relay: LiveRelay) -> None:
    """python-engineio answers no PING from a client, so a client that pings and never reads
    makes the server queue nothing."""
    ws = await RawWs.open(live_relay.port)
    await ws.connect()
    ws.send(*["2"] * 1000, '421["presence",{"room":"r"}]')
    assert (await ws.text()).startswith("431[")
    ws.close()
