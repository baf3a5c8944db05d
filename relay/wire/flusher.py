"""The loop-wide writer: every dirty connection's queued frames, once per event-loop iteration.

A broadcast queues one shared frame on each recipient (relay.wire.transport) and marks it dirty;
:meth:`Flusher.flush`, scheduled once per iteration, writes each connection's frames in one
``transport.write`` (or, past the connection's room under its send-buffer limit, in bounded
pieces: :meth:`relay.wire.websocket.FastWebSocketProtocol.write_bounded`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.wire.websocket import FastWebSocketProtocol

log = logging.getLogger("relay.wire.flusher")


class Flusher:
    """Writes every dirty connection's queued frames, once per event-loop iteration.

    One per event loop (:func:`flusher_for`): a burst that queues frames for thousands of
    connections costs one ``call_soon``, and each connection one ``transport.write`` however
    many frames it got in that iteration.
    """

    __slots__ = ("dirty", "loop", "scheduled", "slow_dropped")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[FastWebSocketProtocol] = []
        self.scheduled = False
        #: connections (websocket and polling) dropped as slow clients on this loop: one
        #: loop per server, so this is the server's count (relay.metrics reads it)
        self.slow_dropped = 0

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        if not dirty:
            return
        self.dirty = []
        for proto in dirty:
            queued = proto.pending
            if queued is None:  # written already (an ASGI send came first)
                continue
            proto.pending = None
            if proto.close_sent or proto.disconnected:
                continue
            try:  # (free unless it raises; one bad connection must not stall the others)
                # the bound: what fits in ``room`` is written in one piece without looking;
                # more (a broadcast's frames are counted only here) goes in bounded pieces
                if queued.__class__ is bytes:
                    if len(queued) <= proto.room:
                        proto.transport.write(queued)
                    else:
                        proto.write_bounded(queued)
                else:
                    proto.queued = 0
                    if sum(map(len, queued)) <= proto.room:
                        proto.transport.write(b"".join(queued))
                    else:
                        proto.write_bounded(queued)
            except RuntimeError:  # the transport closed under us: connection_lost follows
                pass
            except Exception:
                log.exception("writing to a websocket failed")


_flushers: dict[asyncio.AbstractEventLoop, Flusher] = {}


def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        # one per loop (tests run servers in threads); closed loops are forgotten
        for old in [lp for lp in _flushers if lp.is_closed()]:
            del _flushers[old]
        flusher = _flushers[loop] = Flusher(loop)
    return flusher


__all__ = ["Flusher", "flusher_for"]
