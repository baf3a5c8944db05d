"""The run's report: one JSON-able dict, a rich table, SLO verdicts, and offline HTML."""

from __future__ import annotations

import html
import os
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from loadtest import stats
from loadtest.scenario import Scenario
from loadtest.workers import PhaseResult

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
         "out_of_order", "late"), 0,
    )  # fmt: skip
    for p in phases:
        for key in counts:
            counts[key] += p.counts[key]
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
        from loadtest.workers import ramp_breach

        steps = [_step(p) for p in phases]
        good = [p for p in phases if not ramp_breach(p, scn)]
        best = good[-1] if good else None
        report["ramp"] = {
            "steps": steps,
            "stop_reason": raw.get("ramp_stop", ""),
            "max_sustained_rate": best.rate if best else 0.0,
            "max_sustained_deliveries_per_s": round(best.deliveries_per_s, 1) if best else 0.0,
        }
    report["slo"] = evaluate_slo(scn, report)
    return report


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
        "lost": p.lost,
        "deliveries_per_s": round(p.deliveries_per_s, 1),
        "latency_ms": stats.summary_ms(p.latency, stats.LATENCY_PERCENTILES),
        "loadgen_cpu_percent": round(100 * p.cpu_s / p.wall_s, 1) if p.wall_s else 0.0,
        "loadgen_cpu_us_per_delivery": (
            round(1e6 * p.cpu_s / p.counts["received"], 2) if p.counts["received"] else None
        ),
    }


def evaluate_slo(scn: Scenario, report: dict[str, Any]) -> dict[str, Any]:
    """Which SLO thresholds were missed, each as a sentence naming the flag."""
    failures: list[str] = []
    ramp = report.get("ramp")
    p99 = report["latency_ms"]["p99"]
    if ramp is None:
        if scn.max_p99_ms is not None and (p99 is None or p99 > scn.max_p99_ms):
            shown = "no deliveries" if p99 is None else f"{p99:g} ms"
            failures.append(f"p99 latency {shown} exceeds --max-p99-ms {scn.max_p99_ms:g}")
        if scn.max_loss is not None and report["loss_ratio"] > scn.max_loss:
            failures.append(
                f"loss ratio {report['loss_ratio']:g} exceeds --max-loss {scn.max_loss:g}"
            )
        if scn.min_rate is not None and report["deliveries_per_s"] < scn.min_rate:
            failures.append(
                f"deliveries/s {report['deliveries_per_s']:g} is below --min-rate {scn.min_rate:g}"
            )
    else:
        best = ramp["max_sustained_deliveries_per_s"]
        if best == 0:
            failures.append(f"no ramp step met the SLO ({ramp['stop_reason']})")
        if scn.min_rate is not None and best < scn.min_rate:
            failures.append(
                f"highest sustained deliveries/s {best:g} is below --min-rate {scn.min_rate:g}"
            )
    return {"passed": not failures, "failures": failures}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:,.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(report: dict[str, Any], console: Console) -> None:
    """The final table."""
    t = Table(
        title=f"relay loadtest — {report['mode']} over {report['transport']}", show_header=False
    )
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    lat = report["latency_ms"]
    con = report["connect_ms"]
    rows: list[tuple[str, Any]] = [
        ("clients connected", f"{_fmt(report['connected'])} / {_fmt(report['clients'])}"),
        ("connect errors", report["connect_errors"]),
        (
            "connect ms p50 / p99 / max",
            f"{_fmt(con['p50'])} / {_fmt(con['p99'])} / {_fmt(con['max'])}",
        ),
        ("published / acked", f"{_fmt(report['published'])} / {_fmt(report['acked'])}"),
        ("expected deliveries", report["expected"]),
        ("received", report["received"]),
        ("lost", report["lost"]),
        ("duplicates", report["duplicates"]),
        ("out of order", report["out_of_order"]),
        ("deliveries/s", report["deliveries_per_s"]),
        (
            "latency ms p50 / p90 / p99",
            f"{_fmt(lat['p50'])} / {_fmt(lat['p90'])} / {_fmt(lat['p99'])}",
        ),
        ("latency ms p99.9 / max", f"{_fmt(lat['p999'])} / {_fmt(lat['max'])}"),
        ("generator CPU %", report["loadgen_cpu_percent"]),
        ("generator CPU µs / delivery", report["loadgen_cpu_us_per_delivery"]),
    ]
    for name, value in rows:
        t.add_row(name, _fmt(value))
    console.print(t)
    ramp = report.get("ramp")
    if ramp:
        rt = Table(title="ramp")
        for col in ("rate/s", "deliveries/s", "p99 ms", "lost", "gen CPU %", "gen µs/delivery"):
            rt.add_column(col, justify="right")
        for s in ramp["steps"]:
            rt.add_row(
                _fmt(s["rate"]), _fmt(s["deliveries_per_s"]), _fmt(s["latency_ms"]["p99"]),
                _fmt(s["lost"]), _fmt(s["loadgen_cpu_percent"]),
                _fmt(s["loadgen_cpu_us_per_delivery"]),
            )  # fmt: skip
        console.print(rt)
        console.print(
            f"highest sustained: {_fmt(ramp['max_sustained_rate'])} msgs/s = "
            f"{_fmt(ramp['max_sustained_deliveries_per_s'])} deliveries/s ({ramp['stop_reason']})"
        )
    if report["generator_bound"]:
        console.print(
            "[yellow]note: a load generator worker used over 85% of a core — the generator, "
            "not the server, may have been the bottleneck; add --workers or machines.[/yellow]"
        )
    if report["stop_reason"]:
        console.print(f"[yellow]stopped early: {report['stop_reason']}[/yellow]")
    for failure in report["slo"]["failures"]:
        console.print(f"[red]SLO missed:[/red] {failure}")


