#!/usr/bin/env python3
"""What one cluster publish costs a node in CPU: the Redis round trip and the pub/sub read.

Starts its own ``redis-server`` (Debian's package) on a free port, then, in this process,
publishes ``--count`` messages one at a time, each awaited (as a client's publish is), with
the node's publish script, while the same process is subscribed to the room's channel and
counts them arriving:

- ``bus``: through relay's :class:`relay.backends.redis.Bus` (its queue, deadline, pipeline
  and listener), as a cluster node does;
- ``redis-py``: the same script by ``EVALSHA`` on a plain redis-py client, and the same
  subscription read by ``get_message`` in a loop: the client library's own share.

It prints the process's CPU (user + system, kernel included) per publish for each, alternating
``--repeat`` times: absolute figures drift on a shared machine, compare within one run.

    python benchmarks/redis_bus.py
    python benchmarks/redis_bus.py --count 5000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.backends import scripts  # noqa: E402
from relay.backends.cluster import HISTORY_BYTES, HISTORY_TOTAL, KEPT  # noqa: E402
from relay.backends.redis import Bus, connect  # noqa: E402
from relay.settings import Settings  # noqa: E402

try:  # relay serve runs on uvloop where it is installed: measure on the same loop
    from uvloop import run
except ImportError:  # pragma: no cover
    from asyncio import run

ROOM = "bench"
#: what ClusterRelay._publish passes the script, with the default settings
KEYS = [f"relay:{{{ROOM}}}:{what}" for what in ("seq", "log", "epoch")]
KEYS += [KEPT, HISTORY_BYTES, HISTORY_TOTAL]
DEFAULTS = Settings()
CHANNEL = f"relay:{{{ROOM}}}:ch"
HEAD, TAIL = '2["message",{"room":"bench","offset":', ',"data":"' + "x" * 200 + '"}]'
#: between two publishes: a publish every half millisecond, each its own round trip
GAP_S = 0.0005


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def args_for(i: int) -> list[object]:
    return [
        HEAD,
        TAIL,
        "epoch",
        DEFAULTS.history_size,
        int(DEFAULTS.history_ttl * 1000),
        86_400_000,
        CHANNEL,
        i,
        "bench-node",
        "-",
        ROOM,
        DEFAULTS.max_rooms,
        DEFAULTS.history_max_bytes,
    ]


async def through_bus(url: str, count: int) -> float:
    arrived = asyncio.Event()
    seen = 0

    def on_message(channel: str, data: str) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            arrived.set()

    async def on_connect() -> None:
        return None

    bus = Bus(connect(url, True), url, on_message, on_connect)
    script = bus.script(scripts.PUBLISH)
    bus.listen_to(CHANNEL)
    bus.start()
    try:
        await bus.ready.wait()
        await bus.call(script.run(KEYS, args_for(0)))  # (loads the script; not counted)
        seen = 0
        start = cpu_s()
        for i in range(count):
            await bus.call(script.run(KEYS, args_for(i)))
            await asyncio.sleep(GAP_S)
        await asyncio.wait_for(arrived.wait(), 30)
        return (cpu_s() - start) / count
    finally:
        await bus.stop()


async def through_redis_py(url: str, count: int) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    sha = await client.script_load(scripts.PUBLISH)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    seen = 0

    async def listen() -> None:
        nonlocal seen
        while seen < count:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                seen += 1

    reader = asyncio.create_task(listen())
    start = cpu_s()
    for i in range(count):
        await client.evalsha(sha, len(KEYS), *KEYS, *args_for(i))  # type: ignore[misc]
        await asyncio.sleep(GAP_S)
    await asyncio.wait_for(reader, 30)
    used = (cpu_s() - start) / count
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await client.aclose()
    return used


def sleep_loop(count: int) -> float:
    async def loop_body() -> float:
        start = cpu_s()
        for _ in range(count):
            await asyncio.sleep(GAP_S)
        return (cpu_s() - start) / count

    return run(loop_body())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=2)
    a = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="relay-bench-bus-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.01)
        url = f"redis://127.0.0.1:{port}/0"
        idle = sleep_loop(a.count)
        print(f"the pacing loop alone: {idle * 1e6:.0f} us per iteration (included below)")
        for attempt in range(1, a.repeat + 1):
            bus = run(through_bus(url, a.count))
            plain = run(through_redis_py(url, a.count))
            print(
                f"run {attempt}: bus {bus * 1e6:.0f} us, redis-py {plain * 1e6:.0f} us"
                " CPU per publish"
                f" (round trip + pub/sub read; {a.count:,} publishes)"
            )
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
