"""The Procfile's ``web:`` line, run as a platform would: ``bash -c`` with PORT set."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import socketio

from tests.conftest import ROOT, free_port

PROCFILE = ROOT / "Procfile"


def web_command() -> str:
    for line in PROCFILE.read_text().splitlines():
        kind, sep, command = line.partition(":")
        if sep and kind.strip() == "web":
            return command.strip()
    raise AssertionError(f"{PROCFILE} has no 'web:' line")


def test_procfile_web_line_binds_all_interfaces_on_port() -> None:
    command = web_command()
    assert "$PORT" in command or "${PORT}" in command, command
    assert "0.0.0.0" in command, command


@pytest.fixture
def web_process() -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    if shutil.which("relay") is None:
        pytest.fail("the `relay` console script is not on PATH: run `pip install -e .[test]`")
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    for key in [k for k in env if k.startswith("RELAY_") or k == "REDIS_URL"]:
        del env[key]
    proc = subprocess.Popen(
        ["bash", "-c", web_command()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, signalled as a platform would
    )
    output: list[str] = []
    assert proc.stdout is not None
    drain = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    drain.start()
    try:
        yield proc, port, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        drain.join(timeout=5)
        proc.stdout.close()


async def wait_healthy(proc: subprocess.Popen[str], url: str, output: list[str]) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"web process exited {proc.returncode}:\n{''.join(output)}")
            try:
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz not 200 within 30 s:\n{''.join(output)}")
            await asyncio.sleep(0.05)


async def test_procfile_web_serves_and_stops_cleanly(
    web_process: tuple[subprocess.Popen[str], int, list[str]],
) -> None:
    proc, port, output = web_process
    url = f"http://127.0.0.1:{port}"
    await wait_healthy(proc, url, output)

    client = socketio.AsyncClient(reconnection=False)
    got: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    client.on("message", got.put)
    await client.connect(url, auth={"user": "procfile"}, transports=["websocket"])
    try:
        join = await client.call("join", {"room": "procfile"}, timeout=5)
        assert join == {"ok": True, "room": "procfile", "offset": 0, "members": 1}
        ack = await client.call("publish", {"room": "procfile", "data": {"up": True}}, timeout=5)
        assert ack["ok"] is True and ack["offset"] == 1
        env = await asyncio.wait_for(got.get(), 5)
        assert env["id"] == ack["id"] and env["data"] == {"up": True}
        assert env["from"] == {"sid": client.get_sid(), "user": "procfile"}
    finally:
        await client.disconnect()

    os.killpg(proc.pid, signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, f"exit {code} after SIGTERM:\n{''.join(output)}"
    assert any(f"0.0.0.0:{port}" in line for line in output), "".join(output)
