#!/usr/bin/env python3
"""relay vs the tutorial's Node stack, on the peer kit's own load generator, in one sitting.

For each scenario it starts a fresh ``relay serve`` and runs the kit's ``loadgen.js`` against
it, then does the same with the Node peer (``server_node.js``), and prints a side-by-side table
with ratios (relay / node). Absolute numbers drift on shared machines: compare the ratios.

    python benchmarks/compare.py                        # every scenario, the issue's sizes (~6 min)
    python benchmarks/compare.py --only broadcast,unicast --duration 8      # quick (~2 min)
    python benchmarks/compare.py --only idle --idle-counts 2000,5000
    python benchmarks/compare.py --servers relay --relay-env RELAY_MAX_BUFFER=1MiB
    python benchmarks/compare.py --servers before,relay,node --before-dir /tmp/relay-before
    python benchmarks/compare.py --servers relay,pgo --python pgo=/tmp/venv/bin/python

The kit lives in ../shared/bench (``--kit``); its node_modules come from ``BENCH_NODE_MODULES``
or, failing that, an ``npm ci`` of the kit's lock file into a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
DEFAULT_KIT = (ROOT.parent / "shared" / "bench").resolve()
SCENARIOS = ("broadcast", "ramp", "unicast", "idle", "connect", "connect-own")
#: every benchmark client connects from 127.0.0.1, by the thousand, and a few publish into
#: rooms of 1,000 as fast as the scenario asks: relay's limits (per IP, connects per IP per
#: second, connections in total, and each connection's publishes, deliveries and joins) would
#: refuse most of it. (The inbound byte rate stays on: it refuses nothing, and its cost per read
#: is part of what is measured.)
NO_EDGE_LIMITS = {
    "RELAY_MAX_CONNECTIONS": "0",
    "RELAY_MAX_CONNECTIONS_PER_IP": "0",
    "RELAY_CONNECT_RATE": "0",
    "RELAY_PUBLISH_RATE": "0",
    "RELAY_DELIVERY_RATE": "0",
    "RELAY_JOIN_RATE": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    ready: re.Pattern[str],
    port: int,
    cwd: Path = ROOT,
) -> Server:
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = ready.search(line)
        if m:
            actual = int(m.group(1)) if m.groups() and m.group(1) else port

            def drain() -> None:
                assert proc.stdout is not None
                for rest in proc.stdout:
                    lines.append(rest)

            threading.Thread(target=drain, daemon=True).start()
            return Server(name, proc, f"http://127.0.0.1:{actual}", lines)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{name} did not start:\n" + "".join(lines))


def start_relay(
    extra_env: dict[str, str], cwd: Path = ROOT, name: str = "relay", python: str = sys.executable
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        **NO_EDGE_LIMITS,
        "PORT": str(port),
        "RELAY_HOST": "127.0.0.1",
        **extra_env,
    }
    env["PYTHONPATH"] = str(cwd)  # that checkout's relay, not the installed one
    cmd = [python, "-m", "relay", "serve"]
    return _start(name, cmd, env, re.compile(r"running on https?://[^:]+:(\d+)"), port, cwd)


def start_node(kit: Path, node_modules: Path) -> Server:
    port = free_port()
    env = {**os.environ, "BENCH_NODE_MODULES": str(node_modules)}
    cmd = ["node", str(kit / "server_node.js"), str(port)]
    return _start("node", cmd, env, re.compile(r"on 127\.0\.0\.1:(\d+)"), port)


def ensure_node_modules(kit: Path) -> Path:
    given = os.environ.get("BENCH_NODE_MODULES")
    if given and (Path(given) / "socket.io-client").is_dir():
        return Path(given)
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    for name in ("package.json", "package-lock.json"):
        shutil.copy(kit / name, tmp / name)
    print(f"npm ci of the kit into {tmp} ...", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=tmp, check=True)
    return tmp / "node_modules"


def run_node_script(
    script: Path, args: list[str], node_modules: Path, timeout: float
) -> dict[str, Any]:
    """Run a kit script with ``--json``; return the result line it appended."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as out:
        path = out.name
    try:
        env = {**os.environ, "BENCH_NODE_MODULES": str(node_modules)}
        proc = subprocess.run(
            ["node", str(script), *args, "--json", path],
            env=env,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        for line in proc.stdout.splitlines():
            print("   ", line, flush=True)
        if proc.returncode != 0:
            print("    (exit", proc.returncode, ")", proc.stderr.strip()[-500:], flush=True)
        text = Path(path).read_text().strip()
        return json.loads(text.splitlines()[-1]) if text else {}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def run_own_connect(a: argparse.Namespace, url: str) -> dict[str, Any]:
    """The connect storm from relay's own generator (``relay loadtest``: raw clients, one worker
    process per core): connect times without socket.io-client's own cost in them. One room per
    client, so the joins that follow each connect fan nothing out."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "relay", "loadtest", "--url", url,
               "--clients", str(a.connect_count), "--rooms", str(a.connect_count),
               "--connect-rate", str(a.connect_rate), "--rate", "10", "--duration", "1",
               "--drain", "1", "--report", str(report)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=600)
        if not report.exists():
            print("    (exit", proc.returncode, ")", proc.stderr.strip()[-500:], flush=True)
            return {}
        r = json.loads(report.read_text())
    con = r.get("connect_ms") or {}
    out = {"mode": "connect-own", "connected": r.get("connected"),
           "connect_errors": r.get("connect_errors"), "p50_ms": con.get("p50"),
           "p99_ms": con.get("p99"), "max_ms": con.get("max")}  # fmt: skip
    print(f"    [connect-own] {out['connected']}/{a.connect_count} at {a.connect_rate}/s, "
          f"errors {out['connect_errors']}, p50 {out['p50_ms']} p99 {out['p99_ms']} "
          f"max {out['max_ms']} ms", flush=True)  # fmt: skip
    return out


# -- scenarios -----------------------------------------------------------------------------------

Row = tuple[str, Callable[[dict[str, Any]], float | None], str]  # label, extract, format


def _cpu_us_per_delivery(r: dict[str, Any]) -> float | None:
    pct, rate = r.get("server_cpu_pct"), r.get("deliveries_per_s")
    if pct is None or not rate:
        return None
    return float(pct) / 100 * 1e6 / float(rate)


def _generator_rows(name: str) -> list[Row]:
    """The kit generator's own CPU and its worst publish-timer stall: a latency percentile
    near that stall is the generator's, not the server's."""
    return [
        (f"{name}: generator CPU (%)", lambda r: r.get("loadgen_cpu_pct"), "{:.0f}"),
        (f"{name}: generator timer lag max (ms)", lambda r: r.get("timer_max_lag_ms"), "{:.0f}"),
    ]


def _loop_delay_max(r: dict[str, Any]) -> float | None:
    value = r.get("client_loop_delay_max_ms")
    return None if value is None else float(value)


def _idle_top(r: dict[str, Any]) -> dict[str, Any]:
    levels = r.get("levels") or [{}]
    return dict(levels[-1])


ROWS: dict[str, list[Row]] = {
    "broadcast": [
        ("broadcast p50 (ms)", lambda r: r.get("p50_ms"), "{:.1f}"),
        ("broadcast p99 (ms)", lambda r: r.get("p99_ms"), "{:.1f}"),
        ("broadcast lost", lambda r: r.get("lost"), "{:.0f}"),
        ("broadcast CPU / delivery (µs)", _cpu_us_per_delivery, "{:.1f}"),
        *_generator_rows("broadcast"),
    ],
    "ramp": [
        (
            "ramp: max deliveries/s, p99≤limit",
            lambda r: r.get("max_sustained_deliveries_per_s"),
            "{:.0f}",
        ),
    ],
    "unicast": [
        ("unicast p99 (ms)", lambda r: r.get("p99_ms"), "{:.1f}"),
        ("unicast lost", lambda r: r.get("lost"), "{:.0f}"),
        ("unicast CPU / message (µs)", _cpu_us_per_delivery, "{:.1f}"),
        *_generator_rows("unicast"),
    ],
    "idle": [
        ("idle KB / connection", lambda r: _idle_top(r).get("kb_per_conn"), "{:.1f}"),
        ("idle CPU (%)", lambda r: _idle_top(r).get("idle_server_cpu_pct"), "{:.1f}"),
        ("idle connected", lambda r: _idle_top(r).get("connected"), "{:.0f}"),
        ("close storm CPU (s)", lambda r: r.get("disconnect_server_cpu_s"), "{:.2f}"),
    ],
    "connect": [
        ("connect storm p99 (ms)", lambda r: r.get("p99_ms"), "{:.1f}"),
        ("connect storm errors", lambda r: r.get("connect_errors"), "{:.0f}"),
        ("connect storm CPU (s)", lambda r: r.get("server_cpu_s"), "{:.2f}"),
        ("connect storm: Node client CPU (%)", lambda r: r.get("client_cpu_pct"), "{:.0f}"),
        ("connect storm: Node client loop delay max (ms)", _loop_delay_max, "{:.1f}"),
    ],
    "connect-own": [
        ("connect storm, relay's generator: p50 (ms)", lambda r: r.get("p50_ms"), "{:.1f}"),
        ("connect storm, relay's generator: p99 (ms)", lambda r: r.get("p99_ms"), "{:.1f}"),
        ("connect storm, relay's generator: errors", lambda r: r.get("connect_errors"), "{:.0f}"),
    ],
}


def scenario_args(
    name: str, a: argparse.Namespace, url: str, pid: int, warm_url: str = ""
) -> tuple[Path, list[str]]:
    common = ["--url", url, "--server-pid", str(pid), "--label", name]
    loadgen = a.kit / "loadgen.js"
    if name == "broadcast":
        return loadgen, [*common, "--mode", "broadcast", "--clients", str(a.clients),
                         "--rooms", str(a.rooms), "--rate", str(a.rate),
                         "--duration", str(a.duration)]  # fmt: skip
    if name == "ramp":
        return loadgen, [*common, "--mode", "ramp", "--clients", str(a.clients), "--rooms", "1",
                         "--rates", a.ramp_rates, "--step", str(a.ramp_step)]  # fmt: skip
    if name == "unicast":
        return loadgen, [*common, "--mode", "unicast", "--clients", str(a.clients),
                         "--rate", str(a.unicast_rate), "--duration", str(a.duration)]  # fmt: skip
    if name == "idle":
        return loadgen, [*common, "--mode", "idle", "--idle-counts", a.idle_counts,
                         "--hold", str(a.idle_hold)]  # fmt: skip
    if name == "connect":
        return HERE / "connect_storm.js", [*common, "--count", str(a.connect_count),
                                           "--rate", str(a.connect_rate),
                                           "--warmup", str(a.connect_warmup),
                                           "--warmup-url", warm_url]  # fmt: skip
    raise ValueError(name)


@contextlib.contextmanager
def serving(kind: str, a: argparse.Namespace, node_modules: Path) -> Iterator[Server]:
    if kind == "relay":
        server = start_relay(a.relay_env)
    elif kind == "before":
        if a.before_dir is None:
            raise SystemExit("--servers before needs --before-dir")
        server = start_relay(a.relay_env, a.before_dir, "before")
    elif kind in a.python:
        server = start_relay(a.relay_env, ROOT, kind, a.python[kind])
    else:
        server = start_node(a.kit, node_modules)
    try:
        yield server
    finally:
        server.stop()


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--only", default=",".join(SCENARIOS), help="comma list of: " + ", ".join(SCENARIOS)
    )
    p.add_argument(
        "--servers",
        default="relay,node",
        help="relay,node[,before] (run order); 'before' is relay from --before-dir",
    )
    p.add_argument("--before-dir", type=Path, help="another relay checkout, e.g. `git archive`d")
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a server NAME for --servers: this checkout's relay run by the interpreter at PATH"
        " (another build of Python, with relay's dependencies installed)",
    )
    p.add_argument("--kit", type=Path, default=DEFAULT_KIT)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--rate", type=int, default=100, help="broadcast publishes/s")
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--unicast-rate", type=int, default=2000)
    p.add_argument("--ramp-rates", default="1,2,4,8,13,20,32,40,50,64,80,100")
    p.add_argument("--ramp-step", type=float, default=4)
    p.add_argument("--idle-counts", default="5000,10000")
    p.add_argument("--idle-hold", type=float, default=5)
    p.add_argument("--connect-count", type=int, default=10000)
    p.add_argument("--connect-rate", type=int, default=1000)
    p.add_argument(
        "--connect-warmup",
        type=int,
        default=2000,
        help="connects the Node client makes first, unmeasured, to a scratch server of the same"
        " kind (a cold node process is slow for its first ~2,000; 0 = none)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario and server")
    p.add_argument("--json", type=Path, help="append every raw result here")
    p.add_argument("--relay-env", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    a.relay_env = dict(kv.split("=", 1) for kv in a.relay_env)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    for s in only:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    a.python = dict(kv.split("=", 1) for kv in a.python)
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ("relay", "node", "before", *a.python):
            p.error(f"unknown server {s!r}; choose from relay, node, before, or a --python NAME")
    node_modules = ensure_node_modules(a.kit)

    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in only:
        for _ in range(a.repeat):
            for kind in servers:
                print(f"== {name} on {kind}", flush=True)
                with contextlib.ExitStack() as stack:
                    server = stack.enter_context(serving(kind, a, node_modules))
                    if name == "connect-own":
                        r = run_own_connect(a, server.url)
                    else:
                        warm = ""
                        if name == "connect" and a.connect_warmup > 0:
                            warm = stack.enter_context(serving(kind, a, node_modules)).url
                        script, args = scenario_args(name, a, server.url, server.pid, warm)
                        r = run_node_script(script, args, node_modules, timeout=600)
                r["server"] = kind
                results.setdefault(name, {}).setdefault(kind, []).append(r)
                if a.json:
                    with a.json.open("a") as f:
                        f.write(json.dumps(r) + "\n")

    print()
    head = ["metric", *servers] + (["relay/node"] if set(servers) >= {"relay", "node"} else [])
    table: list[list[str]] = [head]
    for name in only:
        for label, extract, spec in ROWS[name]:
            cells = [label]
            best: dict[str, float | None] = {}
            for kind in servers:
                values = [extract(r) for r in results[name][kind]]
                shown = [fmt(v, spec) for v in values]
                cells.append(" / ".join(shown))
                nums = [float(v) for v in values if v is not None]
                best[kind] = (
                    nums[0] if len(nums) == 1 else (sorted(nums)[len(nums) // 2] if nums else None)
                )
            if len(head) > len(servers) + 1:
                r_, n_ = best.get("relay"), best.get("node")
                cells.append(f"{r_ / n_:.2f}" if r_ is not None and n_ else "—")
            table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
