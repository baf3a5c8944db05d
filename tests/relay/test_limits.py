"""relay.limits: token buckets and per-key counts, with an injected clock."""

from __future__ import annotations

import pytest

from relay.errors import ConfigError
from relay.limits import OFF, Bucket, Buckets, PerKeyCount, Rate, parse_rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_parse_rate_forms() -> None:
    assert parse_rate("K", "10") == Rate(10, 20)
    assert parse_rate("K", " 10 / s , 15 ") == Rate(10, 15)
    assert parse_rate("K", "60/m") == Rate(1, 2)
    assert parse_rate("K", "0.5/s") == Rate(0.5, 1)
    assert parse_rate("K", "off") == OFF and not OFF.enabled
    assert str(Rate(10, 15)) == "10/s,15" and str(OFF) == "off"
    for bad in ("", "x", "10/d", "10/s,0.5", "-1", "inf", "10,inf"):
        with pytest.raises(ConfigError, match="K="):
            parse_rate("K", bad)


def test_a_bucket_allows_a_burst_then_the_rate() -> None:
    rate = Rate(10, 5)
    bucket = Bucket(rate, 0.0)
    assert [bucket.take(rate, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.retry_after(rate) == pytest.approx(0.1)
    assert not bucket.take(rate, 0.05)
    assert bucket.take(rate, 0.1)
    # refilling stops at the burst
    assert bucket.full(rate, 100.0)
    assert [bucket.take(rate, 100.0) for _ in range(6)] == [True] * 5 + [False]


def test_buckets_per_key_and_their_bound() -> None:
    clock = Clock()
    buckets = Buckets(Rate(1, 2), max_keys=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert buckets.take("b") == 0.0 and buckets.take("c") == 0.0
    # a fourth key while three are tracked and none is full: refused, nothing grows
    assert buckets.take("d") > 0 and len(buckets) == 3
    clock.now += 10  # every bucket refilled: the full ones are forgotten to make room
    assert buckets.take("d") == 0.0 and len(buckets) <= 3
    buckets.sweep()
    assert len(buckets) == 1  # only d, which spent a token, is still remembered
    assert Buckets(OFF).take("x") == 0.0


def test_per_key_counts() -> None:
    count = PerKeyCount(2)
    assert count.acquire("ip") and count.acquire("ip") and not count.acquire("ip")
    assert count.acquire("other") and count.busiest() == 2 and len(count) == 2
    count.release("ip")
    count.release("ip")
    count.release("ip")  # (one too many: never negative)
    assert count.get("ip") == 0 and len(count) == 1
    assert PerKeyCount(0).acquire("x")  # 0: no cap
