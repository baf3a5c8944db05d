"""Pure accounting and histogram tests: no sockets."""

from __future__ import annotations

import random

import pytest

from relay.loadtest import stats
from relay.loadtest.workers import PhaseResult


def feed(seqs: list[int], key: int = 1) -> stats.Accounting:
    acc = stats.Accounting()
    for s in seqs:
        acc.record(key, s)
    return acc


@pytest.mark.parametrize(
    ("seqs", "unique", "dups", "ooo"),
    [
        ([0, 1, 2, 3], 4, 0, 0),
        ([0, 1, 1, 2], 3, 1, 0),
        ([0, 2, 1, 3], 4, 0, 1),  # 1 arrives after 2
        ([0, 2, 3], 3, 0, 0),  # 1 lost: not out of order, just missing
        ([1, 0], 2, 0, 1),
        ([0, 3, 3, 1, 2, 2, 1], 4, 3, 2),
        ([5, 5, 4, 0], 3, 1, 2),
    ],
)
def test_accounting_counts_exactly(seqs: list[int], unique: int, dups: int, ooo: int) -> None:
    acc = feed(seqs)
    assert (acc.unique, acc.duplicates, acc.out_of_order) == (unique, dups, ooo)
    assert acc.received == len(seqs)
    assert acc.unique_in(1) == unique


def test_streams_are_independent_and_gaps_close() -> None:
    acc = stats.Accounting()
    for s in [0, 2, 1]:
        acc.record(stats.stream_key(0, stats.stream_id(3, False)), s)
    for s in [0, 1]:
        acc.record(stats.stream_key(1, stats.stream_id(3, False)), s)
    acc.record(stats.stream_key(0, stats.stream_id(3, True)), 0)
    assert (acc.unique, acc.out_of_order, acc.duplicates) == (6, 1, 0)
    # once the gap closes the stream is back on the fast path (no set kept)
    assert all(st[2] is None for st in acc.streams.values())


def test_random_faults_match_a_brute_force_model() -> None:
    rng = random.Random(7)
    for _ in range(200):
        seqs = [rng.randrange(30) for _ in range(rng.randrange(1, 60))]
        seen: set[int] = set()
        highest = -1
        dups = ooo = 0
        for s in seqs:
            if s in seen:
                dups += 1
                continue
            if s < highest:
                ooo += 1
            highest = max(highest, s)
            seen.add(s)
        acc = feed(seqs)
        assert (acc.unique, acc.duplicates, acc.out_of_order) == (len(seen), dups, ooo)


def test_expected_deliveries() -> None:
    assert stats.expected_deliveries({0: 10, 1: 5}, {0: 3, 1: 4}, unicast=7) == 30 + 20 + 7


def test_quantize_is_hdr_resolution() -> None:
    hist = stats.new_histogram()
    for v in [0, 1, 2047, 2048, 2049, 4097, 123_456, 9_876_543]:
        q = stats.quantize(v)
        assert q <= v
        assert hist.get_lowest_equivalent_value(v) == hist.get_lowest_equivalent_value(q)


def test_counts_fold_into_hdr_like_direct_records() -> None:
    rng = random.Random(1)
    values = [int(rng.lognormvariate(8, 2)) for _ in range(5000)]
    direct = stats.new_histogram()
    counts = stats.Counts()
    for v in values:
        direct.record_value(v)
        counts.record(v)
    folded = stats.new_histogram()
    counts.drain_into(folded)
    assert counts.buckets == {}
    for p in (50, 90, 99, 99.9, 100):
        assert folded.get_value_at_percentile(p) == direct.get_value_at_percentile(p)
    assert folded.get_total_count() == len(values)


def test_counts_sent_as_pairs_rebuild_the_same_histogram() -> None:
    """What a worker sends each second (value, count pairs) rebuilds the HDR histogram exactly."""
    rng = random.Random(3)
    values = [int(rng.lognormvariate(8, 2)) for _ in range(5000)] + [-5, 0, 10**12]
    direct = stats.new_histogram()
    counts = stats.Counts()
    for v in values:
        direct.record_value(min(max(v, 0), stats.HIGHEST_US))
        counts.record(v)
    rebuilt = stats.histogram_of(counts.take())
    assert counts.buckets == {}
    assert rebuilt.get_total_count() == direct.get_total_count() == len(values)
    for p in (0, 50, 90, 99, 99.9, 100):
        assert rebuilt.get_value_at_percentile(p) == direct.get_value_at_percentile(p)


def test_live_summary_of_counts_matches_the_hdr_summary() -> None:
    rng = random.Random(4)
    for n in (1, 2, 7, 1000):
        counts = stats.Counts()
        for _ in range(n):
            counts.record(int(rng.lognormvariate(7, 2.5)))
        pairs = list(counts.buckets.items())
        hdr = stats.summary_ms(stats.histogram_of(pairs), stats.LATENCY_PERCENTILES)
        assert counts.summary_ms(stats.LATENCY_PERCENTILES) == hdr
    assert stats.Counts().summary_ms(stats.LATENCY_PERCENTILES)["p99"] is None


