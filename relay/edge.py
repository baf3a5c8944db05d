"""The transport edge's limits: connections in total and per client IP, new connections per IP
per second, and how long a client may take to send its request headers.

(Stub: filled in by the transport-edge work.)
"""

from __future__ import annotations

from typing import Any

from relay.settings import Settings


class EdgeGuard:
    """Counts and caps for every TCP connection the server accepts (HTTP and websocket)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> dict[str, Any]:
        """What ``/healthz`` shows of the edge: connections open, per IP, refused."""
        return {}


__all__ = ["EdgeGuard"]
