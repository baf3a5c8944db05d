"""What ``relay loadtest`` shows: the live view and CI lines, the final table, the SLO verdict,
what the server refused, and the HTML page — rendered from made-up runs, into strings."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console

from relay.cli.progress import Clock, View, live_view
from relay.loadtest import fmt, stats
from relay.loadtest.page import to_html
from relay.loadtest.report import build, render, server_refusals
from relay.loadtest.scenario import Scenario, ScenarioError
from relay.loadtest.workers import PhaseResult, ramp_breach

COUNTS = ("published", "acked", "rejected", "expected", "received", "unique", "duplicates",
          "out_of_order", "late")  # fmt: skip


def phase(k: int, rate: float, *, lost: int = 0, latency_us: int = 3_000, rejected: int = 0,
          published: int | None = None, stopped: str = "") -> PhaseResult:  # fmt: skip
    """A made-up phase of 10 s at ``rate`` in a room of 10: deliveries at ``latency_us``."""
    sent = round(rate * 10) if published is None else published
    expected = (sent - rejected) * 10
    hist = stats.new_histogram()
    hist.record_value(latency_us, expected - lost)
    counts = dict.fromkeys(COUNTS, 0)
    counts.update(published=sent, acked=sent - rejected, rejected=rejected, expected=expected,
                  received=expected - lost, unique=expected - lost)  # fmt: skip
    return PhaseResult(
        k=k, rate=rate, duration=10.0, counts=counts, latency=hist, wall_s=11.0, window_s=10.0,
        cpu_s=1.0, worker_cpu_max=0.1, errors={"rate_limited": rejected} if rejected else {},
        stopped=stopped,
    )  # fmt: skip


def raw_run(phases: list[PhaseResult], **extra: Any) -> dict[str, Any]:
    total = stats.new_histogram()
    for p in phases:
        total.add(p.latency)
    connect = stats.new_histogram()
    connect.record_value(2_500, 100)
    samples = [
        {"t": float(t), "stage": "publishing", "connected": 100, "published": 100 * t,
         "received": 1000 * t, "deliveries_per_s": 1000.0, "p50_ms": 1.5, "p99_ms": 3.0 + t,
         "max_ms": 9.0, "in_flight": 0, "loadgen_cpu_percent": 12.0}
        for t in range(1, 11)
    ]  # fmt: skip
    return {
        "run_id": "abcd1234", "phases": phases, "latency": total, "samples": samples,
        "connect": {"connected": 100, "joined": 100, "connect_errors": 0, "error_samples": {},
                    "connect_hist": connect},
        "wall_s": 14.2, "interrupted": False, "stop_reason": "", "ramp_stop": "",
        **extra,
    }  # fmt: skip


def text_of(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    render(report, Console(file=buf, width=120, color_system=None))
    return buf.getvalue()


def test_final_table_has_rate_rooms_duration_and_says_slos_passed() -> None:
    scn = Scenario(rate=100, rooms=10, max_p99_ms=50, max_loss=0).validate()
    out = text_of(build(scn, raw_run([phase(0, 100)])))
    assert re.search(r"target rate\s*│\s*100\.0 msgs/s", out)
    assert re.search(r"rooms\s*│\s*10 ", out)
    assert re.search(r"duration\s*│\s*10\.0 s of publishing, 14\.2 s in all", out)
    assert (
        "SLOs passed: p99 latency 3.00 ms <= --max-p99-ms 50; loss ratio 0 <= --max-loss 0" in out
    )


def test_missed_slos_are_named_and_none_set_is_said() -> None:
    scn = Scenario(max_p99_ms=1, min_rate=1e9).validate()
    out = text_of(build(scn, raw_run([phase(0, 100)])))
    assert "SLO missed: p99 latency 3.00 ms exceeds --max-p99-ms 1" in out
    assert "SLO missed: deliveries/s 1,000.0 is below --min-rate 1e+09" in out
    assert "SLOs passed" not in out
    out = text_of(build(Scenario().validate(), raw_run([phase(0, 100)])))
    assert "no SLOs set (--max-p99-ms, --max-loss, --min-rate)" in out


def test_decimals_are_consistent() -> None:
    """Milliseconds with two decimals, rates and percentages with one, counts with none."""
    scn = Scenario(rate=100).validate()
    out = text_of(build(scn, raw_run([phase(0, 100, latency_us=123_456)])))
    rows = dict(re.findall(r"│ ([^│]+?)\s+│\s+([^│]+?) │", out))
    for name, value in rows.items():
        if " ms " in f" {name} ":
            assert all(re.fullmatch(r"[\d,]+\.\d\d", v) for v in value.split(" / ")), (name, value)
    assert re.fullmatch(r"[\d,]+\.\d", rows["deliveries/s"])
    assert re.fullmatch(r"[\d,]+\.\d", rows["generator CPU %"])
    assert re.fullmatch(r"[\d,]+", rows["received"])
    assert (fmt.ms(0.5), fmt.rate(1234.56), fmt.count(1234567), fmt.clock(3723)) == (
        "0.50",
        "1,234.6",
        "1,234,567",
        "1:02:03",
    )


def test_a_ramp_step_cut_by_the_time_cap_says_so() -> None:
    """Not "the generator could not publish at this rate": the run stopped, not the step."""
    scn = Scenario(ramp=True, max_p99_ms=100).validate()
    cut = phase(1, 150, published=200, stopped="hard time cap of 15s reached")
    assert ramp_breach(cut, scn) == "cut short (hard time cap of 15s reached)"
    slow = phase(1, 150, published=200)
    assert ramp_breach(slow, scn) == "the generator could not publish at this rate"
    refused = phase(1, 150, rejected=40)
    assert ramp_breach(refused, scn) == "the server refused 40 publishes (40 rate_limited)"
    report = build(scn, raw_run([phase(0, 100), cut], ramp_stop="(from the orchestrator)"))
    steps = report["ramp"]["steps"]
    assert [s["result"] for s in steps] == [
        "sustained", "cut short (hard time cap of 15s reached)"
    ]  # fmt: skip
    assert report["ramp"]["max_sustained_rate"] == 100
    out = text_of(report)
    assert "cut short (hard time cap of 15s reached)" in out
    assert "highest sustained: 100.0 msgs/s = 1,000.0 deliveries/s" in out


def test_refusals_name_the_settings_to_raise() -> None:
    report = {
        "connect_error_samples": {
            "websocket upgrade refused: HTTP/1.1 429 Too Many Requests": 40,
            'HTTP 429: {"error": {"code": "rate_limited"}}': 2,
            "websocket upgrade refused: HTTP/1.1 503 Service Unavailable": 3,
            "ConnectionRefusedError: [Errno 111] Connection refused": 1,
        },
        "ack_errors": {"rate_limited": 1234},
        "connected": 55,
        "joined": 55,
    }
    notes = server_refusals(report)
    assert len(notes) == 3, notes
    assert notes[0].startswith("the server refused 42 connections with 429 Too Many Requests")
    assert "RELAY_MAX_CONNECTIONS_PER_IP" in notes[0] and "RELAY_CONNECT_RATE" in notes[0]
    assert notes[1].startswith("the server refused 3 connections with 503")
    assert re.search(r"\bRELAY_MAX_CONNECTIONS\b(?!_)", notes[1])
    assert notes[2].startswith("the server refused 1,234 publishes as rate_limited")
    assert "RELAY_PUBLISH_RATE" in notes[2]


@dataclass
class FakeLive:
    """What the orchestrator's ``Live`` carries, set by hand."""

    stage: str = "connecting"
    clients: int = 100
    connected: int = 0
    connect_errors: int = 0
    phase_rate: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    deliveries_per_s: float = 0.0
    p99_ms: float | None = None
    cpu_percent: float = 0.0


