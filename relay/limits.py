"""Rate limits and per-client counts: pure bookkeeping, no I/O.

A :class:`Rate` is a token bucket's shape: ``per_s`` tokens a second, up to ``burst`` saved up.
A :class:`Bucket` is one client's bucket of that shape (a connection's publishes, an API key's
requests); :class:`Buckets` keeps one per key (an IP address, an API key) and forgets the full
ones, so an attacker cycling through keys cannot grow it past ``max_keys``.
:class:`PerKeyCount` counts what each key holds open (connections per IP), with a cap.

Limits refuse, they never disconnect: the caller answers ``rate_limited`` and the client may
try again once :meth:`Bucket.retry_after` has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_s`` a second, with bursts of up to ``burst``; ``per_s == 0`` means no limit."""

    per_s: float
    burst: float

    @property
    def enabled(self) -> bool:
        return self.per_s > 0

    def __str__(self) -> str:
        if not self.enabled:
            return "off"
        return f"{self.per_s:g}/s,{self.burst:g}"


OFF = Rate(0.0, 0.0)


def parse_rate(key: str, raw: str, amount: Callable[[str], float] = float) -> Rate:
    """``"100"``, ``"100/s"``, ``"100/s,200"`` (rate, then burst), ``"6000/m"``, ``"0"``/``"off"``.

    Without a burst, the burst is twice the per-second rate (at least 1). ``amount`` parses
    the numbers (sizes for a byte rate: ``"8MiB/s,32MiB"``).
    """
    text = raw.strip().lower().replace(" ", "")
    if text in ("0", "off", "none", "unlimited"):
        return OFF
    rate_text, _, burst_text = text.partition(",")
    number, _, unit = rate_text.partition("/")
    scale = {"": 1.0, "s": 1.0, "m": 1 / 60, "h": 1 / 3600}.get(unit)
    try:
        per_s = amount(number) * scale if scale is not None else -1.0
        burst = amount(burst_text) if burst_text else max(1.0, 2 * per_s)
    except (ValueError, ConfigError):
        per_s = burst = -1.0
    if per_s == 0:
        return OFF
    if not per_s > 0 or not burst >= 1 or per_s != per_s or burst == float("inf"):
        example = "8MiB/s, 8MiB/s,32MiB" if amount is not float else "100/s, 100/s,200"
        raise ConfigError(
            f"{key}={raw!r} is not a rate (try {example} for a burst, or 0 for no limit)"
        )
    return Rate(per_s, burst)


class Bucket:
    """One token bucket; :meth:`take` spends one token if there is one."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.tokens = rate.burst
        self.stamp = now

    def take(self, rate: Rate, now: float, cost: float = 1.0) -> bool:
        if cost > rate.burst:
            cost = rate.burst  # (more than a burst can ever hold: a whole full bucket)
        tokens = self.tokens + (now - self.stamp) * rate.per_s
        if tokens > rate.burst:
            tokens = rate.burst
        self.stamp = now
        if tokens < cost:
            self.tokens = tokens
            return False
        self.tokens = tokens - cost
        return True

    def spend(self, rate: Rate, now: float, cost: float) -> float:
        """Spend ``cost`` whether or not it is there (what was received is received): 0.0, or
        the seconds the bucket needs to be out of debt (its owner stops reading that long)."""
        tokens = self.tokens + (now - self.stamp) * rate.per_s
        if tokens > rate.burst:
            tokens = rate.burst
        self.stamp = now
        tokens -= cost
        self.tokens = tokens
        return 0.0 if tokens >= 0 else -tokens / rate.per_s

    def retry_after(self, rate: Rate, cost: float = 1.0) -> float:
        """Seconds until :meth:`take` of ``cost`` can succeed (as of the last call)."""
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / rate.per_s

    def full(self, rate: Rate, now: float) -> bool:
        return self.tokens + (now - self.stamp) * rate.per_s >= rate.burst


class Buckets:
    """A bucket per key (IP address, API key), for at most ``max_keys`` keys at once."""

    def __init__(
        self,
        rate: Rate,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, cost: float = 1.0) -> float:
        """0.0 when ``key`` may go ahead (``cost`` tokens spent), else seconds to wait."""
        rate = self.rate
        if not rate.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
                if len(self._buckets) >= self.max_keys:
                    # every tracked key is busy: a new one waits like one with an empty bucket
                    return 1.0 / rate.per_s
            bucket = self._buckets[key] = Bucket(rate, now)
        if bucket.take(rate, now, cost):
            return 0.0
        return max(bucket.retry_after(rate, min(cost, rate.burst)), 0.001)

    def bucket(self, key: str) -> Bucket:
        """``key``'s bucket itself (made full if new), for a caller that spends from it
        directly (:meth:`Bucket.spend`). Keys whose buckets refilled are forgotten when there
        are too many, as in :meth:`take`."""
        bucket = self._buckets.get(key)
        if bucket is None:
            now = self._clock()
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = Bucket(self.rate, now)
        return bucket

    def _forget_full(self, now: float) -> None:
        rate = self.rate
        for key in [k for k, b in self._buckets.items() if b.full(rate, now)]:
            del self._buckets[key]

    def sweep(self) -> None:
        """Forget the keys whose buckets refilled (they behave as new ones would)."""
        self._forget_full(self._clock())


class PerKeyCount:
    """How many of something each key holds open (connections per IP), capped at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no cap (still counted, for /healthz)
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def acquire(self, key: str) -> bool:
        count = self._counts.get(key, 0)
        if self.limit and count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def get(self, key: str) -> int:
        return self._counts.get(key, 0)

    def busiest(self) -> int:
        return max(self._counts.values(), default=0)


__all__ = ["OFF", "Bucket", "Buckets", "PerKeyCount", "Rate", "parse_rate"]
