"""The run's report as one offline HTML page: the summary, the ramp, and SVG charts.

No scripts and no network: the charts are inline SVG. Each one is drawn in a fixed coordinate
system (``viewBox``) and scaled to the page's width by CSS, so it fits any window; its margins
hold the tick labels and the axis titles, and its legend sits above the plot, inside the
picture, so nothing is clipped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from relay.loadtest import fmt
from relay.loadtest.report import (
    NODE_COLUMNS,
    RAMP_COLUMNS,
    highest_sustained,
    node_rows,
    ramp_rows,
    summary_rows,
    verdict_lines,
)

W, H = 720, 300  # the charts' coordinate system
LEFT, RIGHT, TOP, BOTTOM = 76, 20, 40, 56  # margins: y labels and title, legend, x labels and title
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _svg(title: str, body: list[str]) -> str:
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{html.escape(title)}">' + "".join(body) + "</svg></figure>"
    )


def _axes(x_title: str, y_title: str, y_top: float, y_fmt: Any) -> list[str]:
    """The frame, three horizontal grid lines labelled 0, half and ``y_top``, and both titles."""
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    parts = [
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#888"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#888"/>',
    ]
    for share in (0.0, 0.5, 1.0):
        y = y0 - share * (y0 - y1)
        if share:
            parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>'
            f"{html.escape(y_fmt(share * y_top))}</text>"
        )
    parts.append(
        f'<text x="{(x0 + x1) / 2:.1f}" y="{H - 10}" text-anchor="middle" {FONT}>'
        f"{html.escape(x_title)}</text>"
    )
    parts.append(
        f'<text transform="translate(16 {(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f"{FONT}>{html.escape(y_title)}</text>"
    )
    return parts


def _legend(names: list[str]) -> list[str]:
    """Swatches and names in a row above the plot, left to right."""
    parts: list[str] = []
    x = LEFT
    for i, name in enumerate(names):
        color = COLORS[i % len(COLORS)]
        parts.append(f'<rect x="{x}" y="12" width="14" height="4" fill="{color}"/>')
        parts.append(f'<text x="{x + 20}" y="18" {FONT}>{html.escape(name)}</text>')
        x += 32 + 8 * len(name)
    return parts


def line_chart(
    title: str,
    xs: list[float],
    series: dict[str, list[float | None]],
    y_title: str,
    y_fmt: Any = fmt.count,
) -> str:
    """Lines over time (``xs`` in seconds), one per series, with a legend."""
    values = [v for ys in series.values() for v in ys if v is not None]
    if not xs or not values:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p>no data</p></figure>"
    lo, hi = min(xs), max(xs)
    span = hi - lo or 1.0
    top = max(values) or 1.0
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    body = _axes("seconds since the start", y_title, top, y_fmt)
    body.append(f'<text x="{x0}" y="{y0 + 18}" text-anchor="start" {FONT}>{fmt.seconds(lo)}</text>')
    body.append(f'<text x="{x1}" y="{y0 + 18}" text-anchor="end" {FONT}>{fmt.seconds(hi)}</text>')
    for i, ys in enumerate(series.values()):
        points = " ".join(
            f"{x0 + (x - lo) / span * (x1 - x0):.1f},{y0 - y / top * (y0 - y1):.1f}"
            for x, y in zip(xs, ys, strict=False)
            if y is not None
        )
        color = COLORS[i % len(COLORS)]
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
    body.extend(_legend(list(series)))
    return _svg(title, body)


def bar_chart(title: str, buckets: list[list[float]], x_title: str, y_title: str) -> str:
    """A histogram: ``[[upper bound, count], ...]`` as bars, the bounds at both ends."""
    if not buckets:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p>no data</p></figure>"
    top = max(c for _, c in buckets) or 1
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    width = (x1 - x0) / len(buckets)
    body = _axes(x_title, y_title, top, fmt.count)
    for i, (edge, n) in enumerate(buckets):
        h = n / top * (y0 - y1)
        body.append(
            f'<rect x="{x0 + i * width:.1f}" y="{y0 - h:.1f}" width="{max(width - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="{COLORS[0]}">'
            f"<title>up to {fmt.ms(edge)} ms: {fmt.count(n)}</title></rect>"
        )
    first, last = fmt.ms(buckets[0][0]), fmt.ms(buckets[-1][0])
    body.append(f'<text x="{x0}" y="{y0 + 18}" text-anchor="start" {FONT}>{first}</text>')
    body.append(f'<text x="{x1}" y="{y0 + 18}" text-anchor="end" {FONT}>{last}</text>')
    return _svg(title, body)


def _table(rows: Sequence[Sequence[str]], head: Sequence[str] | None = None) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    top = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>" if head else ""
    return f'<div class="wide"><table>{top}{cells}</table></div>'


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;padding:0 1em;"
    "color:#111}table{border-collapse:collapse;margin:1em 0}th,td{padding:3px 10px;"
    "border-bottom:1px solid #ddd;text-align:right}td:first-child{text-align:left}"
    "figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.3em}"
    "svg{display:block;width:100%;height:auto;max-width:960px}"
    ".passed{color:#15803d}.failed{color:#b91c1c}.note{color:#92400e}"
    ".wide{overflow-x:auto}"  # a table wider than a phone scrolls by itself, not the page
)


def to_html(report: dict[str, Any]) -> str:
    """A self-contained page: summary, verdict, ramp, and charts; opens offline."""
    samples = report.get("samples", [])
    xs = [float(s["t"]) for s in samples]
    verdict = "".join(
        f'<p class="{"passed" if report["slo"]["passed"] else "failed"}">{html.escape(line)}</p>'
        for line in verdict_lines(report)
    )
    notes = "".join(
        f'<p class="note">{html.escape(n)}</p>' for n in report.get("server_refusals", [])
    )
    if report.get("stop_reason"):
        notes += f'<p class="note">stopped early: {html.escape(report["stop_reason"])}</p>'
    ramp = report.get("ramp")
    ramp_html = ""
    if ramp:
        ramp_html = (
            "<h2>Ramp</h2>"
            + _table(ramp_rows(ramp), RAMP_COLUMNS)
            + f"<p><strong>{html.escape(highest_sustained(ramp))}</strong></p>"
        )
    charts = [
        line_chart(
            "Latency over time",
            xs,
            {"p50": [s["p50_ms"] for s in samples], "p99": [s["p99_ms"] for s in samples]},
            "milliseconds",
            fmt.ms,
        ),
        line_chart(
            "Deliveries per second",
            xs,
            {"deliveries/s": [s["deliveries_per_s"] for s in samples]},
            "deliveries per second",
        ),
        line_chart(
            "Connected clients", xs, {"connected": [s["connected"] for s in samples]}, "clients"
        ),
        bar_chart(
            "Latency histogram",
            report.get("latency_histogram_ms", []),
            "latency, milliseconds (log-spaced buckets)",
            "deliveries",
        ),
        bar_chart(
            "Connect time histogram",
            report.get("connect_histogram_ms", []),
            "connect time, milliseconds (log-spaced buckets)",
            "clients",
        ),
    ]
    nodes = node_rows(report)
    nodes_html = "<h2>Per node</h2>" + _table(nodes, NODE_COLUMNS) if nodes else ""
    summary: list[tuple[str, str]] = [
        ("url", ", ".join(report.get("urls") or [report["url"]])),
        ("mode / transport", f"{report['mode']} / {report['transport']}"),
        *summary_rows(report),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>relay loadtest {html.escape(report['run_id'])}</title><style>{STYLE}</style>"
        f"</head><body><h1>relay loadtest</h1>{verdict}{notes}<h2>Summary</h2>"
        + _table(summary)
        + nodes_html
        + ramp_html
        + "<h2>Charts</h2>"
        + "".join(charts)
        + "</body></html>"
    )


__all__ = ["bar_chart", "line_chart", "to_html"]
