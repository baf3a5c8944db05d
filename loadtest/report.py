"""The run's report: one JSON-able dict, a rich table, SLO verdicts, and what the server's
limits refused (the offline HTML page is :mod:`loadtest.page`)."""

from __future__ import annotations

import os
import re
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from relay.loadtest import fmt, stats
from relay.loadtest.scenario import Scenario
from relay.loadtest.workers import PhaseResult

GENERATOR_BOUND_SHARE = 0.85  # a worker busier than this share of a core was the bottleneck


def _histogram_buckets(hist: HdrHistogram, n: int = 30) -> list[list[float]]:
    """[[upper bound ms, count], ...] in ``n`` log-spaced buckets, for a chart."""
    if hist.get_total_count() == 0:
        return []
    lo = max(1, hist.get_min_value())
    hi = max(lo + 1, hist.get_max_value())
    ratio = (hi / lo) ** (1 / n)
    edges = [lo * ratio ** (i + 1) for i in range(n)]
    counts = [0] * n
    for item in hist.get_recorded_iterator():
        value = item.value_iterated_to
        i = 0
        while i < n - 1 and value > edges[i]:
            i += 1
        counts[i] += item.count_added_in_this_iter_step
    return [[round(e / 1000, 3), c] for e, c in zip(edges, counts, strict=True)]


def build(scn: Scenario, raw: dict[str, Any]) -> dict[str, Any]:
    """The report: every key the issue names, plus per-phase detail and samples."""
    phases: list[PhaseResult] = raw["phases"]
    conn = raw.get("connect") or {}
    counts = dict.fromkeys(
        ("published", "acked", "rejected", "expected", "received", "unique", "duplicates",
         "out_of_order", "out_of_order_by_offset", "offset_gaps", "epoch_changes", "late"), 0,
    )  # fmt: skip
    for p in phases:
        for key in counts:
            counts[key] += p.counts.get(key, 0)
    # only a server giving two messages one offset fills more gaps than it opened
    counts["offset_gaps"] = max(0, counts["offset_gaps"])
    lost = sum(p.lost for p in phases)
    window = sum(p.window_s for p in phases)
    phase_cpu = sum(p.cpu_s for p in phases)
    phase_wall = sum(p.wall_s for p in phases)
    cpu_pct = 100 * phase_cpu / phase_wall if phase_wall else 0.0
    worker_max = max((p.worker_cpu_max for p in phases), default=0.0)
    bound = worker_max >= GENERATOR_BOUND_SHARE
    connect_hist: HdrHistogram = conn.get("connect_hist") or stats.new_histogram()
    report: dict[str, Any] = {
        "tool": "relay loadtest",
        "url": scn.url,
        "urls": list(scn.urls or (scn.url,)),
        "run_id": raw["run_id"],
        "mode": scn.mode,
        "transport": scn.transport,
        "clients": scn.clients,
        "connected": conn.get("connected", 0),
        "joined": conn.get("joined", 0),
        "connect_errors": conn.get("connect_errors", scn.clients),
        "connect_error_samples": conn.get("error_samples", {}),
        "rooms": scn.rooms,
        "publishers": scn.publisher_count,
        "workers": scn.worker_count,
        "payload_bytes": scn.payload,
        "rate": scn.rate,
        "duration_s": round(sum(p.duration for p in phases), 3),
        **counts,
        "lost": lost,
        "loss_ratio": round(lost / counts["expected"], 6) if counts["expected"] else 0.0,
        "deliveries_per_s": round(counts["received"] / window, 1) if window else 0.0,
        "latency_ms": stats.summary_ms(raw["latency"], stats.LATENCY_PERCENTILES),
        "connect_ms": stats.summary_ms(connect_hist, stats.CONNECT_PERCENTILES),
        "loadgen_cpu_percent": round(cpu_pct, 1),
        "loadgen_cpu_us_per_delivery": (
            round(1e6 * phase_cpu / counts["received"], 2) if counts["received"] else None
        ),
        "loadgen_cpu_cores": os.cpu_count(),
        "generator_bound": bound,
        "ack_errors": _sum_errors(phases),
        "disconnects": raw.get("disconnects", 0),
        "interrupted": raw.get("interrupted", False),
        "stop_reason": raw.get("stop_reason", ""),
        "wall_s": round(raw.get("wall_s", 0.0), 2),
        "samples": raw.get("samples", []),
        "connect_histogram_ms": _histogram_buckets(connect_hist),
        "latency_histogram_ms": _histogram_buckets(raw["latency"]),
        "ramp": None,
    }
    if scn.ramp:
        from relay.loadtest.workers import ramp_breach

        verdicts = [ramp_breach(p, scn) for p in phases]
        steps = [
            {**_step(p), "result": verdict or "sustained"}
            for p, verdict in zip(phases, verdicts, strict=True)
        ]
        good = [p for p, verdict in zip(phases, verdicts, strict=True) if not verdict]
        best = good[-1] if good else None
        report["ramp"] = {
            "steps": steps,
            "stop_reason": raw.get("ramp_stop", ""),
            "max_sustained_rate": best.rate if best else 0.0,
            "max_sustained_deliveries_per_s": round(best.deliveries_per_s, 1) if best else 0.0,
            "slo": {
                "max_p99_ms": scn.max_p99_ms if scn.max_p99_ms is not None else 250.0,
                "max_loss": scn.max_loss if scn.max_loss is not None else 0.0,
            },
        }
    report["nodes"] = _nodes(scn, raw, report, window)
    report["server_refusals"] = server_refusals(report)
    report["slo"] = evaluate_slo(scn, report)
    return report


