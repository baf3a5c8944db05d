"""``relay serve`` as a real process: graceful SIGTERM, and a one-line refusal of bad settings."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import socketio

from tests.conftest import ROOT, free_port, start_relay_process
from tests.relay.conftest import TIMEOUT, Peers, close_client, unique


async def test_sigterm_closes_clients_and_exits_zero() -> None:
    proc = start_relay_process()
    peers = Peers(proc.url, "websocket")
    try:
        ws = await peers()
        polling = await peers(transports=["polling"])
        room = unique()
        await ws.ok("join", {"room": room})
        await polling.ok("join", {"room": room})
        await ws.ok("publish", {"room": room, "data": "before"})
        assert (await polling.until(lambda e, _: e == "message"))[-1][1]["data"] == "before"

        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        for peer in (ws, polling):
            await asyncio.wait_for(peer.disconnected.wait(), 5)
        code = await asyncio.to_thread(proc.proc.wait, 10)
        assert code == 0, "".join(proc.lines)
        assert time.monotonic() - started < 5
    finally:
        await peers.close()
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


async def test_sigterm_with_no_clients_exits_zero_at_once() -> None:
    proc = start_relay_process()
    sio = socketio.AsyncClient(reconnection=False)
    try:
        started = time.monotonic()
        code = proc.stop(signal.SIGTERM, timeout=10)
        assert code == 0, "".join(proc.lines)
        assert time.monotonic() - started < 5
        # And clients can no longer connect.
        try:
            await sio.connect(proc.url, transports=["websocket"], wait_timeout=TIMEOUT)
        except socketio.exceptions.ConnectionError:
            pass
        else:
            raise AssertionError("a stopped relay accepted a connection")
    finally:
        await close_client(sio)
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PORT": "0", "RELAY_HOST": "127.0.0.1", **env}
    return subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_invalid_settings_exit_non_zero_with_one_line() -> None:
    # Every variable's parsing is covered by test_settings; this proves the edge of the CLI.
    result = run_serve({"RELAY_HISTORY_SIZE": "abc"})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "RELAY_HISTORY_SIZE='abc'" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "Uvicorn running" not in result.stdout + result.stderr


async def test_an_unreachable_redis_starts_unhealthy_and_says_so() -> None:
    # a Redis add-on sets REDIS_URL for every dyno: a Redis that does not answer at start-up
    # must not keep relay from starting, but it says so, and /healthz names it (503)
    rp = start_relay_process({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, timeout=30)
    try:
        said = "".join(rp.lines)
        assert "is not answering" in said and "ready (Redis cluster)" in said, said
        async with httpx.AsyncClient(base_url=rp.url, timeout=10) as http:
            health = await http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["backends"]["redis"].startswith("unavailable"), health.text
    finally:
        assert rp.stop() == 0
    plain = start_relay_process({"REDIS_URL": ""})
    try:
        assert "ready (in-memory)" in "".join(plain.lines)
    finally:
        assert plain.stop() == 0


def test_a_port_in_use_is_one_line_before_anything_starts() -> None:
    holder = start_relay_process()
    try:
        result = run_serve({"PORT": str(holder.port)})
        assert result.returncode != 0
        out = result.stdout + result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot listen on" in lines[0] and str(holder.port) in lines[0]
        assert not re.search(r"\bready\b", out) and "startup complete" not in out.lower(), out
        assert "Traceback" not in out
    finally:
        holder.stop()


async def test_start_and_stop_say_each_thing_once_and_requests_are_logged() -> None:
    proc = start_relay_process()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
        assert proc.stop(signal.SIGTERM, timeout=10) == 0
        text = "".join(proc.lines)
        assert text.count("ready (in-memory)") == 1, text
        assert text.count("closed 0 client sessions") <= 1, text
        assert text.count("client sessions") == 1, text
        assert '"GET /healthz HTTP/1.1" 200' in text, text  # the access log, at info
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()
