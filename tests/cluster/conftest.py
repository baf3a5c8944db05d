"""A private ``redis-server``, ``relay serve`` nodes pointing at it (each a subprocess), a
transport that records what an in-process node sends, and a proxy that slows a node's Redis."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RelayProcess, free_port, start_relay_process
from tests.relay.conftest import Peers

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """``redis-server`` on a free port, without persistence: stopped, it restarts empty.

    With ``appendonly`` it writes every change to its append-only file in ``directory`` before
    answering (``appendfsync always``): killed, it restarts with its data, unless :meth:`wipe`
    removed it meanwhile.
    """

    def __init__(self, directory: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        assert self.proc is None or self.proc.poll() is not None
        aof = ["yes", "--appendfsync", "always"] if self.appendonly else ["no"]
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", *aof, "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        """SIGKILL: no chance to save anything on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def wipe(self) -> None:
        """Remove what a stopped server saved: it restarts empty."""
        assert self.proc is None or self.proc.poll() is not None
        shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
        (self.directory / "dump.rdb").unlink(missing_ok=True)

    def copy_data(self, to: Path) -> None:
        """Copy what the running server saved so far (its append-only files) to ``to``."""
        shutil.copytree(self.directory / "appendonlydir", to)

    def restore_data(self, copy: Path) -> None:
        """Put an older :meth:`copy_data` back in place of what a stopped server saved: it
        restarts as a Redis restored from a backup, or from its last snapshot after a crash."""
        self.wipe()
        shutil.copytree(copy, self.directory / "appendonlydir")


class Recorder:
    """A transport that records what it was given to send: to rooms (``sent``), and to
    single connections (``unicast``), in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []
        self.unicast: list[tuple[str, str]] = []

    def attach(self, sid: str, eio_sid: str) -> None: ...

    def detach(self, sid: str) -> None: ...

    def send(self, sid: str, packet: str) -> bool:
        self.unicast.append((sid, packet))
        return True

    def send_many(self, sids: Iterable[str], packet: str, skip: str | None = None) -> int:
        return 0

    def send_room(
        self, room: str, version: int, sids: Iterable[str], packet: str, skip: str | None = None
    ) -> int:
        self.sent.append((room, packet, skip))
        return 1

    def hold_off(self, sid: str, seconds: float) -> None: ...


class SlowProxy:
    """A TCP proxy to Redis on a free loopback port that holds what its clients send for
    ``delay`` seconds (as read when it arrives) before passing it on, in order. It runs on its
    own event loop in a thread: starting a node blocks the test's loop, and the node's Redis
    connections go through the proxy while it starts."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.delay = 0.0
        #: everything its clients sent so far (to wait until a command is on its way)
        self.seen = bytearray()
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> SlowProxy:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.port = started.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        for job in (self._slow(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.create_task(job)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _slow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, chunk = await held.get()
                if not chunk:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))  # (a proxy's delay, not a wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(release())
        try:
            with contextlib.suppress(OSError):
                while chunk := await reader.read(65536):
                    self.seen += chunk
                    held.put_nowait((loop.time() + self.delay, chunk))
            held.put_nowait((loop.time(), b""))
            await sender
        finally:
            sender.cancel()
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(OSError):
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
        finally:
            writer.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Nodes:
    """``relay serve`` processes sharing one Redis; every one is stopped at the end."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.procs: list[RelayProcess] = []

    def start(self, **env: str) -> RelayProcess:
        full = {
            "REDIS_URL": self.redis.url,
            "RELAY_PUBLISH_RATE": "0",
            "RELAY_JOIN_RATE": "0",
            "RELAY_DELIVERY_RATE": "0",
            "RELAY_LOG_LEVEL": "info",
            **env,
        }
        proc = start_relay_process(full)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.proc.poll() is None:
                proc.proc.kill()
            proc.proc.wait(timeout=10)


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[Nodes]:
    cluster = Nodes(redis_server)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def durable_nodes(tmp_path: Path) -> Iterator[Nodes]:
    """:class:`Nodes` on a Redis that keeps its data when killed (``nodes.redis``)."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.directory.mkdir()
    server.start()
    cluster = Nodes(server)
    try:
        yield cluster
    finally:
        cluster.close()
        server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Peers]:
    """Connect with ``await clients(url=node.url, user=...)``; all are closed at the end."""
    peers = Peers("http://unused", "websocket")
    try:
        yield peers
    finally:
        await peers.close()
