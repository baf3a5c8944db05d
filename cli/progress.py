"""What ``relay loadtest`` shows while it runs, on stderr.

On a terminal: a progress bar with the elapsed and remaining time, above a live table (as k6
and artillery users expect). Elsewhere (CI logs, a pipe): one plain line every few seconds and
at each change of stage, instead of silence until the end. Both read the orchestrator's
:class:`loadtest.workers.Live` and take their console and clock from the caller, so tests
render them into a ``StringIO`` at chosen times.

The remaining time is an upper bound: the publishing left in this run (every ramp step still
possible) plus the longest each drain may last; a drain ends as soon as everything arrived,
and a ramp when a step breaks its SLO.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from relay.loadtest import fmt
from relay.loadtest.scenario import Scenario

PLAIN_EVERY = 5.0  # seconds between plain lines (and one at each change of stage)


@dataclass(frozen=True)
class Position:
    """Where the run is: its stage, the ramp step, the share of publishing done, the time."""

    stage: str
    step: int
    steps: int
    done: float  # 0..1 of all the publishing planned
    elapsed: float
    remaining: float  # at most


class Clock:
    """Turns the orchestrator's stage names into a :class:`Position`, timed by ``get_time``."""

    def __init__(self, scn: Scenario, get_time: Callable[[], float] = time.monotonic) -> None:
        self.steps = scn.ramp_steps if scn.ramp else 1
        self.duration = scn.duration
        self.drain = scn.drain
        self.get_time = get_time
        self.started = get_time()
        self.stage = ""
        self.since = self.started
        self.step = 0  # publishing phases begun

    def observe(self, stage: str) -> bool:
        """Note the stage now; True when it changed."""
        if stage == self.stage:
            return False
        now = self.get_time()
        if stage.startswith("publishing"):
            self.step += 1
        self.stage, self.since = stage, now
        return True

    def position(self) -> Position:
        now = self.get_time()
        in_stage = now - self.since
        publishing = self.stage.startswith("publishing")
        draining = self.stage == "draining"
        # phases wholly done, and how far into the current one publishing is
        finished = max(0, self.step - 1) if publishing or draining else self.step
        current = min(in_stage, self.duration) if publishing else (self.duration if draining else 0)
        if self.stage == "closing":
            finished, current = self.steps, 0.0
        planned = self.steps * self.duration
        done = min(1.0, (finished * self.duration + current) / planned) if planned else 0.0
        left_steps = self.steps - finished - (1 if publishing or draining else 0)
        remaining = left_steps * (self.duration + self.drain)
        if publishing:
            remaining += self.duration - current + self.drain
        elif draining:
            remaining += max(0.0, self.drain - in_stage)
        elif self.stage == "closing":
            remaining = 0.0
        return Position(
            stage=self.stage,
            step=self.step,
            steps=self.steps,
            done=done,
            elapsed=now - self.started,
            remaining=max(0.0, remaining),
        )


def _figures(live: Any) -> list[tuple[str, str]]:
    """The live numbers: (label, value); in flight = expected deliveries not yet received.
    Before publishing starts, only the connections."""
    c = live.counts or {}
    in_flight = max(0, c.get("expected", 0) - c.get("unique", 0))
    connected = [("connected", f"{fmt.count(live.connected)}/{fmt.count(live.clients)}")]
    if live.connect_errors:
        connected.append(("connect errors", fmt.count(live.connect_errors)))
    if not live.phase_rate:
        return connected
    figures = [
        *connected,
        ("rate msgs/s", fmt.rate(live.phase_rate)),
        ("published", fmt.count(c.get("published", 0))),
        ("deliveries/s", fmt.rate(live.deliveries_per_s)),
        ("p99 ms", fmt.ms(live.p99_ms)),
        ("in flight", fmt.count(in_flight)),
        ("gen CPU %", fmt.pct(live.cpu_percent)),
    ]
    if c.get("rejected"):
        figures.append(("refused", fmt.count(c["rejected"])))
    return figures


def _where(pos: Position) -> str:
    stage = pos.stage or "starting"
    if pos.steps > 1 and pos.step:
        stage += f" (step {pos.step} of at most {pos.steps})"
    return stage


def plain_line(pos: Position, live: Any) -> str:
    """``[0:12] publishing 52% · 0:10 left at most · connected 100/100 · ...``"""
    head = (
        f"[{fmt.clock(pos.elapsed)}] {_where(pos)} {pos.done:.0%} · "
        f"{fmt.clock(pos.remaining)} left at most"
    )
    return " · ".join([head, *(f"{name} {value}" for name, value in _figures(live))])


def live_view(pos: Position, live: Any, width: int = 40) -> RenderableType:
    """The terminal view: a progress line, then a one-row table of the live figures."""
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        Text(_where(pos), style="bold"),
        ProgressBar(total=1.0, completed=pos.done, width=width),
        Text(f"{pos.done:>4.0%}"),
        Text(f"elapsed {fmt.clock(pos.elapsed)}", style="cyan"),
        Text(f"left ≤ {fmt.clock(pos.remaining)}", style="cyan"),
    )
    figures = _figures(live)
    table = Table(title="relay loadtest (Ctrl-C stops)", title_justify="left")
    for name, _ in figures:
        table.add_column(name, justify="right")
    table.add_row(*(value for _, value in figures))
    return Group(bar, table)


class View:
    """The orchestrator's ``on_update``: a rich live view, plain lines, or nothing.

    ``live`` is a ``rich.live.Live`` (terminal); without one, plain lines go to ``console``
    every :data:`PLAIN_EVERY` seconds and at each change of stage.
    """

    def __init__(
        self,
        clock: Clock,
        console: Console,
        live: Any | None = None,
        every: float = PLAIN_EVERY,
    ) -> None:
        self.clock = clock
        self.console = console
        self.live = live
        self.every = every
        self.last_line = float("-inf")

    def update(self, state: Any) -> None:
        changed = self.clock.observe(state.stage)
        pos = self.clock.position()
        if self.live is not None:
            self.live.update(live_view(pos, state))
            return
        now = self.clock.get_time()
        if changed or now - self.last_line >= self.every:
            self.last_line = now
            self.console.print(
                plain_line(pos, state), markup=False, highlight=False, soft_wrap=True
            )


__all__ = ["Clock", "Position", "View", "live_view", "plain_line"]