def test_plain_lines_every_few_seconds_and_at_each_stage() -> None:
    now = [100.0]
    scn = Scenario(duration=10, drain=5).validate()
    buf = io.StringIO()
    view = View(Clock(scn, get_time=lambda: now[0]), Console(file=buf, width=80), every=5)
    live = FakeLive()
    for t, stage in [(0.0, "connecting"), (1.0, "connecting"), (2.0, "publishing"),
                     (3.0, "publishing"), (7.5, "publishing"), (12.0, "draining")]:  # fmt: skip
        now[0] = 100.0 + t
        live.stage = stage
        if stage != "connecting":
            live.connected, live.phase_rate = 100, 100.0
            live.counts = {"published": 550, "expected": 5500, "unique": 5480}
            live.deliveries_per_s, live.p99_ms, live.cpu_percent = 5480.0, 3.2, 35.0
        view.update(live)
    lines = buf.getvalue().splitlines()
    assert lines == [
        "[0:00] connecting 0% · 0:15 left at most · connected 0/100",
        "[0:02] publishing 0% · 0:15 left at most · connected 100/100 · rate msgs/s 100.0 · "
        "published 550 · deliveries/s 5,480.0 · p99 ms 3.20 · in flight 20 · gen CPU % 35.0",
        "[0:07] publishing 55% · 0:09 left at most · connected 100/100 · rate msgs/s 100.0 · "
        "published 550 · deliveries/s 5,480.0 · p99 ms 3.20 · in flight 20 · gen CPU % 35.0",
        "[0:12] draining 100% · 0:05 left at most · connected 100/100 · rate msgs/s 100.0 · "
        "published 550 · deliveries/s 5,480.0 · p99 ms 3.20 · in flight 20 · gen CPU % 35.0",
    ]
    assert "missing" not in buf.getvalue()


