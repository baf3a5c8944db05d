"""``relay loadtest``: spawn a client swarm, count every delivery, report, judge SLOs.

Options come from the flags typed, then a ``--scenario`` file, then ``RELAY_URL`` /
``RELAY_TOKEN``, then the defaults of :class:`loadtest.scenario.Scenario` (which ``--help``
shows): which of these a value came from is asked of Typer, not guessed from its value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.live import Live as RichLive

from relay.cli.console import fail
from relay.cli.help import Command
from relay.cli.options import from_command_line, from_environment
from relay.loadtest.scenario import Scenario

app = typer.Typer()

#: the defaults ``--help`` shows: the Scenario's own
_D = Scenario()
SECONDS = "SECONDS"


def _opt(metavar: str, help: str, **extra: Any) -> Any:
    return typer.Option(metavar=metavar, help=help, **extra)


@app.command(cls=Command)
def loadtest(
    ctx: typer.Context,
    url: Annotated[
        list[str] | None,
        _opt(
            "URL",
            "Server to load: http(s)://host:port, ws(s)://host:port or host:port. Repeat it for "
            "the nodes of a cluster: clients and publishers go to them round-robin.",
            envvar="RELAY_URL",
            show_default=_D.url,
        ),
    ] = None,
    clients: Annotated[int, _opt("N", "Connections to open.")] = _D.clients,
    rooms: Annotated[int, _opt("N", "Rooms; client i joins room i % N.")] = _D.rooms,
    mode: Annotated[
        str,
        _opt(
            "broadcast|unicast|mixed",
            "Publish to the publisher's room, direct to another client, or half each.",
        ),
    ] = _D.mode,
    rate: Annotated[float, _opt("MSGS", "Messages published per second, in all.")] = _D.rate,
    duration: Annotated[float, _opt(SECONDS, "Seconds of publishing.")] = _D.duration,
    publishers: Annotated[
        int | None, _opt("N", "Clients that publish. Without it: every client.")
    ] = None,
    payload: Annotated[int, _opt("BYTES", "Padding bytes per message.")] = _D.payload,
    connect_rate: Annotated[
        float | None,
        _opt("PER_S", "New connections per second. Without it: as fast as they are accepted."),
    ] = None,
    transport: Annotated[str, _opt("websocket|polling", "Transport.")] = _D.transport,
    workers: Annotated[int, _opt("N", "Worker processes; 0: one per CPU core.")] = _D.workers,
    drain: Annotated[
        float, _opt(SECONDS, "Longest wait for deliveries after the last publish.")
    ] = _D.drain,
    ramp: Annotated[
        bool, typer.Option("--ramp/--no-ramp", help="Step the rate up until an SLO breaks.")
    ] = _D.ramp,
    ramp_factor: Annotated[
        float, _opt("FACTOR", "Rate multiplier per ramp step.")
    ] = _D.ramp_factor,
    ramp_steps: Annotated[int, _opt("N", "Most ramp steps.")] = _D.ramp_steps,
    max_p99_ms: Annotated[
        float | None, _opt("MS", "SLO: highest p99 latency. A ramp's step: 250 without it.")
    ] = None,
    max_loss: Annotated[
        float | None, _opt("RATIO", "SLO: highest loss ratio, 0..1. A ramp's step: 0 without it.")
    ] = None,
    min_rate: Annotated[float | None, _opt("PER_S", "SLO: lowest deliveries/s.")] = None,
    max_time: Annotated[float, _opt(SECONDS, "Hard cap on the whole run.")] = _D.max_time,
    token: Annotated[
        str | None, _opt("JWT", "JWT sent as auth.token.", envvar="RELAY_TOKEN")
    ] = None,
    scenario: Annotated[
        Path | None, _opt("FILE", "TOML file with these options (flags override it).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
    report_file: Annotated[
        Path | None, typer.Option("--report", metavar="FILE", help="Write the JSON report.")
    ] = None,
    html_file: Annotated[
        Path | None, typer.Option("--html", metavar="FILE", help="Write an offline HTML report.")
    ] = None,
) -> None:
    """Open many clients, publish at a fixed rate (or ramp), and count every delivery exactly."""
    from relay.cli.progress import Clock, View
    from relay.loadtest.page import to_html
    from relay.loadtest.report import build, refusal_hint, render, verdict_lines
    from relay.loadtest.scenario import ScenarioError
    from relay.loadtest.workers import Orchestrator, RunError

    values: dict[str, Any] = dict(
        url=url, clients=clients, rooms=rooms, mode=mode, rate=rate, duration=duration,
        publishers=publishers, payload=payload, connect_rate=connect_rate, transport=transport,
        workers=workers, drain=drain, ramp=ramp, ramp_factor=ramp_factor, ramp_steps=ramp_steps,
        max_p99_ms=max_p99_ms, max_loss=max_loss, min_rate=min_rate, max_time=max_time,
        token=token,
    )  # fmt: skip
    typed = {name: v for name, v in values.items() if from_command_line(ctx, name)}
    from_env = {name: values[name] for name in ("url", "token") if from_environment(ctx, name)}
    for given in (typed, from_env):  # --url repeated, or RELAY_URL's space-separated nodes
        if given.get("url") is not None:
            given["url"] = tuple(given["url"])
    try:
        scn = Scenario.load(scenario, typed, fallbacks=from_env)
    except ScenarioError as exc:
        fail(str(exc), code=2)

    err = Console(stderr=True)
    clock = Clock(scn)
    quiet = bool(os.environ.get("RELAY_LOADTEST_QUIET"))
    if quiet:
        raw = _execute(Orchestrator(scn), RunError, refusal_hint)
    elif err.is_terminal:
        with RichLive(console=err, refresh_per_second=4, transient=True) as screen:
            view = View(clock, err, live=screen)
            raw = _execute(Orchestrator(scn, on_update=view.update), RunError, refusal_hint)
    else:
        view = View(clock, err)
        raw = _execute(Orchestrator(scn, on_update=view.update), RunError, refusal_hint)
    report = build(scn, raw)
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    if report_file is not None:
        report_file.write_text(text + "\n")
    if html_file is not None:
        html_file.write_text(to_html(report))
    if json_out:
        typer.echo(text)
        for note in report["server_refusals"]:
            err.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)
        for line in verdict_lines(report):
            err.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        render(report, Console())
    if not report["slo"]["passed"]:
        raise typer.Exit(1)
    if report["interrupted"]:
        raise typer.Exit(130)


def _execute(orch: Any, run_error: type[Exception], hint_of: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = orch.execute()
    except run_error as exc:
        hint = hint_of(str(exc))
        fail(f"{exc} ({hint})" if hint else str(exc))
    return result
