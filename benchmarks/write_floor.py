#!/usr/bin/env python3
"""The kernel's floor under a fan-out: CPU per ``transport.write`` of one small frame.

A bare uvloop server writes one 212-byte WebSocket-sized frame to each of N loopback
connections per round, ``--rate`` rounds a second (0: as fast as it can); the connections'
reader is another process that discards what it reads. It prints the server's CPU (user +
system) per write. No relay code runs: this is what any Python (or Node) server pays per
delivery before doing anything of its own, and a relay broadcast delivery costs one such write.

    python benchmarks/write_floor.py                       # the broadcast scenario's shape
    python benchmarks/write_floor.py --clients 100 --rate 0   # a saturated receiver

Paced writes cost more than saturated ones: each lands on a reader asleep in ``epoll_wait``,
and the write's own softirq pays for waking it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
from typing import Any

FRAME = b"\x81\x7e\x00\xd0" + b"x" * 208


def _reader(port: int, clients: int) -> None:
    import uvloop

    class Discard(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(clients):
            await loop.create_connection(Discard, "127.0.0.1", port)
        await asyncio.sleep(3600)

    uvloop.run(main())


async def _measure(clients: int, rate: float, rounds: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    transports: list[Any] = []
    ready = asyncio.Event()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transports.append(transport)
            if len(transports) == clients:
                ready.set()

    server = await loop.create_server(Accept, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(
        target=_reader, args=(port, clients), daemon=True
    )
    proc.start()
    try:
        await asyncio.wait_for(ready.wait(), 60)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = loop.time()
        for i in range(rounds):
            for t in transports:
                t.write(FRAME)
            await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - loop.time()) if rate else 0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        proc.kill()
        server.close()
    n = clients * rounds
    return 1e6 * (r1.ru_utime - r0.ru_utime) / n, 1e6 * (r1.ru_stime - r0.ru_stime) / n


def main() -> None:
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=100, help="connections (100)")
    ap.add_argument("--rate", type=float, default=100, help="rounds/s, 0: as fast as it can (100)")
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.repeat):
        user, system = uvloop.run(_measure(args.clients, args.rate, args.rounds))
        print(
            f"{args.clients} connections, {args.rate:g} rounds/s: {user + system:.2f} µs CPU "
            f"per write (user {user:.2f}, system {system:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