# -- HTML: inline SVG, no scripts, no network --------------------------------------------------


def _line_chart(title: str, xs: list[float], series: dict[str, list[float | None]]) -> str:
    w, h, pad = 640, 220, 40
    colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"]
    values = [v for s in series.values() for v in s if v is not None]
    if not xs or not values:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y1 = max(values) or 1.0

    def px(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def py(y: float) -> float:
        return h - pad + 10 - y / y1 * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
        f'<line x1="{pad}" y1="{h - pad + 10}" x2="{w - pad}" y2="{h - pad + 10}" stroke="#888"/>',
        f'<line x1="{pad}" y1="10" x2="{pad}" y2="{h - pad + 10}" stroke="#888"/>',
        f'<text x="{pad}" y="{h - 5}" font-size="11">{x0:g}s</text>',
        f'<text x="{w - pad}" y="{h - 5}" font-size="11" text-anchor="end">{x1:g}s</text>',
        f'<text x="{pad - 4}" y="16" font-size="11" text-anchor="end">{y1:,.0f}</text>',
    ]
    for i, (name, ys) in enumerate(series.items()):
        pts = " ".join(
            f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=False) if y is not None
        )
        color = colors[i % len(colors)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        parts.append(
            f'<text x="{w - pad + 4}" y="{20 + 14 * i}" font-size="11" fill="{color}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return f"<h3>{html.escape(title)}</h3>" + "".join(parts)


def _bar_chart(title: str, buckets: list[list[float]]) -> str:
    w, h, pad = 640, 200, 40
    if not buckets:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    top = max(c for _, c in buckets) or 1
    bw = (w - 2 * pad) / len(buckets)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">']
    for i, (edge, count) in enumerate(buckets):
        bh = count / top * (h - 2 * pad)
        parts.append(
            f'<rect x="{pad + i * bw:.1f}" y="{h - pad - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
            f'height="{bh:.1f}" fill="#2563eb"><title>≤ {edge:g} ms: {count:,}</title></rect>'
        )
    parts.append(f'<text x="{pad}" y="{h - 20}" font-size="11">{buckets[0][0]:g} ms</text>')
    parts.append(
        f'<text x="{w - pad}" y="{h - 20}" font-size="11" text-anchor="end">'
        f"{buckets[-1][0]:g} ms</text>"
    )
    parts.append(f'<text x="{pad}" y="14" font-size="11">max bucket {top:,}</text></svg>')
    return f"<h3>{html.escape(title)}</h3>" + "".join(parts)


def to_html(report: dict[str, Any]) -> str:
    """A self-contained page: summary table and inline SVG charts; opens offline."""
    samples = report.get("samples", [])
    xs = [float(s["t"]) for s in samples]
    lat = report["latency_ms"]
    summary_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in [
            ("url", report["url"]), ("mode", report["mode"]), ("transport", report["transport"]),
            ("clients / connected", f"{report['clients']} / {report['connected']}"),
            ("published", report["published"]), ("expected", report["expected"]),
            ("received", report["received"]), ("lost", report["lost"]),
            ("duplicates", report["duplicates"]), ("out of order", report["out_of_order"]),
            ("deliveries/s", report["deliveries_per_s"]),
            ("latency p50 / p99 / max ms",
             f"{_fmt(lat['p50'])} / {_fmt(lat['p99'])} / {_fmt(lat['max'])}"),
            ("generator CPU %", report["loadgen_cpu_percent"]),
            ("SLO", "passed" if report["slo"]["passed"] else "; ".join(report["slo"]["failures"])),
        ]
    )  # fmt: skip
    charts = [
        _line_chart(
            "Latency over time (ms)",
            xs,
            {"p50": [s["p50_ms"] for s in samples], "p99": [s["p99_ms"] for s in samples]},
        ),
        _line_chart(
            "Deliveries per second", xs, {"deliveries/s": [s["deliveries_per_s"] for s in samples]}
        ),
        _line_chart("Connected clients", xs, {"connected": [s["connected"] for s in samples]}),
        _bar_chart("Latency histogram", report.get("latency_histogram_ms", [])),
        _bar_chart("Connect time histogram", report.get("connect_histogram_ms", [])),
    ]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#111}"
        "table{border-collapse:collapse}th,td{padding:2px 10px;border-bottom:1px solid #ddd;"
        "text-align:left}td{text-align:right}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>relay loadtest {html.escape(report['run_id'])}</title><style>{style}</style>"
        f"</head><body><h1>relay loadtest</h1><table>{summary_rows}</table>"
        + "".join(charts)
        + "</body></html>"
    )
