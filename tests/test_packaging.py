"""What relay declares it needs, what CI installs, and what ``relay serve`` loads.

pyproject.toml's ranges are promises: its floors are tested by CI's second step (the suite on
requirements/floors.txt), its newest versions by the first (requirements/lock.txt). These tests
keep the three files saying the same thing, so a range can't drift away from what was tested.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import socketio
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import relay
from tests.conftest import ROOT, start_relay_process

TIMEOUT = 10.0

#: relay reaches into these packages' internals (uvicorn's protocol classes, python-engineio's
#: and python-socketio's server and manager state, websockets' C mask, bidict's two dicts), so
#: each is capped below the first minor version nobody has tested
USES_INTERNALS = ("uvicorn", "python-engineio", "python-socketio", "websockets", "bidict")

#: tools whose output (lint findings, type errors) changes from one release to the next
EXACT = ("mypy", "ruff")


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _declared() -> list[Requirement]:
    project = _project()
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["test"]]]


def _pins(name: str) -> dict[str, str]:
    """``{package: version}`` of one lock file in requirements/."""
    text = (ROOT / "requirements" / name).read_text()
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M)
    return {canonicalize_name(pkg): version for pkg, version in found}


def _floor(req: Requirement) -> str:
    floors = [s.version for s in req.specifier if s.operator in (">=", "==")]
    assert len(floors) == 1, f"{req}: give one floor (>=) or one exact version (==)"
    return floors[0]


def test_every_declared_floor_is_what_the_floors_run_installs() -> None:
    pins = _pins("floors.txt")
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements/floors.txt: regenerate it"
        assert Version(pins[name]) == Version(_floor(req)), (
            f"{req} is declared but the floors run tests {req.name}=={pins[name]}: make the "
            "floor the version that is tested, then run requirements/update.sh"
        )


def test_the_lock_is_inside_the_declared_ranges() -> None:
    pins = _pins("lock.txt")
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements/lock.txt: regenerate it"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_packages_whose_internals_relay_uses_are_capped() -> None:
    declared = {canonicalize_name(r.name): r for r in _declared()}
    for name in map(canonicalize_name, USES_INTERNALS):
        assert name in declared, f"relay uses {name} directly: declare it"
        caps = [s for s in declared[name].specifier if s.operator == "<"]
        assert caps, f"{declared[name]} has no upper bound"
    for name in map(canonicalize_name, EXACT):
        assert [s.operator for s in declared[name].specifier] == ["=="], declared[name]


def test_benchmark_only_packages_are_an_extra() -> None:
    project = _project()
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert "picows" not in runtime
    bench = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["bench"]
    }
    assert "picows" in bench


def test_this_environment_is_inside_the_declared_ranges() -> None:
    """The suite's own results speak for the ranges only if it runs inside them."""
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (
            f"{req.name} {installed} is installed, outside {req}: install requirements/lock.txt"
        )


def test_starting_the_cli_imports_no_client_library() -> None:
    """Every ``relay`` command, ``serve`` included, starts by importing relay.cli.main."""
    code = (
        "import sys, relay.cli.main\n"
        "print(sorted(m for m in ('aiohttp', 'relay.cli.client', 'socketio')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def _without_aiohttp(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import aiohttp`` fails, as where it is not installed."""
    shadow = tmp_path / "aiohttp"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise ImportError("aiohttp is not installed here")\n')
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return int(response.status)


async def test_relay_serve_runs_without_aiohttp(tmp_path: Path) -> None:
    """aiohttp is a client library (``relay send``, ``listen``, ``loadtest``): the server must
    neither need it nor fail without it (python-engineio imports it only if it is there)."""
    env = _without_aiohttp(tmp_path)
    probe = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import aiohttp"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "aiohttp is not installed here" in probe.stderr, probe.stderr

    rp = start_relay_process(env)
    sio = socketio.AsyncClient(reconnection=False)
    try:
        health = await asyncio.to_thread(_get, f"{rp.url}/healthz")
        assert health == 200
        got: asyncio.Queue[Any] = asyncio.Queue()
        sio.on("message", got.put_nowait)
        await sio.connect(rp.url, transports=["websocket"], wait_timeout=TIMEOUT)
        joined = await sio.call("join", {"room": "lobby"}, timeout=TIMEOUT)
        assert joined["ok"] is True, joined
        sent = await sio.call("publish", {"room": "lobby", "data": "hi"}, timeout=TIMEOUT)
        assert sent["ok"] is True, sent
        message = await asyncio.wait_for(got.get(), TIMEOUT)
        assert message["data"] == "hi"
    finally:
        if sio.connected:
            await sio.disconnect()
        if sio.eio.http is not None and not sio.eio.http.closed:
            await sio.eio.http.close()
        assert rp.stop() == 0, "".join(rp.lines)
    assert "Traceback" not in "".join(rp.lines)


def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    """``cli`` and ``loadtest`` install as relay.cli and relay.loadtest (a project's own ``cli``
    package used to clash with ours), the console script points there, and the version is the
    one relay/__init__.py defines."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("relay-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"relay", f"relay-{relay.__version__}.dist-info"}
    for module in ("relay/cli/main.py", "relay/loadtest/engine.py", "relay/static/index.html"):
        assert module in names, module
    assert "relay = relay.cli.main:main" in entry_points


@pytest.mark.parametrize("command", [["relay"], [sys.executable, "-m", "relay"]])
def test_version_and_python_m_relay(command: list[str]) -> None:
    if command == ["relay"]:
        exe = shutil.which("relay")
        assert exe is not None, "the relay console script is not on PATH"
        command = [exe]
    done = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"relay {relay.__version__}"
    assert metadata.version("relay") == relay.__version__
