"""``relay serve --workers 2``: two processes on one port, joined by Redis, act as one relay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx

from tests.cluster.conftest import RedisServer
from tests.conftest import start_relay_process
from tests.relay.conftest import Peers, unique


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def test_two_workers_share_one_port_and_act_as_one_relay(
    redis_server: RedisServer, clients: Peers
) -> None:
    env = {
        "REDIS_URL": redis_server.url,
        "RELAY_WORKERS": "2",
        "RELAY_PUBLISH_RATE": "0",
        "RELAY_JOIN_RATE": "0",
        "RELAY_DELIVERY_RATE": "0",
        "RELAY_LOG_LEVEL": "info",
    }
    server = start_relay_process(env)
    workers = children(server.proc.pid)
    try:
        assert len(workers) == 2, workers
        room = unique()
        peers = [await clients(url=server.url) for _ in range(20)]
        for peer in peers:
            await peer.ok("join", {"room": room})
        # each worker is a node of its own; ask /healthz over fresh connections until both
        # have answered (the kernel spreads connections by a hash of their addresses)
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while len(seen) < 2:
            assert time.monotonic() < deadline, f"only saw {seen}"
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                body = (await http.get("/healthz")).json()
            seen[body["cluster"]["node"]] = body["connections"]
        assert sorted(seen.values())[0] > 0 and sum(seen.values()) == 20, seen
        ack = await peers[0].ok("publish", {"room": room, "data": "to all"})
        for peer in peers:
            _, env_ = (await peer.until(lambda e, a: e == "message"))[-1]
            assert env_["offset"] == ack["offset"] and env_["data"] == "to all"
        # long-polling cannot be routed to the worker holding its session: refused, clearly
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            r = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        assert r.status_code == 400 and "long-polling is off" in r.json()["error"]["message"]
        await clients.close()
        clients.peers.clear()
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
        assert [pid for pid in workers if not _gone(pid)] == [], "workers outlived the supervisor"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _gone(pid: int) -> bool:
    """``pid`` has exited (no process, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
