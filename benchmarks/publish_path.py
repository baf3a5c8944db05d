#!/usr/bin/env python3
"""relay's core alone per publish: ``Relay.publish`` to a one-member room on a null transport.

    PYTHONPATH=. python benchmarks/publish_path.py

Prints the Python bytecodes per publish (exact, counted with a tracer: compare those) and the
CPU time (varies). What a publish costs per recipient is the transport's, not measured here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's relay

from relay.core.service import Relay, Sender
from relay.limits import OFF
from relay.settings import Settings


class Null:
    """A transport that delivers to nobody, instantly."""

    def attach(self, sid: str, eio_sid: str) -> None:
        pass

    def detach(self, sid: str) -> None:
        pass

    def send(self, sid: str, packet: str) -> bool:
        return True

    def send_many(self, sids: Any, packet: str, skip: str | None = None) -> int:
        return len(sids)

    def send_room(self, room: str, version: Any, sids: Any, packet: str, skip: Any = None) -> int:
        return len(sids)

    def hold_off(self, sid: str, seconds: float) -> None:
        pass

    def kind(self, sid: str) -> str | None:
        return "websocket"


def main() -> None:
    settings = Settings(publish_rate=OFF, delivery_rate=OFF, history_size=10)
    relay = Relay(settings, Null())  # type: ignore[arg-type]
    relay.connect("s1", "e1", "u")
    relay.join("s1", "room", None)
    sender = Sender("s1", "u")
    for _ in range(1000):
        relay.publish(sender, "room", "message", {"x": 1})
    ops = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal ops
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            ops += 1
        return tracer

    sys.settrace(tracer)
    for _ in range(100):
        relay.publish(sender, "room", "message", {"x": 1})
    sys.settrace(None)
    runs = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(100_000):
            relay.publish(sender, "room", "message", {"x": 1})
        runs.append((time.process_time() - t) / 100_000 * 1e6)
    print(
        f"per publish: {ops / 100:.0f} Python bytecodes; CPU median {sorted(runs)[2]:.2f} µs"
        f" (runs: {' / '.join(f'{r:.2f}' for r in runs)}; 100,000 publishes per run)"
    )


if __name__ == "__main__":
    main()
