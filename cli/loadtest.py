"""``relay loadtest``: spawn a client swarm, count every delivery, report, judge SLOs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.live import Live as RichLive
from rich.table import Table

from cli.console import fail

app = typer.Typer()


def _live_table(live: Any) -> Table:
    t = Table(show_header=True, header_style="bold", title="relay loadtest (Ctrl-C stops)")
    for col in ("stage", "connected", "rate/s", "published", "deliveries/s", "p99 ms", "missing",
                "gen CPU %"):  # fmt: skip
        t.add_column(col, justify="right")
    c = live.counts
    missing = max(0, c.get("expected", 0) - c.get("unique", 0)) if c else 0
    t.add_row(
        live.stage,
        f"{live.connected:,}/{live.clients:,}",
        f"{live.phase_rate:g}",
        f"{c.get('published', 0):,}",
        f"{live.deliveries_per_s:,.0f}",
        "-" if live.p99_ms is None else f"{live.p99_ms:,.1f}",
        f"{missing:,}",
        f"{live.cpu_percent:.0f}",
    )
    return t


@app.command()
def loadtest(
    url: Annotated[str | None, typer.Option(help="Server to load (env: RELAY_URL).")] = None,
    clients: Annotated[int | None, typer.Option(help="Connections to open (100).")] = None,
    rooms: Annotated[
        int | None, typer.Option(help="Rooms; client i joins room i % R (10).")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="broadcast | unicast | mixed (broadcast).")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Messages published per second (100).")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds of publishing (10).")] = None,
    publishers: Annotated[int | None, typer.Option(help="Clients that publish (all).")] = None,
    payload: Annotated[int | None, typer.Option(help="Padding bytes per message (64).")] = None,
    connect_rate: Annotated[
        float | None, typer.Option(help="New connections per second (as fast as possible).")
    ] = None,
    transport: Annotated[str | None, typer.Option(help="websocket | polling (websocket).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (the machine's cores).")
    ] = None,
    drain: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for deliveries after the last publish (5)."),
    ] = None,
    ramp: Annotated[
        bool | None, typer.Option("--ramp/--no-ramp", help="Step the rate up until an SLO breaks.")
    ] = None,
    ramp_factor: Annotated[
        float | None, typer.Option(help="Rate multiplier per ramp step (1.5).")
    ] = None,
    ramp_steps: Annotated[int | None, typer.Option(help="Most ramp steps (12).")] = None,
    max_p99_ms: Annotated[float | None, typer.Option(help="SLO: highest p99 latency, ms.")] = None,
    max_loss: Annotated[float | None, typer.Option(help="SLO: highest loss ratio (0..1).")] = None,
    min_rate: Annotated[float | None, typer.Option(help="SLO: lowest deliveries/s.")] = None,
    max_time: Annotated[
        float | None, typer.Option(help="Hard cap on the whole run, s (900).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="JWT sent as auth.token (env: RELAY_TOKEN).")
    ] = None,
    scenario: Annotated[
        Path | None, typer.Option(help="TOML file with these options (flags override it).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
    report_file: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON report.")
    ] = None,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Write an offline HTML report.")
    ] = None,
) -> None:
    """Open many clients, publish at a fixed rate (or ramp), and count every delivery exactly."""
    from loadtest.report import build, render, to_html
    from loadtest.scenario import Scenario, ScenarioError
    from loadtest.workers import Orchestrator, RunError

    overrides = dict(
        url=url or (None if scenario else os.environ.get("RELAY_URL")),
        clients=clients, rooms=rooms, mode=mode, rate=rate, duration=duration,
        publishers=publishers, payload=payload, connect_rate=connect_rate, transport=transport,
        workers=workers, drain=drain, ramp=ramp, ramp_factor=ramp_factor, ramp_steps=ramp_steps,
        max_p99_ms=max_p99_ms, max_loss=max_loss, min_rate=min_rate, max_time=max_time,
        token=token or os.environ.get("RELAY_TOKEN"),
    )  # fmt: skip
    try:
        scn = Scenario.load(scenario, overrides)
        if scenario is not None and url is None and "url" not in _toml_keys(scenario):
            scn = scn.replace(url=os.environ.get("RELAY_URL", scn.url))
    except ScenarioError as exc:
        fail(str(exc), code=2)

    err = Console(stderr=True)
    show_live = err.is_terminal and not os.environ.get("RELAY_LOADTEST_QUIET")
    orch: Orchestrator
    if show_live:
        with RichLive(console=err, refresh_per_second=4, transient=True) as view:
            orch = Orchestrator(scn, on_update=lambda live: view.update(_live_table(live)))
            raw = _execute(orch, RunError)
    else:
        orch = Orchestrator(scn)
        raw = _execute(orch, RunError)
    report = build(scn, raw)
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    if report_file is not None:
        report_file.write_text(text + "\n")
    if html_file is not None:
        html_file.write_text(to_html(report))
    if json_out:
        typer.echo(text)
        for failure in report["slo"]["failures"]:
            err.print(f"[red]SLO missed:[/red] {failure}")
    else:
        render(report, Console())
    if not report["slo"]["passed"]:
        raise typer.Exit(1)
    if report["interrupted"]:
        raise typer.Exit(130)


def _execute(orch: Any, run_error: type[Exception]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = orch.execute()
    except run_error as exc:
        fail(str(exc))
    return result


def _toml_keys(path: Path) -> set[str]:
    import tomllib

    raw = tomllib.loads(path.read_text())
    return set(raw.get("loadtest", raw))
