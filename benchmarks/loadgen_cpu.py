"""Measure the load generator's own cost.

1. ``transport``: CPU (user + system) per received delivery of the receive path alone: the
   swarm's own websocket protocol (``lean``) versus picows and ``websockets``, all feeding the
   same Swarm.on_delivery, fed by a local blaster that pushes ``42["message",{envelope}]``
   frames, one per client per round, ``--rate`` rounds/s (0: as fast as it can). The blaster
   runs in another process, so only the client side is timed; variants run interleaved.
2. ``run``: a real ``relay loadtest`` against URL; prints the report's generator CPU per delivery.
3. ``clients``: connect N clients to URL at a low publish rate; prints how many connected.
4. ``fanout``: like ``run``, against a built-in minimal picows contract server fast enough to
   saturate the generator (so the CPU per delivery is measured at full load).
5. ``sink``: Swarm.on_delivery alone, no sockets: CPU ns per call on relay-shaped frames
   (stream, latency and room offset accounting; C where built), the best of ``--repeat``.

    python benchmarks/loadgen_cpu.py transport --clients 500 --frames 400 --rate 40 --repeat 3
    python benchmarks/loadgen_cpu.py run --url http://127.0.0.1:3000 --clients 1000 --rooms 1 \\
        --publishers 10 --rate 40 --duration 10
    python benchmarks/loadgen_cpu.py clients --url http://127.0.0.1:3000 --clients 10000
    python benchmarks/loadgen_cpu.py fanout --clients 1000 --rooms 1 --publishers 10 --rate 100
    python benchmarks/loadgen_cpu.py sink --clients 200 --frames 1000 --repeat 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUN = "bench001"


def _frame(i: int, stream: int) -> bytes:
    import orjson

    env = {
        "id": f"m{i}", "room": "lt-bench", "event": "message",
        "from": {"sid": "87AkWpvuHBR45Dq-ABfD", "user": None},
        "data": {"lt": f"{RUN}:0:{stream}:{i}:{time.time_ns()}", "x": "x" * 64},
        "offset": i + 1, "ts": 1,
    }  # fmt: skip
    return b'42["message",' + orjson.dumps(env) + b"]"


def _blaster(port_q: Any, frames: int, clients: int, rate: float) -> None:
    """A picows server: once ``clients`` are connected, send each of them ``frames`` deliveries,
    round-robin one frame per client per round (as a broadcast does), ``rate`` rounds a second
    (0: as fast as it can, yielding to its event loop after every round), then ``END``; and
    again for the next batch of ``clients`` connections."""
    import uvloop
    from picows import WSListener, WSMsgType, ws_create_server

    payloads = [_frame(i, 0) for i in range(frames)]
    conns: list[Any] = []

    async def push(batch: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, p in enumerate(payloads):
            for t in batch:
                t.send(WSMsgType.TEXT, p)
            await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - loop.time()) if rate else 0)
        for t in batch:
            t.send(WSMsgType.TEXT, b"END")

    class Push(WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            conns.append(transport)
            if len(conns) == clients:
                batch = conns[:]
                conns.clear()
                asyncio.get_running_loop().create_task(push(batch))

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            pass

    async def main() -> None:
        server = await ws_create_server(lambda _r: Push(), "127.0.0.1", 0, backlog=4096)
        port_q.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    uvloop.run(main())


def _fanout_server(port_q: Any) -> None:
    """A minimal, fast contract server on picows (join / publish / direct, acks), so the
    generator can be driven to saturation: it writes each delivery to each member socket,
    as a real server does. Not a relay; a yardstick for the generator only."""
    import orjson
    import uvloop
    from picows import WSListener, WSMsgType, ws_create_server

    text = WSMsgType.TEXT
    rooms: dict[str, list[Any]] = {}
    sids: dict[str, Any] = {}
    count = [0]

    class Conn(WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            self.t = transport
            transport.send(text, b'0{"sid":"x","upgrades":[],"pingInterval":25000,'
                                 b'"pingTimeout":60000,"maxPayload":1000000}')  # fmt: skip

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            data = frame.get_payload_as_bytes()
            if data.startswith(b"42"):
                i = 2
                while data[i] in b"0123456789":
                    i += 1
                event, p = orjson.loads(data[i:])
                if event == "publish":
                    out = b'42["message",' + orjson.dumps({"room": p["room"], "data": p["data"]})
                    out += b"]"
                    for member in rooms.get(p["room"], ()):
                        member.t.send(text, out)
                elif event == "direct":
                    target = sids.get(p["to"])
                    if target is not None:
                        target.t.send(
                            text, b'42["message",' + orjson.dumps({"data": p["data"]}) + b"]"
                        )
                elif event == "join":
                    rooms.setdefault(p["room"], []).append(self)
                transport.send(text, b"43" + data[2:i] + b'[{"ok":true}]')
            elif data.startswith(b"40"):
                count[0] += 1
                self.sid = f"s{count[0]}"
                sids[self.sid] = self
                transport.send(text, b'40{"sid":"' + self.sid.encode() + b'"}')

        def on_ws_disconnected(self, transport: Any) -> None:
            sid = getattr(self, "sid", None)
            if sid is not None:
                sids.pop(sid, None)
            for members in rooms.values():
                if self in members:
                    members.remove(self)

    async def main() -> None:
        server = await ws_create_server(lambda _r: Conn(), "127.0.0.1", 0, backlog=4096)
        port_q.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    uvloop.run(main())


def fanout(args: argparse.Namespace) -> None:
    """Start the fan-out yardstick and run the real generator against it."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_fanout_server, args=(q,), daemon=True)
    proc.start()
    try:
        args.url = f"http://127.0.0.1:{q.get(timeout=30)}"
        print(f"fan-out server at {args.url}", flush=True)
        run(args)
    finally:
        proc.kill()


