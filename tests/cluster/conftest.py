"""A private ``redis-server``, ``relay serve`` nodes pointing at it (each a subprocess), and a
transport that records what an in-process node sends."""

from __future__ import annotations

import shutil
import socket
import subprocess
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
async def clients() -> AsyncIterator[Peers]:
    """Connect with ``await clients(url=node.url, user=...)``; all are closed at the end."""
    peers = Peers("http://unused", "websocket")
    try:
        yield peers
    finally:
        await peers.close()