def _nodes(
    scn: Scenario, raw: dict[str, Any], report: dict[str, Any], window: float
) -> list[dict[str, Any]]:
    """Per node (``--url``, in order): connections, publishes, deliveries and their latency,
    errors. With one node, the totals themselves."""
    keys = ("clients", "connected", "connect_errors", "published", "acked", "rejected",
            "received", "deliveries_per_s", "latency_ms")  # fmt: skip
    urls = scn.urls or (scn.url,)
    if len(urls) == 1:
        return [
            {"url": urls[0], **{k: report[k] for k in keys}, "ack_errors": report["ack_errors"]}
        ]
    phases: list[PhaseResult] = raw["phases"]
    connected = (raw.get("connect") or {}).get("nodes") or [{} for _ in urls]
    out: list[dict[str, Any]] = []
    for i, url in enumerate(urls):
        latency = stats.new_histogram()
        node: dict[str, Any] = {
            "url": url,
            **{k: connected[i].get(k, 0) for k in ("clients", "connected", "connect_errors")},
            "published": 0, "acked": 0, "rejected": 0, "received": 0, "ack_errors": {},
        }  # fmt: skip
        for p in phases:
            if i < len(p.nodes):
                pn = p.nodes[i]
                for k in ("published", "acked", "rejected", "received"):
                    node[k] += pn[k]
                for code, n in pn["errors"].items():
                    node["ack_errors"][code] = node["ack_errors"].get(code, 0) + n
                latency.add(pn["latency"])
        node["deliveries_per_s"] = round(node["received"] / window, 1) if window else 0.0
        node["latency_ms"] = stats.summary_ms(latency, stats.LATENCY_PERCENTILES)
        out.append(node)
    return out


NODE_COLUMNS = ("node", "connected", "connect errors", "published", "refused", "received",
                "deliveries/s", "p50 ms", "p99 ms", "max ms")  # fmt: skip


