"""The C accounting (loadtest/_fastcount.c) counts exactly what the Python reference counts."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from relay.loadtest import engine, stats

fastcount = pytest.importorskip(
    "relay.loadtest._fastcount", reason="built only where a C compiler is"
)

RUN = "t3st"


def swarm() -> engine.Swarm:
    cfg = engine.WorkerConfig(
        url="", transport="websocket", run_id=RUN, mode="broadcast", rooms=1, publishers=0,
        payload=0, indices=tuple(range(4)), connect_rate=None, connect_timeout=1, concurrency=1,
    )  # fmt: skip
    s = engine.Swarm(cfg, None)  # type: ignore[arg-type]
    s.set_phase(2)
    return s


def frame(
    tag: str, header: bool = True, offset: str = "1", where: str = "end", pad: int = 2
) -> bytes:
    """A delivery; ``offset`` is the JSON text of its offset ('' for none), after ``data`` as
    relay sends it (``where="end"``) or before it."""
    field = b'"offset":' + offset.encode() + b"," if offset else b""
    data = b'"data":{"lt":"' + tag.encode() + b'","x":"' + b"x" * pad + b'"},'
    head = b'42["message",{"id":"m1","room":"r","event":"message","from":{"sid":"s","user":null},'
    middle = data + field if where == "end" else field + data
    body = head + middle + b'"ts":1}]'
    n = len(body)
    if not header:
        return body
    return (
        b"\x81\x7e" + n.to_bytes(2, "big") if n < 65536 else b"\x81\x7f" + n.to_bytes(8, "big")
    ) + body


def state(s: engine.Swarm) -> dict[str, Any]:
    acc = s.acc
    return {
        "received": acc.received,
        "unique": acc.unique,
        "duplicates": acc.duplicates,
        "out_of_order": acc.out_of_order,
        "streams": {
            k: [v[0], v[1], sorted(v[2]) if v[2] else None] for k, v in acc.streams.items()
        },
        "rooms": [
            s.rooms.last,
            s.rooms.hole1,
            s.rooms.out_of_order,
            s.rooms.gaps,
            s.rooms.epoch_changes,
        ],
        "late": s.late,
        "foreign": s.foreign,
        "buckets": dict(s.lat_buckets),
    }


def test_the_default_path_is_the_c_one() -> None:
    assert engine.Swarm.on_delivery is engine.Swarm.on_delivery_c


def test_c_and_python_agree_on_a_faulty_stream() -> None:
    rng = random.Random(7)
    future = time.time_ns() + 3600 * 10**9  # latency clamps to 0 on both paths
    frames: list[tuple[int, bytes]] = []
    for local in range(4):
        offset = 0
        for stream in (0, 1, 6):
            seqs = list(range(60))
            seqs += rng.sample(seqs, 8)  # duplicates
            for i in range(20, 40, 3):
                seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
            for seq in seqs:
                sent = future if seq % 3 else 1  # 1: a huge latency, same bucket on both
                offset += 1
                # the room's offsets: mostly the next, sometimes a gap, a swap, a restart,
                # none (direct), null, spaced, before data, after a big payload
                shown, where, pad = str(offset), "end", 2
                roll = rng.random()
                if roll < 0.08:
                    shown = str(offset + 3)
                elif roll < 0.16:
                    shown = str(max(1, offset - 2))
                elif roll < 0.18:
                    offset, shown = 1, "1"
                elif roll < 0.22:
                    shown = ""
                elif roll < 0.25:
                    shown = "null"
                elif roll < 0.28:
                    shown = " " + shown
                elif roll < 0.32:
                    where = "start"
                elif roll < 0.36:
                    pad = 3000
                elif roll < 0.38:
                    where, pad = "start", 70000
                tag = f"{RUN}:2:{stream}:{seq}:{sent}"
                frames.append((local, frame(tag, seq % 2 == 0, shown, where, pad)))
    frames += [
        (0, frame(f"{RUN}:1:0:5:{future}")),  # an earlier phase: late
        (0, frame("other:2:0:5:1")),  # another run: foreign
        (1, frame(f"{RUN}:2:0:x5:1")),  # a tag that does not parse: foreign
        (1, frame(f"{RUN}:2:0:5")),  # too few fields: foreign
        (2, frame(f"{RUN}:2:0:5:1:9")),  # too many: foreign
        (3, frame(f"{RUN}:2:0:")),  # cut short
        (3, b'42["message",{"lt":"' + f"{RUN}:2:".encode()),  # truncated at the tag
    ]
    rng.shuffle(frames[-40:])
    py, c = swarm(), swarm()
    for local, f in frames:
        py.on_delivery_py(local, f)
        c.on_delivery_c(local, f)
    assert state(c) == state(py)
    got = state(c)
    assert got["duplicates"] > 0 and got["out_of_order"] > 0
    assert got["rooms"][2] > 0 and got["rooms"][3] > 0 and got["rooms"][4] > 0
    assert got["late"] == 1 and got["foreign"] == 6
    assert c.last_ns > 0


def test_c_latency_is_now_minus_sent_in_microseconds() -> None:
    s = swarm()
    sent = time.time_ns() - 5_000_000  # 5 ms ago
    s.on_delivery_c(0, frame(f"{RUN}:2:0:0:{sent}"))
    took_us = (time.time_ns() - sent) // 1000
    ((value, count),) = s.lat_buckets.items()
    assert count == 1
    assert 5000 <= value <= took_us
    assert value == stats.quantize(value)
    assert s.acc.received == 1 and s.acc.streams[0] == [1, 0, None]


def test_c_latency_is_exact_below_2048_us() -> None:
    """Below 2,048 µs nothing is quantized: each value lies between the clock read just before
    and just after the call (an off-by-one would show in some of the 300 tries)."""
    s = swarm()
    for seq in range(300):
        sent = time.time_ns() - 1_000_000
        before = (time.time_ns() - sent) // 1000
        s.on_delivery_c(0, frame(f"{RUN}:2:0:{seq}:{sent}"))
        after = (time.time_ns() - sent) // 1000
        (value,) = s.lat_buckets
        assert before <= value <= after
        s.lat_buckets.clear()
    assert s.acc.received == 300 and s.acc.duplicates == 0


def test_c_rejects_wrong_types_instead_of_crashing() -> None:
    with pytest.raises(TypeError):
        fastcount.count("text", b"t", 0, {}, {})
    with pytest.raises(TypeError):
        fastcount.count(b"x", b"t", 0, {}, {})
    with pytest.raises(IndexError):
        fastcount.count(b"x", b"t", 1, {}, {}, [-1])


def test_c_finds_the_offset_wherever_the_envelope_puts_it() -> None:
    """After data (relay), before it, spaced, after a big payload; none, null or junk is -1."""
    s = swarm()
    far = time.time_ns() + 10**12
    cases = [("7", "end", 2, 7), ("8", "start", 2, 8), (" 9", "end", 2, 9),
             ("10", "end", 5000, 10), ("11", "start", 70000, 11), ("", "end", 2, -1),
             ("null", "end", 2, -1), ('"12"', "end", 2, -1)]  # fmt: skip
    for seq, (shown, where, pad, want) in enumerate(cases):
        s.acc.streams.clear()  # stream 5 from seq 0: the tuple path, which carries the offset
        got = fastcount.count(
            frame(f"{RUN}:2:5:{seq + 1}:{far}", True, shown, where, pad), s.hot, 0, s.acc.streams,
            {}, [-1],
        )  # fmt: skip
        assert got[3] == want, (shown, where, pad)
