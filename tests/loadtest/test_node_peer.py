"""`relay loadtest` against a server that is not relay: Node's socket.io 4.8 speaking the
contract's join / publish / direct (tests/js/contract_server.mjs, like the peer kit's
server_node.js). Every delivery is counted, over both transports."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.loadtest.report import build
from relay.loadtest.scenario import Scenario
from relay.loadtest.workers import Orchestrator

JS_DIR = Path(__file__).resolve().parent.parent / "js"
SERVER = JS_DIR / "contract_server.mjs"


@pytest.fixture(scope="module")
def node_peer() -> Iterator[str]:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not on PATH: install Node.js 18+ (tests/run.sh expects it)")
    if not (JS_DIR / "node_modules" / "socket.io").is_dir():
        pytest.fail(f"{JS_DIR / 'node_modules'} has no socket.io: run `npm ci` in tests/js")
    proc = subprocess.Popen(
        [exe, str(SERVER)], cwd=JS_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"listening on (\d+)", line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(30) and found, "the Node contract server did not start"
        yield f"http://127.0.0.1:{found[0]}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        proc.stdout.close()


@pytest.mark.parametrize(
    ("mode", "transport", "clients"),
    [("broadcast", "websocket", 60), ("mixed", "polling", 24), ("unicast", "polling", 16)],
)
def test_counts_every_delivery_from_node_socketio(
    node_peer: str, mode: str, transport: str, clients: int
) -> None:
    scn = Scenario(
        url=node_peer, mode=mode, transport=transport, clients=clients, workers=1, rooms=4,
        rate=40, duration=1.0, drain=5.0, max_time=60,
    ).validate()  # fmt: skip
    r: dict[str, Any] = build(scn, Orchestrator(scn).execute())
    assert (r["connected"], r["connect_errors"]) == (clients, 0), r["connect_error_samples"]
    assert (r["published"], r["acked"]) == (40, 40), (r["ack_errors"], r["stop_reason"])
    assert r["expected"] > 0
    assert r["received"] == r["expected"]
    assert (r["lost"], r["duplicates"], r["out_of_order"], r["late"]) == (0, 0, 0, 0)
