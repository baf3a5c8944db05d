"""The Procfile's ``web:`` line, run as a platform would: ``bash -c`` with PORT set."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import socketio

from relay.settings import ENV_KEYS, Settings
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
        assert isinstance(join.pop("epoch"), str)
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


# -- a Heroku-style deploy: what the Python buildpack does with a fresh clone --------------


def buildpack_manifest() -> Path:
    """The file Heroku's Python buildpack installs from; its detection, in its order."""
    for name in ("requirements.txt", "uv.lock", "poetry.lock", "Pipfile.lock", "Pipfile"):
        if (ROOT / name).is_file():
            return ROOT / name
    raise AssertionError("no requirements.txt, uv.lock, poetry.lock or Pipfile: nothing to build")


def _wait_healthy(url: str, proc: subprocess.Popen[str], output: list[str]) -> httpx.Response:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url, timeout=5) as http:
        while True:
            try:
                return http.get("/healthz")
            except httpx.TransportError:
                assert proc.poll() is None, "".join(output)
                assert time.monotonic() < deadline, "".join(output)
                time.sleep(0.1)  # (polling a process that is starting, within a deadline)


@pytest.mark.slow
def test_a_buildpack_install_runs_the_procfile(tmp_path: Path) -> None:
    """Detect the manifest, install it into a fresh virtualenv (as the buildpack does, from the
    registry), then run the Procfile's web line with PORT set and that venv first on PATH."""
    manifest = buildpack_manifest()
    assert manifest.name == "requirements.txt"
    assert (ROOT / ".python-version").read_text().strip().startswith("3.11")
    app = tmp_path / "app"  # (the slug: the repository's files, without its git history)
    shutil.copytree(
        ROOT, app, symlinks=True, ignore=shutil.ignore_patterns(".git", "node_modules", "*.so")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", manifest.name],
        cwd=app, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PORT": str(port), "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        ["bash", "-c", web_command()], cwd=app, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        r = _wait_healthy(f"http://127.0.0.1:{port}", proc, output)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        # the relay that runs is the one installed from the slug, not this checkout's
        where = subprocess.run(
            [python, "-c", "import relay.cli; print(relay.cli.__file__)"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert str(venv) in where.stdout, where.stdout + where.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        status = proc.wait(timeout=30)
        reader.join(timeout=30)  # the pipe is at EOF once the process is gone
        assert proc.stdout is not None
        proc.stdout.close()
        assert status == 0, "".join(output)


def test_app_json_describes_a_secure_deploy() -> None:
    """The Heroku button's app.json: the Python buildpack, every variable one relay reads and
    described, the secret and the API key generated (relay refuses a secret without a key),
    and the proxy trusted (behind Heroku's router every connection is the router's)."""
    app = json.loads((ROOT / "app.json").read_text())
    assert app["buildpacks"] == [{"url": "heroku/python"}]
    known = {key for key, _ in ENV_KEYS.values()}
    for name, spec in app["env"].items():
        assert name in known, f"app.json sets {name}, which relay does not read"
        assert spec["description"].strip(), name
        if "value" in spec:  # a default relay must accept
            Settings.from_env({name: spec["value"], "RELAY_SECRET": "s", "RELAY_API_KEY": "k"})
    for name in ("RELAY_SECRET", "RELAY_API_KEY"):
        assert app["env"][name]["generator"] == "secret", name
    assert app["env"]["RELAY_TRUST_PROXY"]["value"] == "true"
    assert app["formation"]["web"]["quantity"] == 1


def test_the_dockerfile_runs_the_same_command_as_a_non_root_user() -> None:
    # (no Docker engine runs here to build it: this checks what can be checked without one)
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in text
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert "relay serve --host 0.0.0.0" in text and "$PORT" in text
    for folder in ("relay", "cli", "loadtest"):
        assert f"COPY {folder} {folder}" in text
