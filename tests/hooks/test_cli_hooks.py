"""``relay hooks`` as a subprocess: events from a real relay, bad signatures, --forward-to."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

import httpx
import pytest

from relay.settings import Settings
from tests.conftest import ROOT, free_port, serve_in_thread, wait_for
from tests.hooks.receiver import SECRET, receiving
from tests.relay.conftest import Peers, unique


@dataclass
class Hooks:
    proc: subprocess.Popen[str]
    port: int
    out: queue.Queue[str] = field(default_factory=queue.Queue)
    err: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/relay"

    async def line(self, accept: Callable[[str], bool], timeout: float = 10) -> str:
        """The first stdout line ``accept`` takes (earlier ones are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = self.out.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.01)
                continue
            if accept(text):
                return text
        raise AssertionError(f"no such line on stdout within {timeout}s; stderr: {self.err}")


def _pump(stream: IO[str], sink: Callable[[str], None]) -> None:
    with stream:
        for text in stream:
            sink(text.rstrip("\n"))


@contextlib.contextmanager
def relay_hooks(*args: str, env: dict[str, str] | None = None) -> Iterator[Hooks]:
    """``relay hooks ARGS --port P`` until the block ends (then Ctrl-C: it must exit 0)."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "hooks", "--port", str(port), *args],
        cwd=ROOT,
        env={**base, "RELAY_WEBHOOK_SECRET": SECRET, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    hooks = Hooks(proc, port)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, hooks.out.put), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, hooks.err.append), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        deadline = time.monotonic() + 15
        while True:  # listening yet?
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"relay hooks did not start: {hooks.err}")
            time.sleep(0.02)
        yield hooks
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, hooks.err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pump in pumps:
            pump.join(timeout=5)


@pytest.fixture
async def peers() -> AsyncIterator[list[Peers]]:
    made: list[Peers] = []
    yield made
    for p in made:
        await p.close()


def hooked(url: str) -> Settings:
    return Settings(webhook_url=url, webhook_secret=SECRET, shutdown_timeout=3.0)


async def test_prints_signed_events_as_json_lines(peers: list[Peers]) -> None:
    room = unique()
    with relay_hooks("--json") as hooks, serve_in_thread(hooked(hooks.url)) as live:
        p = Peers(live.url, "websocket")
        peers.append(p)
        alice = await p("alice")
        await alice.ok("join", {"room": room})
        first = json.loads(await hooks.line(lambda t: '"connect"' in t))
        assert first["name"] == "connect" and first["sid"] == alice.sid
        assert first["user"] == "alice" and isinstance(first["ts"], int)
        joined = json.loads(await hooks.line(lambda t: '"join"' in t))
        assert joined == {**joined, "name": "join", "room": room, "sid": alice.sid}
        assert hooks.err == []  # --json: nothing on stderr, no warning
        async with httpx.AsyncClient() as client:
            stats = (await client.get(live.url + "/healthz")).json()["webhooks"]
        assert stats["sent"] >= 2 and not any(stats["dropped"].values())


def signed(body: bytes, secret: str, timestamp: int) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "X-Relay-Timestamp": str(timestamp),
        "X-Relay-Signature": "sha256=" + mac.hexdigest(),
    }


async def test_rejects_a_bad_signature_and_a_stale_timestamp() -> None:
    body = b'{"events": [{"name": "connect", "ts": 1, "sid": "x", "user": null}]}'
    now = int(time.time())
    with relay_hooks("--json") as hooks:
        async with httpx.AsyncClient() as client:
            wrong = await client.post(hooks.url, content=body, headers=signed(body, "other", now))
            stale = await client.post(
                hooks.url, content=body, headers=signed(body, SECRET, now - 600)
            )
            unsigned = await client.post(hooks.url, content=body)
            good = await client.post(hooks.url, content=body, headers=signed(body, SECRET, now))
        assert (wrong.status_code, stale.status_code, unsigned.status_code) == (401, 401, 401)
        assert good.status_code == 200
        # only the good one is printed
        assert json.loads(await hooks.line(lambda t: True))["sid"] == "x"
        assert hooks.out.empty()
    warnings = [line for line in hooks.err if line.startswith("rejected")]
    assert len(warnings) == 3, hooks.err
    assert "does not match" in warnings[0] and "off" in warnings[1] and "header" in warnings[2]


async def test_forwards_verified_requests_unchanged(peers: list[Peers]) -> None:
    with (
        receiving(script=[503]) as app,  # the application behind relay hooks
        relay_hooks("--forward-to", app.url) as hooks,
        serve_in_thread(hooked(hooks.url)) as live,
    ):
        p = Peers(live.url, "websocket")
        peers.append(p)
        alice = await p("alice")
        line = await hooks.line(lambda t: "connect" in t)
        assert alice.sid in line and "alice" in line  # a human line
        await wait_for(lambda: app.named("connect"), timeout=10)
        # relay signed it, relay hooks passed it on, the application verified it itself; its
        # 503 went back to relay, which retried the same batch
        assert [r.status for r in app.requests[:2]] == [503, 200]
        assert app.requests[0].body == app.requests[1].body
        assert app.events[0]["sid"] == alice.sid
        assert app.requests[1].headers["X-Relay-Signature"].startswith("sha256=")
        assert live.relay.hooks.stats["retries"] == 1
    assert any("answered 503" in line for line in hooks.err), hooks.err


def test_a_port_in_use_and_a_missing_secret_are_one_line_errors() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay", "hooks", *args],
            cwd=ROOT,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = run("--port", port, RELAY_WEBHOOK_SECRET="s")
    assert busy.returncode == 1 and busy.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    nosecret = run("--port", "0")
    assert nosecret.returncode == 1 and "RELAY_WEBHOOK_SECRET" in nosecret.stderr
    assert nosecret.stderr.count("\n") == 1
    badurl = run("--port", "0", "--forward-to", "localhost:3000", RELAY_WEBHOOK_SECRET="s")
    assert badurl.returncode == 1 and "--forward-to" in badurl.stderr