def node_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The per-node table's rows and a total row (also the HTML page's), or none with one
    node."""
    nodes = report.get("nodes") or []
    if len(nodes) < 2:
        return []

    def row(name: str, n: dict[str, Any]) -> tuple[str, ...]:
        lat = n["latency_ms"]
        return (
            name, _slash(fmt.count(n["connected"]), fmt.count(n["clients"])),
            fmt.count(n["connect_errors"]), fmt.count(n["published"]), fmt.count(n["rejected"]),
            fmt.count(n["received"]), fmt.rate(n["deliveries_per_s"]), fmt.ms(lat["p50"]),
            fmt.ms(lat["p99"]), fmt.ms(lat["max"]),
        )  # fmt: skip

    return [*(row(n["url"], n) for n in nodes), row("total", report)]


def _sum_errors(phases: list[PhaseResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in phases:
        for code, n in p.errors.items():
            out[code] = out.get(code, 0) + n
    return out


def _step(p: PhaseResult) -> dict[str, Any]:
    return {
        "rate": round(p.rate, 2),
        **{k: p.counts[k] for k in ("published", "expected", "received", "duplicates")},
        "out_of_order": p.counts["out_of_order"],
        "out_of_order_by_offset": p.counts.get("out_of_order_by_offset", 0),
        "lost": p.lost,
        "deliveries_per_s": round(p.deliveries_per_s, 1),
        "latency_ms": stats.summary_ms(p.latency, stats.LATENCY_PERCENTILES),
        "loadgen_cpu_percent": round(100 * p.cpu_s / p.wall_s, 1) if p.wall_s else 0.0,
        "loadgen_cpu_us_per_delivery": (
            round(1e6 * p.cpu_s / p.counts["received"], 2) if p.counts["received"] else None
        ),
    }


def evaluate_slo(scn: Scenario, report: dict[str, Any]) -> dict[str, Any]:
    """Each SLO threshold set, judged: ``failures`` (missed) and ``checks`` (met), each a
    sentence naming the flag; ``passed`` when none was missed."""
    failures: list[str] = []
    checks: list[str] = []

    def judge(ok: bool, met: str, missed: str) -> None:
        (checks if ok else failures).append(met if ok else missed)

    ramp = report.get("ramp")
    p99 = report["latency_ms"]["p99"]
    if ramp is None:
        if scn.max_p99_ms is not None:
            shown = "no deliveries" if p99 is None else f"{fmt.ms(p99)} ms"
            judge(
                p99 is not None and p99 <= scn.max_p99_ms,
                f"p99 latency {shown} <= --max-p99-ms {scn.max_p99_ms:g}",
                f"p99 latency {shown} exceeds --max-p99-ms {scn.max_p99_ms:g}",
            )
        if scn.max_loss is not None:
            loss = report["loss_ratio"]
            judge(
                loss <= scn.max_loss,
                f"loss ratio {loss:g} <= --max-loss {scn.max_loss:g}",
                f"loss ratio {loss:g} exceeds --max-loss {scn.max_loss:g}",
            )
        if scn.min_rate is not None:
            rate = report["deliveries_per_s"]
            judge(
                rate >= scn.min_rate,
                f"deliveries/s {fmt.rate(rate)} >= --min-rate {scn.min_rate:g}",
                f"deliveries/s {fmt.rate(rate)} is below --min-rate {scn.min_rate:g}",
            )
    else:
        best = ramp["max_sustained_deliveries_per_s"]
        judge(
            best > 0,
            f"a ramp step met p99 <= {ramp['slo']['max_p99_ms']:g} ms and loss "
            f"<= {ramp['slo']['max_loss']:g}",
            f"no ramp step met the SLO ({ramp['stop_reason']})",
        )
        if scn.min_rate is not None:
            judge(
                best >= scn.min_rate,
                f"highest sustained deliveries/s {fmt.rate(best)} >= --min-rate {scn.min_rate:g}",
                f"highest sustained deliveries/s {fmt.rate(best)} is below --min-rate "
                f"{scn.min_rate:g}",
            )
    return {"passed": not failures, "failures": failures, "checks": checks}


_STATUS = re.compile(r"\b(429|503)\b")


def refusal_hint(message: str) -> str:
    """What to do about a connect error whose text carries HTTP 429 or 503 ('' otherwise)."""
    m = _STATUS.search(message)
    if m is None:
        return ""
    if m.group(1) == "429":
        return (
            "429 Too Many Requests: too many connections from this IP at once "
            "(RELAY_MAX_CONNECTIONS_PER_IP, 256 by default) or too many new ones a second "
            "(RELAY_CONNECT_RATE, 20/s in bursts of 100 by default). Raise them, or set them "
            "to 0, on the relay under test, or pace the clients with --connect-rate"
        )
    return (
        "503 Service Unavailable: the relay is at its connection limit "
        "(RELAY_MAX_CONNECTIONS, 10000 by default). Raise it on the relay under test"
    )


def server_refusals(report: dict[str, Any]) -> list[str]:
    """Plain sentences for what the relay's limits refused: connections (HTTP 429/503) and
    publishes (``rate_limited``), each saying which setting to raise."""
    notes: list[str] = []
    by_status: dict[str, int] = {}
    for message, n in report.get("connect_error_samples", {}).items():
        hint = refusal_hint(message)
        if hint:
            by_status[hint] = by_status.get(hint, 0) + n
    for hint, n in by_status.items():
        notes.append(f"the server refused {fmt.count(n)} connections with {hint}.")
    limited = report.get("ack_errors", {}).get("rate_limited", 0)
    if limited:
        notes.append(
            f"the server refused {fmt.count(limited)} publishes as rate_limited: one connection "
            "may publish RELAY_PUBLISH_RATE (100/s in bursts of 200 by default). Raise it, or "
            "set it to 0, on the relay under test, or spread --rate over more --publishers."
        )
    unjoined = report.get("connected", 0) - report.get("joined", 0)
    if unjoined > 0:
        notes.append(
            f"{fmt.count(unjoined)} connected clients could not join their room (refused, or "
            "no answer within the connect timeout): they received nothing."
        )
    return notes


def _verdict(report: dict[str, Any]) -> list[str]:
    """The closing lines: which SLOs passed, or which were missed (rich markup)."""
    slo = report["slo"]
    if slo["failures"]:
        return [f"[red]SLO missed:[/red] {escape(f)}" for f in slo["failures"]]
    if slo["checks"]:
        return [f"[green]SLOs passed:[/green] {escape('; '.join(slo['checks']))}"]
    return ["no SLOs set (--max-p99-ms, --max-loss, --min-rate): nothing to pass or miss"]


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """:func:`_verdict` as plain text (for stderr next to ``--json``)."""
    return [Text.from_markup(line).plain for line in _verdict(report)]


def _slash(*values: str) -> str:
    return " / ".join(values)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The final table's rows, as text (also the HTML page's summary)."""
    lat = report["latency_ms"]
    con = report["connect_ms"]
    start = " (the ramp's first step)" if report["ramp"] else ""
    return [
        ("target rate", f"{fmt.rate(report['rate'])} msgs/s{start}"),
        ("duration", f"{fmt.seconds(report['duration_s'])} s of publishing, "
                     f"{fmt.seconds(report['wall_s'])} s in all"),
        ("rooms", fmt.count(report["rooms"])),
        ("clients connected", _slash(fmt.count(report["connected"]), fmt.count(report["clients"]))),
        ("connect errors", fmt.count(report["connect_errors"])),
        ("connect ms p50 / p99 / max", _slash(fmt.ms(con["p50"]), fmt.ms(con["p99"]),
                                              fmt.ms(con["max"]))),
        ("published / acked", _slash(fmt.count(report["published"]), fmt.count(report["acked"]))),
        ("expected deliveries", fmt.count(report["expected"])),
        ("received", fmt.count(report["received"])),
        ("lost", fmt.count(report["lost"])),
        ("duplicates", fmt.count(report["duplicates"])),
        ("out of order", _out_of_order(report)),
        ("offset gaps / epoch changes", _slash(fmt.count(report.get("offset_gaps", 0)),
                                               fmt.count(report.get("epoch_changes", 0)))),
        ("deliveries/s", fmt.rate(report["deliveries_per_s"])),
        ("latency ms p50 / p90 / p99", _slash(fmt.ms(lat["p50"]), fmt.ms(lat["p90"]),
                                              fmt.ms(lat["p99"]))),
        ("latency ms p99.9 / max", _slash(fmt.ms(lat["p999"]), fmt.ms(lat["max"]))),
        ("generator CPU %", fmt.pct(report["loadgen_cpu_percent"])),
        ("generator CPU µs / delivery", fmt.us(report["loadgen_cpu_us_per_delivery"])),
    ]  # fmt: skip


