#!/usr/bin/env python3
"""relay's own Python per Socket.IO CONNECT on a websocket, without the kernel.

Starts relay in this process on a free port, opens raw websocket sessions (the Engine.IO
handshake), then feeds each one's ``40`` CONNECT frame to the server's protocol object
(``data_received``, as uvloop would) under a tracer, and then times more of them. Only the
CONNECT is measured: the handshake before it is the same for every setting.

    python benchmarks/connect_path.py              # 3 x 2,000 connects

The bytecodes and calls per CONNECT are exact (compare those); the CPU time varies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's relay

from relay.limits import OFF
from relay.server import RelayServer, uvicorn_config
from relay.settings import Settings


def masked(text: bytes) -> bytes:
    key = os.urandom(4)
    return bytes((0x81, 0x80 | len(text))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(text))


async def session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
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
    head = await reader.readexactly(2)
    await reader.readexactly(head[1] & 0x7F)  # Engine.IO OPEN
    return reader, writer


async def main(a: argparse.Namespace) -> None:
    settings = Settings(
        port=0, host="127.0.0.1", log_level="warning", connect_rate=OFF, max_connections=0,
        max_connections_per_ip=0,
    )  # fmt: skip
    config = uvicorn_config(settings)
    server = RelayServer(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise SystemExit("relay did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    sio = config.loaded_app.app.state.sio
    frame = masked(b"40")
    counts = {"opcode": 0, "call": 0}

    def tracer(f: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            counts["call"] += 1
            f.f_trace_opcodes = True
        elif event == "opcode":
            counts["opcode"] += 1
        return tracer

    async def protos(n: int) -> list[Any]:
        before = set(sio.eio.sockets)
        writers = [await session(port) for _ in range(n)]
        new = [s for e, s in sio.eio.sockets.items() if e not in before]
        assert len(new) == n, (len(new), n)
        held.extend(writers)
        return [s.fast for s in new]

    held: list[Any] = []
    traced = await protos(100)
    for proto in traced:
        sys.settrace(tracer)
        try:
            proto.data_received(frame)
        finally:
            sys.settrace(None)
    ops, calls = counts["opcode"] / 100, counts["call"] / 100
    results = []
    for _ in range(a.repeat):
        batch = await protos(a.connects)
        t = time.process_time()
        for proto in batch:
            proto.data_received(frame)
        results.append((time.process_time() - t) / a.connects * 1e6)
    connected = sum(1 for s in sio.eio.sockets.values() if sio._has_namespace(s.sid))
    assert connected == 100 + a.connects * a.repeat, connected
    for _, w in held:
        w.close()
    print(f"per CONNECT: {ops:.0f} Python bytecodes in {calls:.0f} Python function calls")
    print(
        f"relay's own CPU per websocket CONNECT: median {sorted(results)[len(results) // 2]:.1f} µs"
        f" (runs: {' / '.join(f'{r:.1f}' for r in results)}; {a.connects} connects per run)"
    )
    server.should_exit = True
    await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    import uvloop

    uvloop.run(main(parser.parse_args()))