def _swarm(clients: int) -> Any:
    from relay.loadtest.engine import Swarm, WorkerConfig

    cfg = WorkerConfig(
        url="", transport="websocket", run_id=RUN, mode="broadcast", rooms=1, publishers=0,
        payload=0, indices=tuple(range(clients)), connect_rate=None, connect_timeout=10,
        concurrency=1,
    )  # fmt: skip
    swarm = Swarm(cfg, None)  # type: ignore[arg-type]
    swarm.set_phase(0)
    return swarm


async def _recv_lean(url: str, clients: int) -> Any:
    """The swarm's own receive path: loadtest.clients' websocket protocol into Swarm."""
    from urllib.parse import urlsplit

    from relay.loadtest import clients as lc

    swarm = _swarm(clients)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [clients]

    class Probe(lc.WSClient):
        def on_packet(self, text: str) -> None:
            if text == "END":
                left[0] -= 1
                if not left[0]:
                    done.set_result(None)

    parts = urlsplit(url)

    async def one(local: int) -> None:
        proto = lc._WSProtocol(Probe(local, local, 0, swarm), parts.netloc, "/")
        await loop.create_connection(lambda: proto, parts.hostname, parts.port)
        await proto.opened

    await asyncio.gather(*(one(i) for i in range(clients)))
    await done
    return swarm


async def _recv_picows(url: str, clients: int) -> Any:
    from picows import WSListener, WSMsgType, ws_connect

    swarm = _swarm(clients)
    done = asyncio.get_running_loop().create_future()
    left = [clients]
    prefix = b'42["message",'

    class L(WSListener):
        def __init__(self, local: int) -> None:
            super().__init__()
            self.local = local
            self.deliver = swarm.on_delivery

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                data = frame.get_payload_as_bytes()
                if data.startswith(prefix):
                    self.deliver(self.local, data)
                elif data == b"END":
                    left[0] -= 1
                    if not left[0]:
                        done.set_result(None)

    await asyncio.gather(*(ws_connect(lambda i=i: L(i), url) for i in range(clients)))
    await done
    return swarm


async def _recv_websockets(url: str, clients: int) -> Any:
    import websockets

    swarm = _swarm(clients)
    prefix = b'42["message",'

    async def one(local: int) -> None:
        async with websockets.connect(url, compression=None, max_size=2**21) as ws:
            deliver = swarm.on_delivery
            async for msg in ws:
                data = msg if isinstance(msg, bytes) else msg.encode()
                if data == b"END":
                    return
                if data.startswith(prefix):
                    deliver(local, data)

    await asyncio.gather(*(one(i) for i in range(clients)))
    return swarm


