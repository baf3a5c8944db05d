"""A deliberately faulty contract server: it drops, duplicates and reorders deliveries.

It speaks the contract's ``join``, ``publish`` and ``direct`` (python-socketio, in a thread),
and counts exactly what it did to each receiver's stream of deliveries, so a test can compare
the load generator's ``lost``, ``duplicates`` and ``out_of_order`` with the truth:

- every ``drop_every``-th delivery to a receiver is dropped;
- every ``hold_every``-th is held back and sent right after the receiver's next delivery
  (one out-of-order delivery; a message still held at the end is lost);
- every ``swap_every``-th delivery of the whole server, likewise (so a receiver's few
  deliveries are swapped too: with one message per publisher, only the room's offsets show it);
- every ``dup_every``-th sent one is sent twice (one duplicate);
- after ``restart_after`` publishes into a room, its offsets start again from 1 under a new
  epoch (a server that lost its rooms' state), once per room.

A fault set to 0 never happens. Room envelopes carry the room's ``offset``; the join ack
carries ``offset`` and ``epoch`` only with ``ack_offsets`` (a server of before offsets has
neither, and a tolerant client copes).
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
    swap_every: int = 0
    restart_after: int = 0
    ack_offsets: bool = False
    delivered: dict[str, int] = field(default_factory=dict)
    held: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    publishes: int = 0
    deliveries: int = 0
    #: per room: [latest offset, epoch, publishes]
    rooms: dict[str, list[Any]] = field(default_factory=dict)
    restarts: int = 0
    #: receivers that got a restarted room's new offset 1
    saw_restart: int = 0

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

    def every(n: int, k: int) -> bool:
        return k > 0 and n % k == 0

    async def deliver(sid: str, env: Any) -> None:
        n = faults.delivered[sid] = faults.delivered.get(sid, 0) + 1
        faults.deliveries += 1
        if every(n, faults.drop_every):
            faults.dropped += 1
            return
        if (
            every(n, faults.hold_every) or every(faults.deliveries, faults.swap_every)
        ) and sid not in faults.held:
            faults.held[sid] = env
            return
        if env.get("offset") == 1 and faults.rooms[env["room"]][1] != "e0":
            faults.saw_restart += 1
        dup = every(n, faults.dup_every)
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

    def room(name: str) -> list[Any]:
        return faults.rooms.setdefault(name, [0, "e0", 0])

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, msg: dict[str, Any]) -> dict[str, Any]:
        members.setdefault(msg["room"], set()).add(sid)
        state = room(msg["room"])
        if faults.ack_offsets:
            return {"ok": True, "room": msg["room"], "offset": state[0], "epoch": state[1]}
        return {"id": sid}  # no "ok": a tolerant client treats it as success

    @sio.on("publish")  # type: ignore[misc]
    async def publish(sid: str, msg: dict[str, Any]) -> dict[str, Any]:
        async with lock:
            faults.publishes += 1
            state = room(msg["room"])
            if state[2] == faults.restart_after and state[2] > 0:
                state[0], state[1] = 0, f"e{faults.restarts + 1}"
                faults.restarts += 1
            state[0] += 1
            state[2] += 1
            env = {"room": msg["room"], "event": "message", "data": msg["data"],
                   "offset": state[0]}  # fmt: skip
            for member in sorted(members.get(msg["room"], ())):
                await deliver(member, env)
        return {"ok": True}

    @sio.on("direct")  # type: ignore[misc]
    async def direct(sid: str, msg: dict[str, Any]) -> dict[str, Any]:
        async with lock:
            faults.publishes += 1
            await deliver(msg["to"], {"from": sid, "data": msg["data"], "offset": None})
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