def test_the_terminal_view_has_a_bar_elapsed_and_remaining() -> None:
    now = [0.0]
    scn = Scenario(duration=10, drain=5, ramp=True, ramp_steps=4).validate()
    clock = Clock(scn, get_time=lambda: now[0])
    live = FakeLive(stage="publishing 150/s", connected=100, phase_rate=150.0,
                    counts={"published": 10, "expected": 100, "unique": 90})  # fmt: skip
    for t, stage in [(1.0, "publishing 100/s"), (12.0, "draining"), (13.0, "publishing 150/s")]:
        now[0] = t
        clock.observe(stage)
    now[0] = 18.0
    buf = io.StringIO()
    Console(file=buf, width=140, color_system=None).print(live_view(clock.position(), live))
    out = buf.getvalue()
    assert "publishing 150/s (step 2 of at most 4)" in out
    assert "━" in out and "38%" in out  # 15 of the 40 s of publishing planned
    assert "elapsed 0:18" in out and "left ≤ 0:40" in out  # 5 + 5 drain + 2 steps of 15
    assert "in flight" in out and "missing" not in out


def test_scenario_urls_are_read_like_relay_sends() -> None:
    assert Scenario(url="127.0.0.1:8765").validate().url == "http://127.0.0.1:8765"
    assert Scenario(url="wss://example.com/socket.io/").validate().url == "https://example.com"
    with pytest.raises(ScenarioError, match="url must look like"):
        Scenario(url="ftp://x").validate()


def test_html_has_the_ramp_table_and_the_highest_sustained_rate() -> None:
    scn = Scenario(ramp=True, max_p99_ms=100).validate()
    report = build(scn, raw_run([phase(0, 100), phase(1, 150, latency_us=900_000)],
                                ramp_stop="p99 900.0 ms > 100 ms at 150 msgs/s"))  # fmt: skip
    page = to_html(report)
    assert "<h2>Ramp</h2>" in page
    assert "<th>rate msgs/s</th>" in page and "<td>150.0</td>" in page
    assert "highest sustained: 100.0 msgs/s = 1,000.0 deliveries/s" in page
    assert "p99 900.0 ms &gt; 100 ms at 150 msgs/s" in page
    assert page.count("<svg") == 5
    for title in ("seconds since the start", "milliseconds", "deliveries"):
        assert title in page


def test_two_nodes_get_a_per_node_table_in_the_terminal_and_the_page() -> None:
    scn = Scenario(url="a:1", urls=("a:1", "b:2"), rate=100, clients=100).validate()
    p = phase(0, 100)
    hist_a, hist_b = stats.new_histogram(), stats.new_histogram()
    hist_a.record_value(2_000, 600)
    hist_b.record_value(9_000, 400)
    p.nodes = [
        {"published": 600, "acked": 600, "rejected": 0, "errors": {}, "received": 600,
         "latency": hist_a},
        {"published": 400, "acked": 400, "rejected": 0, "errors": {}, "received": 400,
         "latency": hist_b},
    ]  # fmt: skip
    p.counts["received"] = p.counts["unique"] = p.counts["expected"] = 1000
    raw = raw_run([p])
    raw["connect"]["nodes"] = [
        {"url": "http://a:1", "clients": 50, "connected": 50, "joined": 50, "connect_errors": 0},
        {"url": "http://b:2", "clients": 50, "connected": 48, "joined": 48, "connect_errors": 2},
    ]  # fmt: skip
    report = build(scn, raw)
    assert [n["received"] for n in report["nodes"]] == [600, 400]
    assert report["nodes"][1]["latency_ms"]["p50"] == pytest.approx(9.0, rel=0.01)
    out = text_of(report)
    assert "per node" in out
    assert re.search(r"http://b:2\s*│\s*48 / 50\s*│\s*2\s*│\s*400\s*│\s*0\s*│\s*400 ", out), out
    assert re.search(r"total\s*│\s*100 / 100", out)
    page = to_html(report)
    assert "<h2>Per node</h2>" in page and "<td>http://b:2</td>" in page
    one = build(Scenario(rate=100).validate(), raw_run([phase(0, 100)]))
    assert "per node" not in text_of(one) and "Per node" not in to_html(one)
    assert len(one["nodes"]) == 1


def test_disorder_only_the_room_offsets_saw_is_named_in_the_table() -> None:
    p = phase(0, 100)
    p.counts.update(out_of_order=12, out_of_order_by_offset=9, offset_gaps=3, epoch_changes=1)
    report = build(Scenario(rate=100).validate(), raw_run([p]))
    out = text_of(report)
    assert re.search(r"out of order\s*│\s*12 \(9 by room offset\)", out)
    assert re.search(r"offset gaps / epoch changes\s*│\s*3 / 1", out)
    assert (report["out_of_order_by_offset"], report["offset_gaps"]) == (9, 3)
