#!/usr/bin/env python3
"""Issue 13's cluster figures, measured in one sitting on this machine, and printed.

1. **CPU per delivery**: one load (``relay loadtest``: 1,000 websocket clients in rooms of 100,
   broadcast) against one in-memory relay, against one relay on Redis (every client on it: the
   Redis path's own cost), then against two relays joined by one Redis (the clients and
   publishers spread over both). The cluster's CPU is both relays' plus Redis's
   (``/proc/<pid>/stat``, over the whole loadtest: its 1,000 connects and joins too, which a
   15 s load at 200 publishes/s, 300,000 deliveries, amortises). Goal: at most 1.2x one
   relay's.
2. **Workers**: the highest broadcast rate a ramp sustains (p99 <= 250 ms, nothing lost)
   against ``relay serve --workers 2`` and ``--workers 1`` (both in cluster mode on Redis).
3. **Recovery**: seconds from Redis accepting connections again (restarted empty) to a message
   published on one node reaching a member on the other.

    python benchmarks/cluster.py                       # all three (about 3-5 minutes)
    python benchmarks/cluster.py --only cpu --repeat 3
    python benchmarks/cluster.py --only cpu --rooms 2 --rate 40   # rooms of 500, same deliveries
    python benchmarks/cluster.py --only recovery --json cluster.json

Everything runs on 127.0.0.1 with free ports, starts its own ``redis-server`` (Debian's
package), stops every process it started, and is bounded in time. The per-IP edge limits and
per-connection rates are off in the relays under test (all clients come from one IP; the
benchmark measures the relay, not its limits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NO_LIMITS = {
    "RELAY_MAX_CONNECTIONS_PER_IP": "0",
    "RELAY_CONNECT_RATE": "0",
    "RELAY_PUBLISH_RATE": "0",
    "RELAY_JOIN_RATE": "0",
    "RELAY_DELIVERY_RATE": "0",
    "RELAY_INBOUND_RATE": "0",
    "RELAY_LOG_LEVEL": "warning",
}
RUNNING = re.compile(r"running on https?://[^:]+:(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU of ``pid`` and its children (a ``--workers`` supervisor and its workers)."""
    total = cpu_s(pid)
    with contextlib.suppress(FileNotFoundError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += tree_cpu_s(int(child))
    return total


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="relay-bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.01)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Relay:
    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        full = {**os.environ, **NO_LIMITS, "RELAY_HOST": "127.0.0.1", "PORT": "0", **env}
        full["RELAY_LOG_LEVEL"] = "info"  # (its "running on" line says the port)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", *args], cwd=ROOT, env=full,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = RUNNING.search(line)
            if m:
                self.port = int(m.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                # drain the rest so the child never blocks on a full pipe
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise RuntimeError("relay serve did not start")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def cpu(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def relays(*envs: dict[str, str], args: tuple[str, ...] = ()) -> Iterator[list[Relay]]:
    started: list[Relay] = []
    try:
        for env in envs:
            started.append(Relay(env, args))
        yield started
    finally:
        for relay in started:
            relay.stop()


def loadtest(urls: list[str], *extra: str, timeout: float = 600) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "relay", "loadtest", "--json"]
    for url in urls:
        cmd += ["--url", url]
    done = subprocess.run(
        [*cmd, *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "RELAY_URL"},
    )  # fmt: skip
    if not done.stdout.strip():
        raise RuntimeError("relay loadtest printed no report:\n" + done.stderr[-2000:])
    return dict(json.loads(done.stdout))


CLIENTS = 1000
LOAD = ["--clients", str(CLIENTS), "--rooms", "10", "--publishers", "20"]


def cpu_per_delivery(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    load = [*LOAD[:3], str(args.rooms), *LOAD[4:], "--rate", str(args.rate)]
    load += ["--duration", str(args.duration)]
    for run in range(args.repeat):
        with relays({}) as (one,):
            before = one.cpu()
            report = loadtest([one.url], *load)
            used = one.cpu() - before
        rows.append(_cpu_row("one relay", run, report, used))
        redis = Redis()
        try:
            redis.start()
            assert redis.proc is not None
            env = {"REDIS_URL": redis.url}
            # one node with every client: what the Redis path costs, without splitting the
            # deliveries over two processes
            with relays(env) as (alone,):
                before_r = cpu_s(redis.proc.pid)
                before = alone.cpu()
                report = loadtest([alone.url], *load)
                used = alone.cpu() - before
                used_r = cpu_s(redis.proc.pid) - before_r
            row = _cpu_row("one relay on Redis", run, report, used + used_r)
            row["redis_cpu_s"] = round(used_r, 2)
            rows.append(row)
            with relays(env, env) as nodes:
                before_r = cpu_s(redis.proc.pid)
                before_n = [n.cpu() for n in nodes]
                report = loadtest([n.url for n in nodes], *load)
                used_n = [n.cpu() - b for n, b in zip(nodes, before_n, strict=True)]
                used_r = cpu_s(redis.proc.pid) - before_r
            row = _cpu_row("two relays + Redis", run, report, sum(used_n) + used_r)
            row["redis_cpu_s"] = round(used_r, 2)
            row["relays_cpu_s"] = [round(x, 2) for x in used_n]
            rows.append(row)
        finally:
            redis.close()
    return rows


def _cpu_row(name: str, run: int, report: dict[str, Any], used: float) -> dict[str, Any]:
    received = int(report["received"])
    return {
        "setup": name,
        "run": run + 1,
        "deliveries": received,
        "lost": report["lost"],
        "out_of_order": report["out_of_order"],
        "p99_ms": report["latency_ms"].get("p99"),
        "cpu_s": round(used, 2),
        "cpu_us_per_delivery": round(used / received * 1e6, 2) if received else None,
    }


def workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    ramp = [*LOAD, "--rate", "200", "--ramp", "--ramp-factor", "1.3",
            "--ramp-steps", str(args.ramp_steps), "--duration", "5",
            "--max-p99-ms", "250"]  # fmt: skip
    redis = Redis()
    try:
        redis.start()
        for count in (1, 2):
            with relays({"REDIS_URL": redis.url}, args=("--workers", str(count))) as (node,):
                report = loadtest([node.url], *ramp)
            ramp_report = report.get("ramp") or {}
            rows.append(
                {
                    "setup": f"--workers {count} (Redis)",
                    "highest_sustained_deliveries_per_s": ramp_report.get(
                        "max_sustained_deliveries_per_s"
                    ),
                    "stop_reason": ramp_report.get("stop_reason"),
                }
            )
    finally:
        redis.close()
    return rows


async def _recovery_once(redis: Redis, nodes: list[Relay]) -> float:
    import socketio

    a, b = socketio.AsyncClient(), socketio.AsyncClient()
    got = asyncio.Event()
    a.on("message", lambda env: got.set())
    try:
        await a.connect(nodes[0].url, transports=["websocket"])
        await b.connect(nodes[1].url, transports=["websocket"])
        assert (await a.call("join", {"room": "recovery"}, timeout=10))["ok"]
        redis.stop()
        await asyncio.sleep(1.0)  # (the nodes notice; the benchmark measures the way back)
        redis.start()
        back = time.monotonic()
        deadline = back + 60
        while not got.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("no cross-node delivery within 60 s of Redis coming back")
            with contextlib.suppress(Exception):
                # (join again on a: its node may have lost the room's state with Redis's data)
                await a.call("join", {"room": "recovery"}, timeout=1)
                await b.call("publish", {"room": "recovery", "data": 1}, timeout=1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got.wait(), 0.05)
        return time.monotonic() - back
    finally:
        await a.disconnect()
        await b.disconnect()


def recovery(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for run in range(args.repeat):
        redis = Redis()
        try:
            redis.start()
            env = {"REDIS_URL": redis.url}
            with relays(env, env) as nodes:
                seconds = asyncio.run(_recovery_once(redis, nodes))
            rows.append({"run": run + 1, "seconds_to_cross_node_delivery": round(seconds, 2)})
        finally:
            redis.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="cpu,workers,recovery")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--rate", type=float, default=200.0, help="publishes/s (x room size deliveries)"
    )
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument(
        "--rooms",
        type=int,
        default=10,
        help="rooms the 1,000 clients share (cpu): 10 = rooms of 100",
    )
    parser.add_argument(
        "--ramp-steps",
        type=int,
        default=16,
        help="workers: steps of the ramp from 200 publishes/s, x1.3 each (16: to about 10,000/s)",
    )
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    only = set(args.only.split(","))
    out: dict[str, Any] = {}
    if "cpu" in only:
        out["cpu"] = cpu_per_delivery(args)
        size = CLIENTS // args.rooms
        print(f"CPU per delivery (1,000 clients, rooms of {size}, broadcast):")
        for row in out["cpu"]:
            print(
                f"  {row['setup']:<20} run {row['run']}: {row['cpu_us_per_delivery']} us/delivery"
                f" ({row['cpu_s']} s for {row['deliveries']:,}; lost {row['lost']},"
                f" out of order {row['out_of_order']}, p99 {row['p99_ms']} ms)"
                + (f"; Redis {row['redis_cpu_s']} s" if "redis_cpu_s" in row else "")
            )
        one = [r["cpu_us_per_delivery"] for r in out["cpu"] if r["setup"] == "one relay"]
        two = [r["cpu_us_per_delivery"] for r in out["cpu"] if r["setup"].startswith("two")]
        if one and two and all(one) and all(two):
            print(f"  cluster / one relay: {min(two) / min(one):.2f}x (best runs)")
    if "workers" in only:
        out["workers"] = workers(args)
        print("Highest sustained broadcast rate (ramp, p99 <= 250 ms, nothing lost):")
        for row in out["workers"]:
            print(
                f"  {row['setup']}: {row['highest_sustained_deliveries_per_s']} deliveries/s"
                f" ({row['stop_reason']})"
            )
    if "recovery" in only:
        out["recovery"] = recovery(args)
        print("Redis restarted empty -> first cross-node delivery:")
        for row in out["recovery"]:
            print(f"  run {row['run']}: {row['seconds_to_cross_node_delivery']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
