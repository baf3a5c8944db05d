"""Shared fixtures: a real relay on a free port, started in a thread, waited on, not slept on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay import limits
from relay.limits import OFF
from relay.server import RelayServer, uvicorn_config
from relay.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LiveRelay:
    """A relay serving on 127.0.0.1:port in a background thread."""

    url: str
    port: int
    server: RelayServer
    thread: threading.Thread

    @property
    def app(self) -> Any:
        return self.server.config.loaded_app.app

    @property
    def relay(self) -> Any:
        return self.app.state.relay


#: every test client connects from 127.0.0.1, so a module's worth of them (a loadtest's 300)
#: would trip the per-IP edge limits: test relays run without them unless a test asks for them
NO_EDGE_LIMITS = {"max_connections_per_ip": 0, "connect_rate": limits.OFF}
NO_EDGE_LIMITS_ENV = {"RELAY_MAX_CONNECTIONS_PER_IP": "0", "RELAY_CONNECT_RATE": "0"}


@contextlib.contextmanager
def serve_in_thread(
    settings: Settings | None = None, edge_limits: bool = False, **extra: Any
) -> Iterator[LiveRelay]:
    """Run a relay with ``settings`` (port 0: the OS picks) until the block ends.

    Without ``edge_limits`` the per-IP connection cap and connect rate are off (see
    :data:`NO_EDGE_LIMITS`); with it, ``settings`` are used exactly as given. ``extra`` goes to
    uvicorn's config (``timeout_keep_alive=1``).
    """
    settings = (settings or Settings()).replace(port=0, host="127.0.0.1", log_level="warning")
    if not edge_limits:
        settings = settings.replace(**NO_EDGE_LIMITS)
    server = RelayServer(uvicorn_config(settings, **extra))
    # The test process owns signal handling; the server thread must not install handlers.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, name="relay-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("relay did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveRelay(f"http://127.0.0.1:{port}", port, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def live_relay() -> Iterator[LiveRelay]:
    """One relay per test module, with default settings but for the per-connection rates.

    Tests of ordering and replay publish hundreds of messages from one connection as fast as
    they can, past what the default rates allow; the rates themselves are tested with their
    defaults (and tighter ones) in tests/relay/test_limits_live.py.
    """
    with serve_in_thread(Settings(publish_rate=OFF, join_rate=OFF)) as live:
        yield live


@dataclass
class RelayProcess:
    """``relay serve`` as a subprocess, on the port it reported."""

    proc: subprocess.Popen[str]
    url: str
    port: int
    lines: list[str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


_RUNNING = re.compile(r"running on https?://[^:]+:(\d+)")


def start_relay_process(
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    port: int = 0,
    timeout: float = 20,
) -> RelayProcess:
    """Start ``relay serve`` and wait until it says where it listens."""
    # (the per-IP edge limits are off unless ``env`` sets them: see NO_EDGE_LIMITS)
    full_env = {
        **os.environ,
        **NO_EDGE_LIMITS_ENV,
        "PORT": str(port),
        "RELAY_HOST": "127.0.0.1",
        **(env or {}),
    }
    full_env.pop("RELAY_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", *(args or [])],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = _RUNNING.search(line)
        if m:
            # Keep draining output so the child never blocks on a full pipe.
            threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
            actual = int(m.group(1))
            return RelayProcess(proc, f"http://127.0.0.1:{actual}", actual, lines)
    proc.kill()
    proc.wait()
    raise RuntimeError("relay serve did not start:\n" + "".join(lines))


def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    with proc.stdout:  # closed at EOF, so a finished process leaves no unclosed pipe behind
        for line in proc.stdout:
            lines.append(line)


@pytest.fixture
def relay_process() -> Iterator[RelayProcess]:
    rp = start_relay_process()
    try:
        yield rp
    finally:
        if rp.proc.poll() is None:
            rp.proc.kill()
            rp.proc.wait()


def free_port() -> int:
    """A port nothing listens on right now (for restarting a server on the same port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    predicate: Any, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> None:
    """Poll ``predicate()`` until true or fail after ``timeout`` seconds (naming ``what``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(interval)


async def poll(check: Any, timeout: float, what: str) -> Any:
    """``await check()`` until it returns something true, and return that; fail after
    ``timeout`` seconds (naming ``what``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client-to-server websocket frame (clients must mask: RFC 6455 §5.3), any length."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
