"""Exact delivery accounting and latency histograms. Pure logic: no I/O, no clock.

Theory of operation. Every publish carries ``(publisher, kind, seq)``; a *stream* is what one
receiver gets from one publisher of one kind (its room's broadcasts, or the publisher's direct
messages to it), numbered 0, 1, 2, ... by the publisher. Per (receiver, stream) we keep a
*watermark* (every seq below it has arrived), the highest seq seen, and, only while there is a
gap, the set of seqs that arrived above the watermark. Then, for each delivery:

- seq below the watermark or already in the set: a **duplicate**;
- otherwise, seq below the highest seen: **out of order** (something later overtook it);
- the fast path (seq == watermark, no gap) is one dict lookup and two list stores.

``unique = received - duplicates``; a publisher's counts say how many each receiver should get,
so ``lost = expected - unique`` per receiver, summed.

Streams cannot see two publishers' messages swapped in one room (each stream is in order), so
room deliveries are also checked by the envelope's ``offset`` (strictly increasing per room):
see :class:`RoomOffsets`. Latencies are kept in microseconds,
quantized to 11 significant bits, which is exactly the resolution of an HDR histogram with 3
significant digits, so folding the counts into :class:`HdrHistogram` later loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

HIGHEST_US = 3_600_000_000  # one hour: anything slower is a hang, not a latency
SIGNIFICANT = 3
#: HDR's resolution at 3 significant digits: values keep their top 11 bits
SIG_BITS = 11
EXACT_BELOW = 1 << SIG_BITS


def new_histogram() -> HdrHistogram:
    """An empty histogram of microseconds, 1 µs .. 1 h, 3 significant digits."""
    return HdrHistogram(1, HIGHEST_US, SIGNIFICANT)


def quantize(value: int) -> int:
    """``value`` rounded down to 11 significant bits (HDR's resolution at 3 digits)."""
    if value < EXACT_BELOW:
        return value if value > 0 else 0
    shift = value.bit_length() - SIG_BITS
    return (value >> shift) << shift


class Counts:
    """Values counted in a dict of quantized buckets: ~0.1 µs a record, folded into HDR later."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}

    def record(self, value: int) -> None:
        value = quantize(value)
        b = self.buckets
        b[value] = b.get(value, 0) + 1

    def take(self) -> list[tuple[int, int]]:
        """The counted ``(value, count)`` pairs, and start over: a few hundred pairs pickle far
        cheaper than an encoded HDR histogram (the worker's per-second cost)."""
        pairs = list(self.buckets.items())
        self.buckets.clear()
        return pairs

    def add_pairs(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Add what another :class:`Counts` :meth:`take`-s (exact: same quantization)."""
        b = self.buckets
        for value, count in pairs:
            b[value] = b.get(value, 0) + count

    def summary_ms(self, percentiles: dict[str, float]) -> dict[str, float | None]:
        """:func:`summary_ms` of these counts as an HDR histogram, without building one (the
        parent's once-a-second live figures: a sort of a few hundred values)."""
        total = sum(self.buckets.values())
        if total == 0:
            return {**{name: None for name in percentiles}, "max": None}
        items = sorted(self.buckets.items())
        top = _template()
        out: dict[str, float | None] = {}
        for name, p in percentiles.items():
            target = max(int(min(p, 100.0) * total / 100 + 0.5), 1)
            seen = 0
            hit = items[-1][0]
            for value, count in items:
                seen += count
                if seen >= target:
                    hit = value
                    break
            out[name] = round(top.get_highest_equivalent_value(min(hit, HIGHEST_US)) / 1000, 3)
        biggest = min(items[-1][0], HIGHEST_US)
        out["max"] = round(top.get_highest_equivalent_value(biggest) / 1000, 3) if biggest else 0.0
        return out

    def drain_into(self, hist: HdrHistogram) -> None:
        """Add every counted value to ``hist`` and start over (same dict: callers may hold it)."""
        top = HIGHEST_US
        for value, count in self.buckets.items():
            hist.record_value(min(value, top), count)
        self.buckets.clear()


_TEMPLATE: list[HdrHistogram] = []


def _template() -> HdrHistogram:
    """One empty histogram, for its value arithmetic only."""
    if not _TEMPLATE:
        _TEMPLATE.append(new_histogram())
    return _TEMPLATE[0]


def histogram_of(pairs: Iterable[tuple[int, int]]) -> HdrHistogram:
    """An HDR histogram of ``(value, count)`` pairs from :meth:`Counts.take` (exact: the values
    are already quantized to the histogram's resolution)."""
    hist = new_histogram()
    top = HIGHEST_US
    for value, count in pairs:
        hist.record_value(min(value, top), count)
    return hist


def encode(hist: HdrHistogram) -> str:
    """A histogram as text that survives a pipe (HDR's own compressed encoding)."""
    raw = hist.encode()
    return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


def merge(encoded: Iterable[str], into: HdrHistogram | None = None) -> HdrHistogram:
    """Sum encoded histograms exactly (counts added bucket by bucket, never percentiles)."""
    total = into if into is not None else new_histogram()
    for text in encoded:
        if text:
            total.add(decode(text))
    return total


def summary_ms(hist: HdrHistogram, percentiles: dict[str, float]) -> dict[str, float | None]:
    """``{name: value in ms}`` for each percentile, plus ``max``; None when empty."""
    if hist.get_total_count() == 0:
        return {**{name: None for name in percentiles}, "max": None}
    out: dict[str, float | None] = {
        name: round(hist.get_value_at_percentile(p) / 1000, 3) for name, p in percentiles.items()
    }
    out["max"] = round(hist.get_max_value() / 1000, 3)
    return out


LATENCY_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
CONNECT_PERCENTILES = {"p50": 50.0, "p99": 99.0}


#: what :meth:`Accounting.place` found a delivery to be
IN_ORDER, OUT_OF_ORDER, DUPLICATE = 0, 1, 2


class Accounting:
    """Per-(receiver, stream) watermarks: exact duplicates and out-of-order deliveries."""

    __slots__ = ("duplicates", "out_of_order", "received", "streams")

    def __init__(self) -> None:
        # key -> [watermark, highest seq seen, set of seqs above the watermark or None]
        self.streams: dict[int, list[Any]] = {}
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0

    @property
    def unique(self) -> int:
        return self.received - self.duplicates

    def record(self, key: int, seq: int) -> int:
        """Count one delivery of ``seq`` on stream ``key``: :data:`IN_ORDER`,
        :data:`OUT_OF_ORDER` or :data:`DUPLICATE`."""
        self.received += 1
        st = self.streams.get(key)
        if st is not None and seq == st[0] and st[2] is None:
            st[0] = seq + 1
            st[1] = seq
            return IN_ORDER
        return self.place(key, seq)

    def place(self, key: int, seq: int) -> int:
        """The general case of :meth:`record`, minus the ``received`` count (the swarm inlines
        the fast path and calls this for the rest)."""
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = [0, -1, None]
        if seq == st[0] and st[2] is None:
            st[0] = seq + 1
            st[1] = seq
            return IN_ORDER
        wm, highest, ahead = st
        if seq < wm or (ahead is not None and seq in ahead):
            self.duplicates += 1
            return DUPLICATE
        status = IN_ORDER
        if seq < highest:
            self.out_of_order += 1
            status = OUT_OF_ORDER
        else:
            st[1] = seq
        if seq == wm:
            wm += 1
            if ahead:
                while wm in ahead:
                    ahead.discard(wm)
                    wm += 1
                if not ahead:
                    st[2] = None
            st[0] = wm
        else:
            if ahead is None:
                st[2] = ahead = set()
            ahead.add(seq)
        return status

    def unique_in(self, key: int) -> int:
        """Distinct seqs seen on stream ``key``."""
        st = self.streams.get(key)
        if st is None:
            return 0
        return int(st[0]) + (len(st[2]) if st[2] else 0)


class RoomOffsets:
    """Per receiver, the offsets of its room's messages: order across publishers, gaps, epochs.

    A swarm client is in one room, so the state is a list indexed by receiver: ``last[r]``, the
    highest offset ``r`` got in the room's current epoch (at first the join ack's ``offset``;
    -1 before the ack). The fast path — the next offset, ``last + 1`` — is one compare and one
    store (in C where built); everything else takes :meth:`check`, which the caller runs only
    for a delivery the exact stream accounting found new (a duplicate is already counted
    there, and says nothing about the room's order). Then a delivery:

    - above ``last + 1`` skipped offsets: a **gap**, not disorder (the receiver joined after
      them, or they were lost, or published by someone else; loss of this run's messages is
      counted exactly per stream). ``gaps`` is how many skipped offsets are still missing: a
      late one fills one back;
    - at or below ``last``: **out of order** (a later message of the room overtook it), counted
      in ``out_of_order`` only when the stream check did not already count it, so the two
      checks together count each such delivery once;
    - ``1`` when offset 1 of this epoch is already behind the receiver (it got it, or it
      joined after it): the room's offsets **started again** — an epoch change (a restarted
      server or backend), not disorder; ``last`` starts over.

    A join ack without ``offset`` counts as offset 0: the swarm's rooms are new (named after
    the run) and joined before anyone publishes. A delivery before any join ack sets the
    baseline itself. A join ack's ``epoch`` (:meth:`joined`) names the epoch; an ack whose
    epoch differs from the receiver's previous one for the room (a rejoin) is an epoch change
    too, and its ``offset`` the new baseline. An ack without ``epoch`` (an older server)
    tracks none. (A swarm client joins once and never reconnects, so in a run an epoch change
    shows as offsets dropping to 1; :meth:`joined` is ready for a rejoin.)
    """

    __slots__ = ("epoch", "epoch_changes", "gaps", "hole1", "last", "out_of_order")

    def __init__(self, receivers: int) -> None:
        self.last: list[int] = [-1] * receivers
        #: offset 1 of this epoch is still missing (the receiver joined before it, got later)
        self.hole1 = [False] * receivers
        self.epoch: list[str | None] = [None] * receivers
        self.out_of_order = 0
        self.gaps = 0
        self.epoch_changes = 0

    def reset_counts(self) -> None:
        """Start counting a new phase; the offsets seen so far still hold."""
        self.out_of_order = self.gaps = self.epoch_changes = 0

    def joined(self, r: int, offset: Any, epoch: Any) -> None:
        """A join ack for receiver ``r``: the room's latest offset and its epoch (either may be
        missing or malformed: then it is not used)."""
        if isinstance(epoch, str) and epoch:
            if self.epoch[r] is not None and epoch != self.epoch[r]:
                self.epoch_changes += 1
                self.last[r] = -1
                self.hole1[r] = False
            self.epoch[r] = epoch
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            offset = 0  # not said: the room was new (see the class's doc)
        if offset > self.last[r]:
            self.last[r] = offset
            self.hole1[r] = False

    def check(self, r: int, offset: int, stream_out_of_order: bool) -> None:
        """One new (not duplicate) delivery of ``offset`` to receiver ``r``."""
        last = self.last[r]
        if offset == last + 1 or last < 0:  # (< 0: before any join ack, the first is the base)
            self.last[r] = offset
        elif offset > last:
            self.gaps += offset - last - 1
            if last == 0:
                self.hole1[r] = True
            self.last[r] = offset
        elif offset == 1 and not self.hole1[r]:
            self.epoch_changes += 1
            self.last[r] = 1
        else:
            if offset < last:
                self.gaps -= 1
                if offset == 1:
                    self.hole1[r] = False
            if not stream_out_of_order:
                self.out_of_order += 1


def stream_id(publisher: int, unicast: bool) -> int:
    """What a publish carries to name its stream: publisher and kind in one int."""
    return (publisher << 1) | int(unicast)


def stream_key(receiver: int, stream: int) -> int:
    """One int per (receiver, stream): cheap to hash, no tuple per delivery."""
    return (receiver << 32) | stream


def expected_deliveries(
    broadcast_by_room: dict[int, int], room_sizes: dict[int, int], unicast: int
) -> int:
    """What the receivers should get: each broadcast once per room member, each direct once."""
    return sum(n * room_sizes.get(room, 0) for room, n in broadcast_by_room.items()) + unicast
