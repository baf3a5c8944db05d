"""How the load test writes its numbers, the same everywhere: the live view, the lines for CI,
the final table and the HTML page.

Counts get thousands separators and no decimals; milliseconds and microseconds two decimals;
rates, percentages and seconds one. ``None`` (nothing measured) is ``-``.
"""

from __future__ import annotations


def count(value: int | float | None) -> str:
    """``12,345``"""
    return "-" if value is None else f"{round(value):,}"


def ms(value: float | None) -> str:
    """``3.20`` (milliseconds)"""
    return "-" if value is None else f"{value:,.2f}"


def us(value: float | None) -> str:
    """``1.45`` (microseconds)"""
    return "-" if value is None else f"{value:,.2f}"


def rate(value: float | None) -> str:
    """``4,200.0`` (per second)"""
    return "-" if value is None else f"{value:,.1f}"


def pct(value: float | None) -> str:
    """``35.0`` (percent)"""
    return "-" if value is None else f"{value:,.1f}"


def seconds(value: float | None) -> str:
    """``12.5`` (seconds)"""
    return "-" if value is None else f"{value:,.1f}"


def clock(value: float) -> str:
    """``1:05``, ``1:02:03``: a duration as a clock reads, whole seconds."""
    total = max(0, int(value))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


__all__ = ["clock", "count", "ms", "pct", "rate", "seconds", "us"]