def test_merge_of_encoded_parts_equals_the_whole() -> None:
    rng = random.Random(2)
    parts = [[rng.randrange(1, 10_000_000) for _ in range(1000)] for _ in range(3)]
    whole = stats.new_histogram()
    encoded = []
    for part in parts:
        h = stats.new_histogram()
        for v in part:
            h.record_value(v)
            whole.record_value(v)
        encoded.append(stats.encode(h))
    merged = stats.merge(encoded)
    assert merged.get_total_count() == 3000
    for p in (1, 50, 99, 99.99):
        assert merged.get_value_at_percentile(p) == whole.get_value_at_percentile(p)
    assert merged.get_max_value() == whole.get_max_value()
    # averaging the parts' p99s would not give this: the merge is bucket by bucket
    summary = stats.summary_ms(merged, stats.LATENCY_PERCENTILES)
    assert set(summary) == {"p50", "p90", "p99", "p999", "max"}


def test_phase_result_lost_and_rate() -> None:
    counts = dict.fromkeys(
        ("published", "acked", "rejected", "expected", "received", "unique", "duplicates",
         "out_of_order", "late"), 0)  # fmt: skip
    counts.update(expected=100, unique=97, received=99)
    p = PhaseResult(0, 10, 1, counts, stats.new_histogram(), 2.0, 0.5, 0.1, 0.1, {})
    assert p.lost == 3 and p.deliveries_per_s == 198


def offsets(
    seen: list[int], joined_at: int | None = 0, stream_ooo: set[int] = frozenset()
) -> stats.RoomOffsets:
    """One receiver's room offsets, as the swarm checks them (``joined_at``: the ack's)."""
    room = stats.RoomOffsets(1)
    room.joined(0, joined_at, None)
    assert room.last[0] == (joined_at or 0)
    for i, offset in enumerate(seen):
        if offset == room.last[0] + 1:  # the fast path, as in engine / _fastcount.c
            room.last[0] = offset
        else:
            room.check(0, offset, i in stream_ooo)
    return room


@pytest.mark.parametrize(
    ("seen", "joined_at", "ooo", "gaps", "epochs"),
    [
        ([1, 2, 3], 0, 0, 0, 0),
        ([2, 1, 3], 0, 1, 0, 0),  # two publishers' messages swapped: 1 after 2
        ([1, 3, 2, 5, 4, 6], 0, 2, 0, 0),
        ([1, 3, 4], 0, 0, 1, 0),  # 2 never came: a gap, not disorder
        ([6, 7], 5, 0, 0, 0),  # joined late: offsets start after the ack's
        ([8, 9], 5, 0, 2, 0),  # 6 and 7 missing since the join
        ([4, 5], None, 0, 3, 0),  # no offset in the ack: the room was new (0)
        ([4, 5, 1], None, 1, 2, 0),  # ... so 1 is late, not a restart
        ([1, 2, 3, 1, 2], 0, 0, 0, 1),  # offsets started again: an epoch change
        ([6, 1, 2], 5, 0, 0, 1),  # 1 was before the join: a restart
        ([1, 2, 2], 0, 1, 0, 0),  # a new message with a repeated offset: out of order
        ([1, 3, 4, 2, 5], 0, 1, 0, 0),
    ],
)
def test_room_offsets_order_gaps_and_epochs(
    seen: list[int], joined_at: int | None, ooo: int, gaps: int, epochs: int
) -> None:
    room = offsets(seen, joined_at)
    assert (room.out_of_order, room.gaps, room.epoch_changes) == (ooo, gaps, epochs)


def test_room_offsets_count_a_delivery_once_with_the_streams() -> None:
    """One publisher's message overtaken by its own next one: the stream check counted it."""
    assert offsets([2, 1], stream_ooo={1}).out_of_order == 0
    assert offsets([2, 1]).out_of_order == 1


def test_a_rejoin_under_a_new_epoch_starts_the_offsets_again() -> None:
    room = stats.RoomOffsets(2)
    room.joined(0, 0, "a")
    room.joined(1, 3, None)  # no epoch in the ack: none is tracked (an older server)
    assert room.epoch == ["a", None]
    for offset in (1, 2, 3):
        room.check(0, offset, False)
    room.joined(0, 0, "b")  # a rejoin: the room's offsets started again
    room.joined(1, 7, None)
    room.check(0, 1, False)
    room.check(1, 8, False)
    assert (room.epoch_changes, room.out_of_order, room.gaps) == (1, 0, 0)
    assert room.last == [1, 8]
    room.joined(0, 1, "b")  # the same epoch again: nothing changes
    assert room.epoch_changes == 1
    room.reset_counts()
    assert (room.epoch_changes, room.last) == (0, [1, 8])