def sink(args: argparse.Namespace) -> None:
    """CPU per Swarm.on_delivery call, receive path without sockets: ``--frames`` deliveries
    to each of ``--clients`` receivers, round-robin (as a broadcast), in offset order."""
    frames = [_frame(i, 0) for i in range(args.frames)]
    results: list[float] = []
    for _ in range(args.repeat):
        swarm = _swarm(args.clients)
        deliver = swarm.on_delivery_py if args.python else swarm.on_delivery
        receivers = range(args.clients)
        t0 = time.process_time_ns()
        for f in frames:
            for local in receivers:
                deliver(local, f)
        spent = time.process_time_ns() - t0
        assert swarm.acc.received == args.clients * args.frames
        results.append(spent / swarm.acc.received)
    print(
        f"{'Python' if deliver.__name__.endswith('_py') else 'C'} on_delivery: "
        f"best {min(results):.0f} ns, median {sorted(results)[len(results) // 2]:.0f} ns CPU a "
        f"delivery ({', '.join(f'{r:.0f}' for r in results)})"
    )


RECEIVERS = {"lean": _recv_lean, "picows": _recv_picows, "websockets": _recv_websockets}


def transport(args: argparse.Namespace) -> None:
    """CPU (user + system, this process only) per received delivery, receive path only; the
    variants run interleaved, ``--repeat`` times each, against one blaster process."""
    import resource

    import uvloop

    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_blaster, args=(q, args.frames, args.clients, args.rate), daemon=True)
    proc.start()
    try:
        url = f"ws://127.0.0.1:{q.get(timeout=30)}/"
        results: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for name in args.variants.split(","):
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                swarm = uvloop.run(RECEIVERS[name](url, args.clients))
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                n = swarm.acc.received
                user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
                us = 1e6 * (user + system) / n
                results.setdefault(name, []).append(round(us, 2))
                print(
                    f"{name:10s} {n:,} deliveries  {us:.2f} µs CPU each "
                    f"(user {1e6 * user / n:.2f}, system {1e6 * system / n:.2f})",
                    flush=True,
                )
        print(json.dumps({"us_per_delivery": results}))
    finally:
        proc.kill()


def run(args: argparse.Namespace) -> None:
    from relay.loadtest.report import build
    from relay.loadtest.scenario import Scenario
    from relay.loadtest.workers import Orchestrator

    scn = Scenario(
        url=args.url, clients=args.clients, rooms=args.rooms, mode=args.mode, rate=args.rate,
        duration=args.duration, publishers=args.publishers, workers=args.workers,
        connect_rate=args.connect_rate, drain=10, max_time=600,
    ).validate()  # fmt: skip
    raw = Orchestrator(scn).execute()
    print("worker CPU (process, user, system seconds):", raw["worker_cpu"])
    report = build(scn, raw)
    keys = ("clients", "connected", "connect_errors", "published", "expected", "received",
            "lost", "duplicates", "out_of_order", "deliveries_per_s", "latency_ms",
            "connect_ms", "loadgen_cpu_percent", "loadgen_cpu_us_per_delivery",
            "generator_bound")  # fmt: skip
    print(json.dumps({k: report[k] for k in keys}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("transport")
    t.add_argument("--clients", type=int, default=200)
    t.add_argument("--frames", type=int, default=2000)
    t.add_argument("--repeat", type=int, default=2)
    t.add_argument("--rate", type=float, default=0, help="rounds/s (0: as fast as possible)")
    t.add_argument("--variants", default="lean,picows,websockets")
    k = sub.add_parser("sink")
    k.add_argument("--clients", type=int, default=200)
    k.add_argument("--frames", type=int, default=1000)
    k.add_argument("--repeat", type=int, default=7)
    k.add_argument("--python", action="store_true", help="the Python path, not the C one")
    for name in ("run", "clients", "fanout"):
        r = sub.add_parser(name)
        r.add_argument("--url", required=name != "fanout")
        r.add_argument("--clients", type=int, default=1000 if name == "run" else 10000)
        r.add_argument("--rooms", type=int, default=1 if name == "run" else 100)
        r.add_argument("--mode", default="broadcast")
        r.add_argument("--rate", type=float, default=40 if name == "run" else 2)
        r.add_argument("--duration", type=float, default=10 if name == "run" else 5)
        r.add_argument("--publishers", type=int, default=10)
        r.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        r.add_argument("--connect-rate", type=float, default=None)
    args = ap.parse_args()
    commands = {"transport": transport, "run": run, "clients": run, "fanout": fanout, "sink": sink}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
