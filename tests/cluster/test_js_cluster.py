"""The independent check of issue 13: official JS clients on two relays of one Redis, under faults.

``tests/js/cluster_check.mjs`` runs socket.io-client connections on both nodes, all in two
rooms, each publishing a steady stream of uniquely numbered messages and recording every ack and
every message it receives (its header says how a client follows the rooms' epochs and offsets).
Meanwhile this test SIGKILLs redis-server and restarts it with its data (an append-only file
written before every answer: the epochs go on), kills it again and restarts it from an older
copy of its files (as after a crash with RDB snapshots or AOF ``everysec``: the nodes saw
offsets it no longer has, so the rooms get new epochs), kills it again and restarts it empty
(new epochs again), then SIGKILLs one relay node, whose clients move to the other node and
join again with ``since`` and ``epoch``. Redis stays down each time until the clients had
:data:`REFUSED` publishes answered ``unavailable``. Then the publishers stop, every client
catches up, and the script reports what it saw.

What the contract promises, and so what is checked, per room and epoch:

- every acked publish reaches every client (all are members throughout: live, or replayed by
  the join after a move), once, in offset order, with the offset its ack named; no offset is
  skipped, in the room's first epoch or in the one that began when Redis lost its data;
- a publish answered ``unavailable`` because Redis was known to be down or refused the
  connection was never sent: it reaches nobody;
- a publish *in doubt* reaches every client or none (in order, once, like any other): one whose
  node died before answering, or answered ``unavailable`` because Redis went away (or passed
  the deadline) while the publish was on its way. Redis may have run it and sent it to the
  nodes' subscriptions just before dying with its answer to the publisher's node unsent
  (SIGKILL lands between the writes of one event-loop turn, or between two reads of one
  pipeline); nobody can tell, so neither its publisher nor this check may count on either;
- the restart with data changes no epoch; the one from an older copy and the empty one change
  each room's epoch once each, and every client sees those changes (as offsets that go back,
  confirmed by a join, or in the ack of its join after a move) once each, in order.

The one loss the contract allows: messages of an epoch Redis lost that a client had not
received when Redis went, so long as that client saw the epoch change (nobody holds them any
more), and only the epoch's tail (nothing after them reached that client). Relay sends each
message to the subscribed nodes in the same step that answers its publisher (one Lua script),
so with every node subscribed when Redis dies, a message acked before is on its way to every
node already: only the publishes in flight at that moment can miss a node (SIGKILL between
Redis's writes to two connections). The check bounds them by the number of publishers,
per such fault.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.conftest import Nodes, RedisServer
from tests.conftest import ROOT, RelayProcess

JS_DIR = ROOT / "tests" / "js"
SCRIPT = JS_DIR / "cluster_check.mjs"
CLIENT_PACKAGE = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
ROOMS = ["check-a", "check-b"]
#: clients per node (every fourth on HTTP long-polling), and each one's pause between publishes
PER_NODE = 4
PERIOD_MS = 40
#: acked publishes between one fault and the next (traffic flows again before each)
BETWEEN = 150
#: publishes answered unavailable before a killed Redis is started again: about 1.5 s down, so
#: the nodes' reconnects back off past their first tries, and a heartbeat may get through first
REFUSED = 300
#: what each check in the script's report must count (every check is listed: none is skipped)
EXPECTED_COUNTS = {
    "lost": 0,
    "duplicates": 0,
    "disorder": 0,
    "skipped": 0,
    "shortOfEnd": 0,
    "offsetMismatch": 0,
    "epochMismatch": 0,
    "unavailableArrived": 0,
    "inDoubtPartial": 0,
    "unknown": 0,
    "notRecovered": 0,
}
#: counted, and bounded below: messages in doubt (see the module's docstring) that went out,
#: and messages some clients lack as the tail of the epoch Redis lost
IN_DOUBT, TAIL = "inDoubtArrived", "lostWithEpoch"

pytestmark = pytest.mark.slow


@pytest.fixture
def node_exe() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not on PATH: install Node.js 18+ to run the JS client tests")
    if not CLIENT_PACKAGE.is_file():
        pytest.fail(f"{JS_DIR / 'node_modules'} is missing: run `npm ci` in tests/js")
    return exe


class Check:
    """The running script: commands on its stdin, one JSON line back for each."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr

    async def line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"cluster_check.mjs said nothing for {timeout} s") from None
        if not raw:
            await self.proc.wait()
            raise AssertionError(
                f"cluster_check.mjs exited ({self.proc.returncode}) early:\n"
                + self.stderr.read_text()
            )
        got: dict[str, Any] = json.loads(raw)
        if got["type"] == "fatal":
            raise AssertionError(f"cluster_check.mjs failed: {got['message']}")
        return got

    async def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return await self.line(timeout)


