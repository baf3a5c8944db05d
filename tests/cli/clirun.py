"""Running ``relay`` as a subprocess from async tests, and waiting on what it prints."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from typer.testing import CliRunner

from relay.cli.client import Connection
from relay.cli.main import app
from tests.conftest import ROOT


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["COLUMNS"] = "200"  # rich wraps at the terminal width; keep one line per message
    return {**env, **(extra or {})}


async def start_cli(
    *args: str, stdin: bool = False, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        cwd=ROOT,
        env=cli_env(env),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(
    proc: asyncio.subprocess.Process, input: bytes | None = None, timeout: float = 30
) -> Result:
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def run_cli(
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> Result:
    """Run ``relay ARGS`` to completion (with ``env`` added to a RELAY_*-free environment)."""
    proc = await start_cli(*args, stdin=input is not None, env=env)
    return await finish(proc, input, timeout)


async def invoke(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run ``relay ARGS`` in this process (in a thread, so the test's loop keeps running).

    Much cheaper than a subprocess on a busy machine; one at a time, as it swaps sys.stdout.
    """
    clean: dict[str, str | None] = {"RELAY_URL": None, "RELAY_TOKEN": None, "COLUMNS": "200"}
    result = await asyncio.to_thread(
        CliRunner().invoke, app, list(args), input=input, env={**clean, **(env or {})}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


async def read_line(stream: asyncio.StreamReader | None, timeout: float = 20) -> str:
    assert stream is not None
    line = await asyncio.wait_for(stream.readline(), timeout)
    assert line, "the process closed its output"
    return line.decode()


async def wait_for_line(
    stream: asyncio.StreamReader | None, needle: str, timeout: float = 20
) -> list[str]:
    """Read lines until one contains ``needle``; return every line read."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen.append(await read_line(stream, max(0.01, deadline - loop.time())))
        if needle in seen[-1]:
            return seen


async def wait_members(url: str, room: str, count: int, timeout: float = 20) -> list[Any]:
    """Poll ``presence`` until ``room`` has ``count`` members; return them."""
    async with Connection(url, timeout=5) as conn:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ack = await conn.call("presence", {"room": room})
            if len(ack["members"]) == count:
                return list(ack["members"])
            if loop.time() > deadline:
                raise AssertionError(f"{room} has {ack['members']}, not {count} members")
            await asyncio.sleep(0.02)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
