#!/usr/bin/env python3
"""relay's own CPU per unicast message, without the kernel: the Python path alone.

Starts relay in this process on a free port, connects two raw websocket clients, then feeds
one client's ``direct`` frames to the server's protocol object (``data_received``, as uvloop
would) with both connections' transports swapped for a sink. What it times is everything relay
does per message between the socket read and the socket write: frame parse and unmask, the
Engine.IO and Socket.IO layers, validation, the envelope, the delivery frame, the ack frame
and the flush. The rest of the issue-3 figure is the kernel's (one read, two writes:
``benchmarks/write_floor.py``) and the event loop's.

    python benchmarks/unicast_path.py                  # 3 x 50,000 messages
    python benchmarks/unicast_path.py --profile        # the same under cProfile, top 25

CPU time on a shared VM varies ±30% from run to run; it also prints the Python bytecodes and
function calls per message, counted with a tracer, which do not vary at all: compare those
when changing the path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import os
import pstats
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's relay
from relay.limits import OFF
from relay.server import RelayServer, uvicorn_config
from relay.settings import Settings


class Sink:
    """Stands in for a connection's transport: takes writes, counts bytes."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.bytes = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def masked(text: bytes) -> bytes:
    """A client's masked text frame (RFC 6455 §5.3)."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(text))
    n = len(text)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + key + body


async def ws_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    await read_frame(reader)  # Engine.IO OPEN
    writer.write(masked(b"40"))
    connected = await read_frame(reader)
    sid = orjson.loads(connected[2:])["sid"]
    return reader, writer, sid


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return await reader.readexactly(n)


async def count_ops(feed: Any, frames: list[bytes], n: int = 200) -> tuple[float, float]:
    """Bytecodes and Python calls per message, over ``n`` messages (and their flushes)."""
    counts = {"opcode": 0, "call": 0}

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            counts["call"] += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            counts["opcode"] += 1
            if BY_FUNCTION is not None:
                code = frame.f_code
                key = f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}"
                BY_FUNCTION[key] = BY_FUNCTION.get(key, 0) + 1
        return tracer

    loop = asyncio.get_running_loop()
    for i in range(n):
        sys.settrace(tracer)
        try:
            feed(frames[i % len(frames)])
        finally:
            sys.settrace(None)
        await asyncio.sleep(0)  # (the flush runs as a loop callback: traced below)
    flusher = _flusher(loop)
    for i in range(n):
        feed(frames[i % len(frames)])
        sys.settrace(tracer)
        try:
            flusher.flush()
        finally:
            sys.settrace(None)
    return counts["opcode"] / n, counts["call"] / n


BY_FUNCTION: dict[str, int] | None = None


def _flusher(loop: asyncio.AbstractEventLoop) -> Any:
    from relay.wire.flusher import flusher_for

    return flusher_for(loop)


async def main(a: argparse.Namespace) -> None:
    # what is timed is the path, not the limits: its one connection publishes 255,000 directs
    # as fast as it can, past any rate a client is held to
    settings = Settings(
        port=0,
        host="127.0.0.1",
        log_level="warning",
        publish_rate=OFF,
        delivery_rate=OFF,
        max_connections_per_ip=0,
    )
    config = uvicorn_config(settings)
    server = RelayServer(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:  # (uvicorn's Server has no event to wait on)
        if task.done() or time.monotonic() > deadline:
            raise SystemExit("relay did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    app = config.loaded_app
    sio = app.app.state.sio if hasattr(app, "app") else app.state.sio
    _, wa, sid_a = await ws_client(port)
    _, wb, sid_b = await ws_client(port)
    socks = sio.eio.sockets
    by_sid = {sio.manager.sid_from_eio_sid(e, "/"): s for e, s in socks.items()}
    proto_a, proto_b = by_sid[sid_a].fast, by_sid[sid_b].fast
    sinks = []
    for proto in (proto_a, proto_b):
        sink = Sink(proto.transport)
        proto.transport = sink
        sinks.append(sink)
    data = {"text": "x" * a.payload}
    frames = [
        masked(b"42%d" % i + orjson.dumps(["direct", {"to": sid_b, "event": "msg", "data": data}]))
        for i in range(1000)
    ]
    gc.collect()
    gc.freeze()

    async def baseline(n: int) -> float:
        t = time.process_time()
        for _ in range(n):
            await asyncio.sleep(0)
        return time.process_time() - t

    async def run(n: int) -> float:
        feed = proto_a.data_received
        t = time.process_time()
        for i in range(n):
            feed(frames[i % 1000])
            await asyncio.sleep(0)  # one loop iteration per message, as at 2,000/s: the flush
        return time.process_time() - t

    await run(5000)
    ops, calls = await count_ops(proto_a.data_received, frames)
    prof = cProfile.Profile() if a.profile else None
    results = []
    for _ in range(a.repeat):
        base = await baseline(a.messages)
        if prof:
            prof.enable()
        spent = await run(a.messages)
        if prof:
            prof.disable()
        results.append((spent - base) / a.messages * 1e6)
    expected = a.messages * a.repeat + 5000
    assert sinks[1].writes >= expected, (sinks[1].writes, expected)  # every delivery written
    assert sinks[0].writes >= expected, (sinks[0].writes, expected)  # every ack written
    median = sorted(results)[len(results) // 2]
    print(f"per message: {ops:.0f} Python bytecodes in {calls:.0f} Python function calls")
    if BY_FUNCTION is not None:
        for key, n in sorted(BY_FUNCTION.items(), key=lambda kv: -kv[1]):
            print(f"  {n / 200:7.1f}  {key}")
    print(
        f"relay's own CPU per unicast message (no kernel): median {median:.1f} µs"
        f" (runs: {' / '.join(f'{r:.1f}' for r in results)}; {a.messages} messages per run,"
        f" {a.payload}-byte payload; an empty loop iteration subtracted)"
    )
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    for proto, sink in zip((proto_a, proto_b), sinks, strict=True):
        proto.transport = sink.real
    wa.close()
    wb.close()
    server.should_exit = True
    await task


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--payload", type=int, default=20)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--by-function", action="store_true", help="bytecodes per message, by function")
    args = p.parse_args()
    if args.by_function:
        BY_FUNCTION = {}
    uvloop.run(main(args))