def _out_of_order(report: dict[str, Any]) -> str:
    """``12 (9 by room offset)``: how many only the room's offsets showed (another publisher's
    message overtook them), when any."""
    by_offset = report.get("out_of_order_by_offset", 0)
    total = fmt.count(report["out_of_order"])
    return f"{total} ({fmt.count(by_offset)} by room offset)" if by_offset else total


RAMP_COLUMNS = ("rate msgs/s", "deliveries/s", "p99 ms", "lost", "gen CPU %", "gen µs/delivery",
                "result")  # fmt: skip


def ramp_rows(ramp: dict[str, Any]) -> list[tuple[str, ...]]:
    """The ramp table's rows, one per step (also the HTML page's ramp table)."""
    return [
        (
            fmt.rate(s["rate"]), fmt.rate(s["deliveries_per_s"]), fmt.ms(s["latency_ms"]["p99"]),
            fmt.count(s["lost"]), fmt.pct(s["loadgen_cpu_percent"]),
            fmt.us(s["loadgen_cpu_us_per_delivery"]), s["result"],
        )
        for s in ramp["steps"]
    ]  # fmt: skip


def highest_sustained(ramp: dict[str, Any]) -> str:
    """``highest sustained: 30.0 msgs/s = 300.0 deliveries/s (why the ramp stopped)``"""
    return (
        f"highest sustained: {fmt.rate(ramp['max_sustained_rate'])} msgs/s = "
        f"{fmt.rate(ramp['max_sustained_deliveries_per_s'])} deliveries/s "
        f"(the ramp stopped: {ramp['stop_reason']})"
    )


