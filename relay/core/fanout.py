"""How long publishes take to fan out: a histogram kept per publish, never per recipient.

:meth:`FanoutTimer.observe` is called once per publish with the ``time.perf_counter()`` read
as the publish entered the core and the deliveries it made: it adds the time since to one
bucket of a small list (found by ``bisect``, in C) and the deliveries to a counter. What is
timed is the core's whole publish, the room's frames included: encoding, history, and every
local recipient's frame queued (relay.wire.websocket writes them all at the end of the event-loop
iteration, so the kernel's write is not in it). /metrics reads the buckets at scrape time
(relay.metrics) as the Prometheus histogram ``relay_fanout_seconds``.
"""

from __future__ import annotations

import bisect
import time

#: the buckets' upper bounds, in seconds (10 µs to 0.25 s; past the last: +Inf)
BOUNDS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip


class FanoutTimer:
    """Publish fan-out times, bucketed, and the deliveries publishes made (see the module)."""

    __slots__ = ("counts", "deliveries", "total")

    def __init__(self) -> None:
        #: publishes per bucket (not cumulative; the last is over the last bound)
        self.counts = [0] * (len(BOUNDS) + 1)
        #: seconds of every publish observed, together
        self.total = 0.0
        #: copies of room messages put on connections (the rest of Relay.stats' are direct)
        self.deliveries = 0

    def observe(self, started: float, sent: int, _now: object = time.perf_counter) -> None:
        elapsed = _now() - started  # type: ignore[operator]
        self.counts[bisect.bisect_left(BOUNDS, elapsed)] += 1
        self.total += elapsed
        self.deliveries += sent

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, as Prometheus histograms have them."""
        out = []
        running = 0
        for bound, count in zip((*map(str, BOUNDS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


__all__ = ["BOUNDS", "FanoutTimer"]