async def health(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            return (await http.get(f"{url}/healthz")).status_code
        except httpx.TransportError:
            return 0


async def all_health(nodes: list[RelayProcess], status: int, what: str) -> None:
    """Poll ``/healthz`` of ``nodes`` until every one answers ``status`` (fail after 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        codes = [await health(n.url) for n in nodes]
        if all(code == status for code in codes):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: /healthz still {codes} after 15 s, not {status}")
        await asyncio.sleep(0.05)


async def redis_outage(
    redis: RedisServer,
    nodes: list[RelayProcess],
    check: Check,
    how: str,
    meanwhile: Callable[..., None] | None = None,
    *args: Any,
) -> None:
    """SIGKILL redis-server under traffic; keep it down until the clients had :data:`REFUSED`
    publishes answered ``unavailable``; ``meanwhile(*args)`` (its files changed); start it
    again, and wait until every node is healthy."""
    redis.stop()
    await all_health(nodes, 503, "Redis killed")
    await check.ask(f"refused {REFUSED}", 30)
    if meanwhile is not None:
        meanwhile(*args)
    redis.start()
    await all_health(nodes, 200, f"Redis back {how}")


def describe(report: dict[str, Any], nodes: list[RelayProcess]) -> str:
    """The checks that failed, with examples, and what the nodes logged above INFO."""
    bad = {k: v for k, v in report["counts"].items() if v != EXPECTED_COUNTS.get(k, v)}
    parts = [f"{name}: {count}, e.g. {report['examples'][name]}" for name, count in bad.items()]
    logged = [line for n in nodes for line in n.lines if '"level":"INFO"' not in line]
    return "; ".join(parts) + "\nthe nodes logged:\n" + "".join(logged[-12:])


async def test_js_clients_on_two_nodes_lose_nothing_through_redis_and_node_faults(
    tmp_path: Path, node_exe: str, durable_nodes: Nodes
) -> None:
    cluster, redis = durable_nodes, durable_nodes.redis
    proc: asyncio.subprocess.Process | None = None
    try:
        # history reaches back over the whole run: a client that moves is always recovered;
        # heartbeats every second (a third of the timeout) reach Redis before a backed-off
        # subscription does; JSON logs carry their time (shown when a check fails)
        env = {"RELAY_HISTORY_SIZE": "100000", "RELAY_NODE_TIMEOUT": "3",
               "RELAY_LOG_FORMAT": "json"}  # fmt: skip
        a, b = cluster.start(**env), cluster.start(**env)
        config = {"urls": [a.url, b.url], "rooms": ROOMS, "perNode": PER_NODE,
                  "periodMs": PERIOD_MS}  # fmt: skip
        stderr = tmp_path / "cluster_check.stderr"
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                node_exe, str(SCRIPT), json.dumps(config), cwd=JS_DIR,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        check = Check(proc, stderr)
        started = time.monotonic()
        await check.line(30)  # running: every client in both rooms, traffic arriving

        # Redis SIGKILLed under traffic, restarted with its data: the same epochs go on
        await redis_outage(redis, [a, b], check, "with its data")
        await check.ask(f"wait {BETWEEN}", 30)
        older = tmp_path / "older"
        redis.copy_data(older)
        # killed again, restored from that older copy (a backup, a snapshot, AOF everysec
        # after a crash): the nodes saw offsets it no longer has, so the rooms get new epochs
        await check.ask(f"wait {BETWEEN}", 30)
        await redis_outage(redis, [a, b], check, "from an older copy", redis.restore_data, older)
        await check.ask(f"wait {BETWEEN}", 30)
        # killed again, restarted empty: every room's offsets start again in a new epoch
        await redis_outage(redis, [a, b], check, "empty", redis.wipe)
        await check.ask(f"wait {BETWEEN}", 30)

        # a node SIGKILLed: its clients move to the other one and join again with since/epoch
        b.stop(signal.SIGKILL)
        await check.ask(f"wait {BETWEEN}", 30)  # (every client is connected and joined again)
        report = await check.ask("stop", 60)
        assert report["type"] == "report"
        assert await proc.wait() == 0, stderr.read_text()
        elapsed = time.monotonic() - started
    finally:
        if proc is not None:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()

    summary = {k: report[k] for k in ("published", "received", "epochs", "counts", "elapsedMs")}
    print(json.dumps(summary))  # (shown with -s, and on failure)
    assert report["settled"], f"clients never caught up: {report['behind']}"
    counts = dict(report["counts"])
    in_doubt, tail = counts.pop(IN_DOUBT), counts.pop(TAIL)
    assert counts == EXPECTED_COUNTS, describe(report, [a, b])
    # each client has one publish in flight at most when Redis or a node dies (four times);
    # only those can be in doubt, and only those can miss some node when Redis loses data
    n = len(report["clients"])
    assert in_doubt <= 4 * n, report["examples"][IN_DOUBT]
    assert tail <= 2 * n, report["examples"][TAIL]
    # the faults hit live traffic: publishes were answered unavailable while Redis was down
    published = report["published"]
    assert published.get("acked", 0) >= 5 * BETWEEN, published
    assert published.get("unavailable", 0) >= 3 * REFUSED, published
    assert set(published) <= {"acked", "unavailable", "no ack"}, published
    # two epoch changes per room (the older copy's, the empty restart's), seen by every client
    # once each, in the same order
    for room in ROOMS:
        assert len(report["epochs"][room]) == 3, report["epochs"]
    for client in report["clients"]:
        changes = client["epochChanges"]
        assert sorted(c["room"] for c in changes) == sorted(ROOMS * 2), (client["label"], changes)
        for room in ROOMS:
            seen = [(c["from"], c["to"]) for c in changes if c["room"] == room]
            epochs = report["epochs"][room]
            assert seen == list(itertools.pairwise(epochs)), (client["label"], changes)
        # the clients of the killed node moved to the living one (once); the others stayed
        moved = [m["to"] for m in client["moves"]]
        if client["home"] == b.url:
            assert moved == [a.url], (client["label"], client["moves"])
            assert client["connects"] == 2, client
        else:
            assert moved == [], (client["label"], client["moves"])
            assert client["connects"] == 1, client
        assert all(client["received"][room] > BETWEEN for room in ROOMS), client
    assert elapsed < 60, f"the check took {elapsed:.1f} s"
