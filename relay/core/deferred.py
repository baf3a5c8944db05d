"""Answers that come later: the seam between the synchronous core and a backend that is not.

The in-memory core answers every event before it returns. A backend that must ask a server
first (cluster mode: an offset comes from Redis) cannot; its operation starts the work as a task
and raises :class:`Deferred` carrying it, instead of returning. Whoever asked (the Socket.IO
dispatcher, the HTTP API) answers when the task is done: its result is the event's ack, or it
raises the :class:`relay.errors.RelayError` to answer with.

Why an exception and not a returned awaitable: the handlers turn the core's return values into
acks (``relay.publish(...)`` -> ``{"ok", "id", "offset"}``), and a check of that value's type
would be paid on every message of the memory backend too. A ``try`` costs nothing until
something is raised (CPython 3.11's zero-cost exceptions), so the memory path is unchanged,
byte for byte, and no handler branches on the backend.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Deferred(Exception):  # (not an error: control flow between the core and its caller)
    """The answer is ``task``'s result (an ack dict; for the HTTP API's history, a page), or
    the RelayError it raises."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        super().__init__("answered later")
        self.task = task


__all__ = ["Deferred"]
