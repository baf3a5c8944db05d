#!/usr/bin/env python3
"""Issue 11's attacks against a live ``relay serve``, one fresh relay each, and what each cost.

For every attack (``benchmarks/abuse_attacks.py``) it starts ``relay serve`` from a checkout on
a free loopback port, with the default limits (an attack's setup traffic may raise one: see the
``settings`` line under the table), starts a monitor process next to it, runs the attack, and
prints one row: the relay's CPU seconds during the attack (``/proc/<pid>/stat``), its peak RSS
growth (``VmRSS`` sampled every 20 ms, and ``VmHWM``), a bystander's round trips (a normal
client that publishes to its own room every 20 ms and times its message coming back: p50, p99,
max, and how many never came back), the slowest ``/healthz`` answer (a probe every 250 ms; the
issue's stall shows here), and what the attacker got.

    python benchmarks/abuse.py                          # every attack on this checkout (2-4 min)
    python benchmarks/abuse.py --relay-dir /work/old    # the same against another checkout
    python benchmarks/abuse.py --only fragments,ghosts --scale 0.1
    python benchmarks/abuse.py --json abuse.json

The monitor is a process of its own, so an attack that keeps this one busy (reading a flood's
deliveries) does not show up as the bystander's latency. Every attack is bounded in count and
in time and stops by itself; every child process and socket is closed on the way out, Ctrl-C
included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import abuse_attacks as aa  # (this directory is not a package: a sibling module)

ROOT = Path(__file__).resolve().parent.parent
RUNNING = re.compile(r"running on https?://[^:]+:(\d+)")
ATTACK_BUDGET = 90.0  # seconds for one attack's setup + attack, past which it is cut short
BYSTANDER_ROOM = "bystander"
#: children still running, killed at exit whatever happens
LIVE: set[asyncio.subprocess.Process] = set()


# -- the relay under attack ------------------------------------------------------------------


class Relay:
    """``relay serve`` from ``relay_dir`` (its own code, via PYTHONPATH) on a free port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, lines: list[str]) -> None:
        self.proc, self.port, self.lines = proc, port, lines
        self.drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, relay_dir: Path, env: dict[str, str]) -> Relay:
        full = {**os.environ, "PORT": "0", "RELAY_HOST": "127.0.0.1", **env}
        full["PYTHONPATH"] = str(relay_dir)  # that checkout's relay, not the installed one
        full.pop("RELAY_URL", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve",
            cwd=relay_dir, env=full, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,  # see _die_with_parent
        )  # fmt: skip
        LIVE.add(proc)
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(30):
                while line := (await proc.stdout.readline()).decode(errors="replace"):
                    lines.append(line)
                    if m := RUNNING.search(line):
                        relay = cls(proc, int(m.group(1)), lines)
                        relay.drain = asyncio.create_task(relay._drain())
                        return relay
        except TimeoutError:
            pass
        await stop(proc)
        raise RuntimeError(
            f"relay serve did not start (exit {proc.returncode}):\n" + "".join(lines[-20:])
        )

    async def _drain(self) -> None:
        """Keep reading its output (a full pipe would block it); keep the last 50 lines."""
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace"))
            del self.lines[:-50]

    async def stop(self) -> None:
        await stop(self.proc)
        if self.drain is not None:
            self.drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.drain


