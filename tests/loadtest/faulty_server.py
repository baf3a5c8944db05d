"""A deliberately faulty contract server: it drops, duplicates and reorders deliveries.

It speaks the contract's ``join``, ``publish`` and ``direct`` (python-socketio, in a thread),
and counts exactly what it did to each receiver's stream of deliveries, so a test can compare
the load generator's ``lost``, ``duplicates`` and ``out_of_order`` with the truth:

- every ``drop_every``-th delivery to a receiver is dropped;
- every ``hold_every``-th is held back and sent right after the receiver's next delivery
  (one out-of-order delivery; a message still held at the end is lost);
- every ``dup_every``-th sent one is sent twice (one duplicate).

Reordering is only meaningful within one stream, so tests give each receiver one publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import socketio
import uvicorn


@dataclass
class Faults:
    drop_every: int = 7
    dup_every: int = 5
    hold_every: int = 11
    delivered: dict[str, int] = field(default_factory=dict)
    held: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    publishes: int = 0

    @property
    def lost(self) -> int:
        return self.dropped + len(self.held)


def build(faults: Faults) -> Any:
    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)
    members: dict[str, set[str]] = {}
    # python-socketio runs each event in its own task: one publish at a time, or the server
    # would reorder deliveries by accident as well as on purpose.
    lock = asyncio.Lock()

    async def emit(sid: str, env: Any) -> None:
        await sio.emit("message", env, to=sid)

    async def deliver(sid: str, env: Any) -> None:
        n = faults.delivered[sid] = faults.delivered.get(sid, 0) + 1
        if n % faults.drop_every == 0:
            faults.dropped += 1
            return
        if n % faults.hold_every == 0 and sid not in faults.held:
            faults.held[sid] = env
            return
        dup = n % faults.dup_every == 0
        held = faults.held.pop(sid, None)
        if dup:
            faults.duplicated += 1
        if held is not None:
            faults.reordered += 1
        await emit(sid, env)
        if dup:
            await emit(sid, env)
        if held is not None:
            await emit(sid, held)

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, msg: dict[str, Any]) -> dict[str, Any]:
        members.setdefault(msg["room"], set()).add(sid)
        return {"id": sid}  # no "ok": a tolerant client treats it as success

    @sio.on("publish")  # type: ignore[misc]
    async def publish(sid: str, msg: dict[str, Any]) -> dict[str, Any]:
        async with lock:
            faults.publishes += 1
            env = {"room": msg["room"], "data": msg["data"]}
            for member in sorted(members.get(msg["room"], ())):
                await deliver(member, env)
        return {"ok": True}

    @sio.on("direct")  # type: ignore[misc]
    async def direct(sid: str, msg: dict[str, Any]) -> dict[str, Any]:
        async with lock:
            faults.publishes += 1
            await deliver(msg["to"], {"from": sid, "data": msg["data"]})
        return {"ok": True}

    @sio.on("disconnect")  # type: ignore[misc]
    async def disconnect(sid: str, reason: Any = None) -> None:
        for room in members.values():
            room.discard(sid)

    return socketio.ASGIApp(sio)


@contextlib.contextmanager
def serve_faulty(faults: Faults) -> Iterator[str]:
    """Serve a faulty server on a free port until the block ends; yields its URL."""
    config = uvicorn.Config(
        build(faults), host="127.0.0.1", port=0, log_level="warning", lifespan="off",
        ws_ping_interval=None, ws_ping_timeout=None,
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, name="faulty-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("faulty server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
