"""Garbage-collector settings for a long-running server with many long-lived objects.

CPython's cyclic collector runs a young-generation pass every 700 net allocations; under
fan-out that is thousands of passes a second, and the occasional full pass over every
connection's objects lands in the latency tail. relay moves everything alive at startup out of
the collector's sight (``gc.freeze``) and collects far less often. Reference counting still
frees almost everything at once; only cycles wait longer.
"""

from __future__ import annotations

import gc

#: (young, middle, old) thresholds; CPython's defaults are (700, 10, 10). Measured on 2 x 1,500
#: websocket connects at 200/s: defaults paused up to 639 ms (full passes), (50_000, 20, 100)
#: up to 238 ms (a young pass over 50,000 survivors), these up to 75 ms.
THRESHOLDS = (2_000, 10, 1_000)


def tune(thresholds: tuple[int, int, int] | None = None) -> None:
    """Collect once, freeze the survivors, then apply ``thresholds``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*(thresholds or THRESHOLDS))


__all__ = ["THRESHOLDS", "tune"]