def render(report: dict[str, Any], console: Console) -> None:
    """The final table, the ramp, what the server refused, and the SLO verdict."""
    t = Table(
        title=f"relay loadtest — {report['mode']} over {report['transport']}", show_header=False
    )
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    for name, value in summary_rows(report):
        t.add_row(name, value)
    console.print(t)
    rows = node_rows(report)
    if rows:
        nt = Table(title="per node")
        for col in NODE_COLUMNS:
            nt.add_column(col, justify="left" if col == "node" else "right")
        for row in rows:
            nt.add_row(*row)
        console.print(nt)
    ramp = report.get("ramp")
    if ramp:
        rt = Table(title="ramp")
        for col in RAMP_COLUMNS:
            rt.add_column(col, justify="left" if col == "result" else "right")
        for row in ramp_rows(ramp):
            rt.add_row(*row)
        console.print(rt)
        console.print(escape(highest_sustained(ramp)))
    if report["generator_bound"]:
        console.print(
            "[yellow]note: a load generator worker used over 85% of a core — the generator, "
            "not the server, may have been the bottleneck; add --workers or machines.[/yellow]"
        )
    # sentences, one line each however wide the console: a log keeps them greppable
    for note in report.get("server_refusals", []):
        console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=True)
    if report["stop_reason"]:
        console.print(
            f"[yellow]stopped early: {escape(report['stop_reason'])}[/yellow]", soft_wrap=True
        )
    for line in _verdict(report):
        console.print(line, soft_wrap=True)