async def stop(proc: asyncio.subprocess.Process, grace: float = 3.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    LIVE.discard(proc)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the harness dies, however it dies.

    Children also get a session of their own, so Ctrl-C reaches only the harness, which then
    stops them in order (a relay interrupted mid-attack would print its own traceback).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def kill_leftovers() -> None:
    for proc in list(LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


# -- the monitor: bystander, /healthz probe, /proc sampler (a process of its own) ------------


class Monitor:
    """Measures the relay from ``begin()`` to ``end()``; the numbers come back as a dict."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.begun = False

    @classmethod
    async def start(cls, relay: Relay, token: str | None) -> Monitor:
        args = [sys.executable, __file__, "--monitor", str(relay.port), str(relay.proc.pid)]
        proc = await asyncio.create_subprocess_exec(
            *args, *(["--token", token] if token else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        LIVE.add(proc)
        monitor = cls(proc)
        ready = await monitor._line(30)
        if not ready.get("ready"):
            await stop(proc)
            raise RuntimeError(f"monitor did not start: {ready}")
        return monitor

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        return dict(json.loads(line)) if line.strip() else {"error": "monitor exited"}

    async def _say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        await self.proc.stdin.drain()

    async def begin(self) -> None:
        await self._say("begin")
        await self._line(10)  # it has read its baselines
        self.begun = True

    async def end(self) -> dict[str, Any]:
        await self._say("end")
        result = await self._line(30)
        await stop(self.proc)
        return result


def monitor_main(port: int, pid: int, token: str | None) -> None:
    uvloop.run(_monitor(port, pid, token))


async def _monitor(port: int, pid: int, token: str | None) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    conn = await aa.open_ws(port, aa.MONITOR_IP)
    if not await conn.sio_connect({"token": token} if token else None):
        say({"error": f"bystander refused: {conn.status} {conn.refusal[:100]!r}"})
        return
    if aa.ack_code(await conn.emit("join", {"room": BYSTANDER_ROOM})) != "ok":
        say({"error": "bystander could not join"})
        return
    sent: dict[int, float] = {}
    rtts: list[float] = []
    worst = [0.0, 0.0]  # the slowest round trip, and when it was sent
    ack_errors: list[str] = []

    def on_event(packet: bytes) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
            n = orjson.loads(packet[2:])[1]["data"]["n"]
            t = sent.pop(n, None)
            if t is not None:
                rtts.append((time.monotonic() - t) * 1000)
                if rtts[-1] > worst[0]:
                    worst[:] = [rtts[-1], t]

    def on_ack(_: int, payload: bytes) -> None:
        code = aa.ack_code(payload)
        if code != "ok":
            ack_errors.append(code)

    conn.on_event, conn.on_ack = on_event, on_ack
    say({"ready": True})
    await stdin.readline()  # begin
    t_begin = time.monotonic()
    cpu0, mem0 = aa.proc_cpu_s(pid), aa.proc_mem_kb(pid)
    peak = mem0["VmRSS"]
    running = True
    probes: list[float] = []
    slowest = [0.0, 0.0]  # the slowest probe, and when it was sent
    probe_failed: list[str] = []
    probing: list[float] = []  # when the probe in flight started

    async def publisher() -> None:
        i, due = 0, time.monotonic()
        while running and conn.is_open:
            i += 1
            sent[i] = time.monotonic()
            conn.write(aa.event("publish", {"room": BYSTANDER_ROOM, "data": {"n": i}}, i))
            due = max(due + 0.02, time.monotonic())
            await asyncio.sleep(due - time.monotonic())

    async def prober() -> None:
        while running:
            t0 = time.monotonic()
            probing[:] = [t0]
            try:
                status, _ = await aa.http_get(port, "/healthz", aa.MONITOR_IP, timeout=60)
                if status != 200:
                    probe_failed.append(str(status))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                probe_failed.append(type(exc).__name__)
            probes.append((time.monotonic() - t0) * 1000)
            if probes[-1] > slowest[0]:
                slowest[:] = [probes[-1], t0]
            probing.clear()
            await asyncio.sleep(max(0.0, t0 + 0.25 - time.monotonic()))

    async def sampler() -> None:
        nonlocal peak
        while running:
            with contextlib.suppress(OSError, KeyError):
                peak = max(peak, aa.proc_mem_kb(pid)["VmRSS"])
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(f()) for f in (publisher, prober, sampler)]
    say({"begun": True})
    await stdin.readline()  # end
    running = False
    cpu = aa.proc_cpu_s(pid) - cpu0
    mem = aa.proc_mem_kb(pid)
    if mem["VmHWM"] > mem0["VmHWM"]:
        peak = max(peak, mem["VmHWM"])  # a peak between two samples
    window = len(sent) + len(rtts)
    # late messages still count; lost is what never came back
    await aa.poll_until(lambda: not (sent or probing) or not conn.is_open, 10)
    if probing:
        probes.append((time.monotonic() - probing[0]) * 1000)
        probe_failed.append("no answer")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.abort()
    rtts.sort()

    def pct(q: float) -> float | None:
        return round(rtts[min(len(rtts) - 1, int(q * len(rtts)))], 1) if rtts else None

    say({
        "cpu_s": round(cpu, 2),
        "rss_start_mb": round(mem0["VmRSS"] / 1024, 1),
        "rss_peak_mb": round(peak / 1024, 1),
        "rss_growth_mb": round((peak - mem0["VmRSS"]) / 1024, 1),
        "rss_end_mb": round(mem["VmRSS"] / 1024, 1),
        "bystander": {
            "sent": window, "received": len(rtts), "lost": len(sent),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "max_sent_at_s": round(worst[1] - t_begin, 2) if rtts else None,
            "errors": aa.counts(ack_errors) if ack_errors else None,
            "disconnected": not conn.is_open,
        },
        "healthz": {
            "probes": len(probes),
            "worst_ms": round(max(probes), 1) if probes else None,
            "worst_sent_at_s": round(slowest[1] - t_begin, 2) if slowest[0] else None,
            "over_1s": sum(p > 1000 for p in probes),
            "failed": aa.counts(probe_failed) if probe_failed else None,
        },
    })  # fmt: skip


# -- one attack, one row ---------------------------------------------------------------------


async def run_attack(attack: aa.Attack, a: argparse.Namespace) -> dict[str, Any]:
    env = dict(attack.env)  # (log level info: the startup line says the port)
    row: dict[str, Any] = {"attack": attack.name, "env": attack.env}
    relay = await Relay.start(a.relay_dir, env)
    monitor: Monitor | None = None
    ctx: aa.Ctx | None = None
    t0 = time.monotonic()
    try:
        token = None
        secret = env.get("RELAY_SECRET")
        if secret:
            import jwt  # (PyJWT, a relay dependency)

            claims = {"sub": "bystander", "rooms": [BYSTANDER_ROOM]}
            token = jwt.encode({**claims, "exp": int(time.time()) + 3600}, secret, "HS256")
        monitor = await Monitor.start(relay, token)
        ctx = aa.Ctx(
            relay.port, relay.proc.pid, a.scale, monitor.begin,
            api_key=env.get("RELAY_API_KEY"), secret=secret,
        )  # fmt: skip
        try:
            row["outcome"] = await asyncio.wait_for(attack.run(ctx), ATTACK_BUDGET)
        except TimeoutError:
            row["outcome"] = f"harness: cut short after {ATTACK_BUDGET:.0f}s"
        except Exception as exc:  # (one attack's failure must not cost the other rows)
            row["outcome"] = f"harness error: {type(exc).__name__}: {exc}"[:300]
        if monitor.begun:
            row.update(await monitor.end())
        if relay.proc.returncode is not None:
            row["outcome"] += f"; RELAY EXITED {relay.proc.returncode}"
    finally:
        if ctx is not None:
            ctx.close_all()
        if monitor is not None:
            await stop(monitor.proc)
        await relay.stop()
    row["elapsed_s"] = round(time.monotonic() - t0, 1)
    row["relay_log_tail"] = [line.rstrip() for line in relay.lines[-5:]]
    return row


def fmt(value: Any, spec: str = "{:,.0f}") -> str:
    return "—" if value is None else spec.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table; the outcome, often long, last and unpadded."""
    head = ["attack", "CPU s", "RSS peak MB (+growth)", "bystander p50/p99/max ms", "lost",
            "healthz worst ms", "outcome"]  # fmt: skip
    lines = [head]
    for r in rows:
        b, h = r.get("bystander", {}), r.get("healthz", {})
        rss = "—"
        if r.get("rss_peak_mb") is not None:
            rss = f"{r['rss_peak_mb']:,.0f} (+{r['rss_growth_mb']:,.0f})"
        worst = fmt(h.get("worst_ms"))
        if h.get("over_1s"):
            worst += f" ({h['over_1s']} over 1 s)"
        if h.get("failed"):
            worst += f" ({h['failed']})"
        lines.append([
            r["attack"], fmt(r.get("cpu_s"), "{:.2f}"), rss,
            "/".join(fmt(b.get(k), "{:,.1f}") for k in ("p50_ms", "p99_ms", "max_ms")),
            fmt(b.get("lost")) + (" (dropped)" if b.get("disconnected") else ""),
            worst, r.get("outcome", ""),
        ])  # fmt: skip
    widths = [max(len(x[i]) for x in lines) for i in range(len(head) - 1)]
    out = []
    for i, cells in enumerate(lines):
        fixed = " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False))
        out.append(f"| {fixed} | {cells[-1]} |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(out)


def describe(relay_dir: Path) -> str:
    """The checkout's commit, and whether its tree has changes on top."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=relay_dir, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = " (+ changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{relay_dir} at {git('rev-parse', '--short', 'HEAD')}{dirty}"


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def main(a: argparse.Namespace, names: list[str]) -> int:
    print(
        f"relay from {describe(a.relay_dir)}, scale {a.scale:g}; {os.cpu_count()} cores,"
        f" load average {load_average()}",
        flush=True,
    )
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        try:
            row = await run_attack(aa.ATTACKS[name], a)
        except (RuntimeError, OSError, TimeoutError) as exc:  # the relay or monitor did not start
            row = {"attack": name, "env": aa.ATTACKS[name].env, "elapsed_s": 0.0,
                   "outcome": f"not run: {exc}"[:300]}  # fmt: skip
        print(f"   {row.get('outcome')}  ({row['elapsed_s']}s)", flush=True)
        rows.append(row)
    print()
    print(table(rows))
    raised = sorted({f"{k}={v}" for r in rows for k, v in r["env"].items()})
    if raised:
        print("\nsettings (setup traffic; defaults otherwise): " + ", ".join(
            f"{r['attack']}: {' '.join(f'{k}={v}' for k, v in r['env'].items())}"
            for r in rows if r["env"]
        ))  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps({"relay": describe(a.relay_dir), "rows": rows}, indent=1))
    return 0


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    attacks = "\n".join(
        f"  {name:<18} {(a.run.__doc__ or '').strip().splitlines()[0]}"
        for name, a in aa.ATTACKS.items()
    )
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog="attacks (sizes at --scale 1):\n" + attacks,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--relay-dir", type=Path, default=ROOT, help="checkout to run relay from")
    p.add_argument("--only", default="", help="comma list of: " + ", ".join(aa.ATTACKS))
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every attack's sizes")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--monitor", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.relay_dir = a.relay_dir.resolve()
    names = [s.strip() for s in a.only.split(",") if s.strip()] or list(aa.ATTACKS)
    for name in names:
        if name not in aa.ATTACKS:
            p.error(f"unknown attack {name!r}; choose from {', '.join(aa.ATTACKS)}")
    if a.scale <= 0:
        p.error("--scale must be above 0")
    if not (a.relay_dir / "cli" / "main.py").is_file():
        p.error(f"{a.relay_dir} is not a relay checkout (no cli/main.py)")
    return a, names


if __name__ == "__main__":
    args, chosen = parse_args()
    if args.monitor:
        monitor_main(args.monitor[0], args.monitor[1], args.token)
        raise SystemExit(0)
    try:
        raise SystemExit(uvloop.run(main(args, chosen)))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        kill_leftovers()
