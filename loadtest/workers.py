"""The parent side: spread clients over worker processes, drive phases, merge exactly.

Message flow over each worker's pipe (``(kind, body)`` tuples)::

    worker -> parent  connected {clients: [(idx, sid, joined)], errors, connect_hist}
    parent -> worker  setup {sids, room_sizes}
    parent -> worker  phase {k}                      worker -> parent  armed {k, cpu_s}
    parent -> worker  go {k, rate, duration}         worker -> parent  published k
    worker -> parent  progress {...counters, nodes, hists?}
                      (every 0.25 s; latency counts, one list per node, once a second)
    parent -> worker  collect                        worker -> parent  result {...}
    parent -> worker  stop | exit                    worker -> parent  bye {cpu_s}

Counters are cumulative per phase, so the parent keeps only each worker's latest; latency
histograms are per interval, and the parent adds them up bucket by bucket.
"""

from __future__ import annotations

import multiprocessing
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from hdrh.histogram import HdrHistogram

from relay.loadtest import stats
from relay.loadtest.engine import WorkerConfig, worker_main
from relay.loadtest.scenario import Scenario

COUNTERS = (
    "published", "acked", "rejected", "expected", "received", "unique",
    "duplicates", "out_of_order", "late", "out_of_order_by_offset", "offset_gaps",
    "epoch_changes",
)  # fmt: skip


class RunError(Exception):
    """The run could not happen at all (e.g. no client connected)."""


@dataclass
class PhaseResult:
    """One publishing phase, all workers summed."""

    k: int
    rate: float
    duration: float
    counts: dict[str, int]
    latency: HdrHistogram
    wall_s: float
    window_s: float
    cpu_s: float
    worker_cpu_max: float
    errors: dict[str, int]
    #: why publishing stopped before the phase's end ('' when it ran its course)
    stopped: str = ""
    #: per node (``scn.urls``' order): published, acked, rejected, received, errors, latency
    nodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(0, self.counts["expected"] - self.counts["unique"])

    @property
    def deliveries_per_s(self) -> float:
        return self.counts["received"] / self.window_s if self.window_s > 0 else 0.0


@dataclass
class Live:
    """What the live view shows; refreshed by the orchestrator."""

    stage: str = "starting"
    started: float = field(default_factory=time.monotonic)
    clients: int = 0
    connected: int = 0
    connect_errors: int = 0
    phase_rate: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    deliveries_per_s: float = 0.0
    p99_ms: float | None = None
    cpu_percent: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)


class Orchestrator:
    """Runs a :class:`Scenario` across worker processes."""

    def __init__(self, scn: Scenario, on_update: Callable[[Live], None] | None = None) -> None:
        self.scn = scn
        self.on_update = on_update or (lambda live: None)
        self.run_id = secrets.token_hex(4)
        self.live = Live(clients=scn.clients)
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        self.latest: dict[int, dict[str, Any]] = {}
        self.connected: dict[int, dict[str, Any]] = {}
        self.published_done: set[int] = set()
        self.results: dict[int, dict[str, Any]] = {}
        self.byes: dict[int, dict[str, Any]] = {}
        self.phase = -1
        self.armed: set[int] = set()
        self.phase_hist = stats.new_histogram()
        self.phase_counts = stats.Counts()  # folded into phase_hist when the phase ends
        self.node_counts = [stats.Counts() for _ in scn.urls or (scn.url,)]
        self.total_hist = stats.new_histogram()
        self.interval = stats.Counts()  # this second's latencies, for the live view
        self.interrupted = False
        self._worker_cpu_at_start: dict[int, float] = {}
        self.stop_reason = ""
        self.deadline = time.monotonic() + scn.max_time
        self._last_sample = time.monotonic()
        self._last_ui = 0.0
        self._sample_prev: dict[str, float] = {"received": 0, "t": time.monotonic()}
        self._cpu0 = time.process_time()
        self._wall0 = time.monotonic()
        self._received_before = 0  # deliveries of finished phases, for samples

    # -- processes ------------------------------------------------------------------------
    def start(self) -> None:
        scn = self.scn
        n = scn.worker_count
        ctx = multiprocessing.get_context("spawn")
        auth: dict[str, Any] | None = {"token": scn.token} if scn.token else None
        for w in range(n):
            indices = tuple(range(w, scn.clients, n))
            if scn.user_prefix:
                auth = {**(auth or {}), "user": f"{scn.user_prefix}{w}"}
            cfg = WorkerConfig(
                url=scn.url,
                transport=scn.transport,
                run_id=self.run_id,
                mode=scn.mode,
                rooms=scn.rooms,
                publishers=scn.publisher_count,
                payload=scn.payload,
                indices=indices,
                connect_rate=(scn.connect_rate / n) if scn.connect_rate else None,
                connect_timeout=scn.connect_timeout,
                concurrency=max(1, scn.concurrency // n),
                auth=auth,
                seed=scn.seed * 1000 + w,
                urls=scn.urls,
            )
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=worker_main, args=(cfg, child), name=f"loadtest-{w}")
            proc.daemon = True
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def send_all(self, kind: str, body: Any = None, only: set[int] | None = None) -> None:
        for w, pipe in enumerate(self.pipes):
            if (only is None or w in only) and w not in self.byes:
                try:
                    pipe.send((kind, body))
                except (OSError, ValueError):
                    self.byes.setdefault(w, {"cpu_s": 0.0})

    def pump(self, timeout: float) -> None:
        """Handle whatever the workers said within ``timeout`` seconds."""
        alive = [p for w, p in enumerate(self.pipes) if w not in self.byes]
        if not alive:
            return
        for ready in wait(alive, timeout):
            w = self.pipes.index(ready)  # type: ignore[arg-type]
            pipe = self.pipes[w]
            try:
                while pipe.poll():
                    kind, body = pipe.recv()
                    self._handle(w, kind, body)
            except (EOFError, OSError):
                self.byes.setdefault(w, {"cpu_s": self.latest.get(w, {}).get("cpu_s", 0.0)})
        self._tick()

    def _handle(self, w: int, kind: str, body: Any) -> None:
        if kind == "progress":
            if body["phase"] == self.phase or body["phase"] == -1:
                self.latest[w] = body
            if "hists" in body:
                self._add_latencies(body, live=True)
        elif kind == "connected":
            self.connected[w] = body
        elif kind == "armed":
            if body["k"] == self.phase:
                self.armed.add(w)
                self._worker_cpu_at_start[w] = body["cpu_s"]
        elif kind == "published":
            if body == self.phase:
                self.published_done.add(w)
        elif kind == "result":
            self.results[w] = body
            if "hists" in body:
                self._add_latencies(body, live=False)
            self.latest[w] = body
        elif kind == "bye":
            self.byes[w] = body

    def _add_latencies(self, body: dict[str, Any], live: bool) -> None:
        """A worker's latency counts (one list of pairs per node) into this second's (for the
        live view), and into the phase's and its nodes' while that phase runs."""
        counting = body["phase"] == self.phase and self.phase >= 0
        for node, pairs in enumerate(body["hists"]):
            if live:
                self.interval.add_pairs(pairs)
            if counting:
                self.phase_counts.add_pairs(pairs)
                self.node_counts[node].add_pairs(pairs)

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(COUNTERS, 0)
        for body in self.latest.values():
            if body.get("phase") == self.phase:
                for key in COUNTERS:
                    out[key] += body.get(key, 0)
        return out

    def cpu_seconds(self) -> float:
        workers = sum(
            float(self.byes.get(w, self.latest.get(w, {})).get("cpu_s", 0.0))
            for w in range(len(self.pipes))
        )
        return workers + (time.process_time() - self._cpu0)

    def _tick(self) -> None:
        now = time.monotonic()
        live = self.live
        if now - self._last_sample >= 1.0:
            counts = self.totals()
            received = self._received_before + counts["received"]
            dt = now - self._sample_prev["t"]
            cpu = self.cpu_seconds()
            rate = (received - self._sample_prev["received"]) / dt if dt > 0 else 0.0
            cpu_pct = 100 * (cpu - self._sample_prev.get("cpu", 0.0)) / dt if dt > 0 else 0.0
            p = self.interval.summary_ms(stats.LATENCY_PERCENTILES)
            self.interval.buckets.clear()
            live.deliveries_per_s, live.p99_ms, live.cpu_percent = rate, p["p99"], cpu_pct
            live.samples.append(
                {
                    "t": round(now - self._wall0, 2),
                    "stage": live.stage,
                    "connected": self.open_connections(),
                    "published": counts["published"],
                    "received": received,
                    "deliveries_per_s": round(rate, 1),
                    "p50_ms": p["p50"],
                    "p99_ms": p["p99"],
                    "max_ms": p["max"],
                    "in_flight": max(0, counts["expected"] - counts["unique"]),
                    "loadgen_cpu_percent": round(cpu_pct, 1),
                }
            )
            self._sample_prev = {"received": received, "t": now, "cpu": cpu}
            self._last_sample = now
        if now - self._last_ui >= 0.25:
            live.counts = self.totals()
            live.connected = self.open_connections()
            self.on_update(live)
            self._last_ui = now

    def open_connections(self) -> int:
        if self.latest:
            return sum(int(b.get("open", 0)) for b in self.latest.values())
        return sum(len(c["clients"]) for c in self.connected.values())

    def wait_until(self, done: Callable[[], bool], seconds: float) -> bool:
        """Pump until ``done()`` or ``seconds`` pass (or the hard cap, or Ctrl-C)."""
        until = min(time.monotonic() + seconds, self.deadline)
        while not done():
            if self.interrupted:
                return False
            now = time.monotonic()
            if now >= until:
                if now >= self.deadline and not self.stop_reason:
                    self.stop_reason = f"hard time cap of {self.scn.max_time:g}s reached"
                return False
            self.pump(min(0.05, until - now))
        return True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """First Ctrl-C: stop publishing, drain, report. A second one aborts at once."""
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self.stop_reason = "interrupted (Ctrl-C)"

    # -- the run --------------------------------------------------------------------------
    def connect(self) -> dict[str, Any]:
        self.live.stage = "connecting"
        n = len(self.pipes)
        budget = self.scn.connect_timeout + 30
        if self.scn.connect_rate:
            budget += self.scn.clients / self.scn.connect_rate
        done = self.wait_until(lambda: len(self.connected) + len(self.byes) >= n, budget)
        if not done and not self.interrupted:
            # a worker still connecting (or joining) when the budget ran out: say so, with how
            # far the server got, instead of reporting its clients as never having connected
            raise RunError(
                f"the connect phase did not finish within {budget:.0f} s: "
                f"{len(self.connected)} of {n} workers done, {self.open_connections()} "
                "connections open. The server accepts or joins too slowly for this many "
                "clients (a join in a big room also fans out presence events): use fewer "
                "--clients, more --rooms, or a lower --connect-rate"
            )
        clients = [c for body in self.connected.values() for c in body["clients"]]
        scn = self.scn
        urls = scn.urls or (scn.url,)
        nodes: list[dict[str, Any]] = [
            {"url": url, "clients": 0, "connected": 0, "joined": 0, "connect_errors": 0}
            for url in urls
        ]
        for idx in range(scn.clients):
            nodes[scn.node_of(idx)]["clients"] += 1
        for idx, _, joined in clients:
            node = nodes[scn.node_of(idx)]
            node["connected"] += 1
            node["joined"] += int(joined)
        for body in self.connected.values():
            for i, failed in enumerate(body.get("node_errors", ())):
                nodes[i]["connect_errors"] += failed
        errors: dict[str, int] = {}
        for body in self.connected.values():
            for msg, count in body["errors"].items():
                errors[msg] = errors.get(msg, 0) + count
        connect_hist = stats.merge(b["connect_hist"] for b in self.connected.values())
        joined = [c for c in clients if c[2]]
        room_sizes: dict[int, int] = {}
        for idx, _, _ in joined:
            room_sizes[idx % self.scn.rooms] = room_sizes.get(idx % self.scn.rooms, 0) + 1
        self.sids = [(idx, sid) for idx, sid, _ in joined]
        self.room_sizes = room_sizes
        self.pub_share = {w: 0 for w in range(n)}
        for idx, _, _ in joined:
            if idx < self.scn.publisher_count:
                self.pub_share[idx % n] += 1
        self.live.connected = len(clients)
        self.live.connect_errors = self.scn.clients - len(clients)
        self.send_all("setup", {"sids": self.sids, "room_sizes": room_sizes})
        return {
            "connected": len(clients),
            "joined": len(joined),
            "connect_errors": self.scn.clients - len(clients),
            "error_samples": errors,
            "connect_hist": connect_hist,
            "nodes": nodes,
        }

    def run_phase(self, k: int, rate: float, duration: float) -> PhaseResult:
        self.phase = k
        self.phase_counts = stats.Counts()
        for node_counts in self.node_counts:
            node_counts.buckets.clear()
        self.published_done = set()
        self.results = {}
        self.latest = {}
        self.live.phase_rate = rate
        self.live.stage = f"publishing {rate:g}/s" if self.scn.ramp else "publishing"
        pubs_total = sum(self.pub_share.values()) or 1
        cpu_parent0 = time.process_time()
        wall0 = time.time()
        mono0 = time.monotonic()
        active = {w for w in range(len(self.pipes)) if w not in self.byes}
        self.armed = set()
        self.send_all("phase", {"k": k})
        self.wait_until(lambda: active <= self.armed | set(self.byes), 30)
        for w in range(len(self.pipes)):
            share = rate * self.pub_share.get(w, 0) / pubs_total
            self.send_all("go", {"k": k, "rate": share, "duration": duration}, only={w})
        self.wait_until(lambda: active <= self.published_done | set(self.byes), duration * 2 + 30)
        stopped = self.stop_reason if (self.interrupted or self.stop_reason) else ""
        if stopped:
            self.send_all("stop")
            was, self.interrupted = self.interrupted, False
            self.deadline = max(self.deadline, time.monotonic() + 10)
            self.wait_until(lambda: active <= self.published_done | set(self.byes), 10)
            self.interrupted = was or self.interrupted
        publish_end = time.monotonic()
        self.live.stage = "draining"

        def drained() -> bool:
            t = self.totals()
            return t["unique"] >= t["expected"] and t["acked"] + t["rejected"] >= t["published"]

        # After a Ctrl-C, still drain (bounded) and collect, so the report counts right; a
        # further Ctrl-C (which sets the flag again) cuts the drain short.
        interrupted, self.interrupted = self.interrupted, False
        self.wait_until(drained, self.scn.drain)
        self.send_all("collect")
        wanted = {w for w in range(len(self.pipes)) if w not in self.byes}
        saved_deadline, self.deadline = self.deadline, max(self.deadline, time.monotonic() + 15)
        self.interrupted, again = False, self.interrupted
        self.wait_until(lambda: wanted <= set(self.results) | set(self.byes), 15)
        self.deadline = saved_deadline
        self.interrupted = interrupted or again or self.interrupted
        counts = dict.fromkeys(COUNTERS, 0)
        errors: dict[str, int] = {}
        worker_cpu_max = 0.0
        self.phase_hist = stats.histogram_of(self.phase_counts.take())
        wall = time.monotonic() - mono0
        cpu = time.process_time() - cpu_parent0
        for w, body in self.results.items():
            for key in COUNTERS:
                counts[key] += body.get(key, 0)
            for code, c in body.get("errors", {}).items():
                errors[code] = errors.get(code, 0) + c
            wcpu = body["cpu_s"] - self._worker_cpu_at_start.get(w, 0.0)
            cpu += wcpu
            worker_cpu_max = max(worker_cpu_max, wcpu / wall if wall > 0 else 0.0)
        nodes = self._node_results()
        last = max((b.get("last_ns", 0) for b in self.results.values()), default=0)
        window = (last / 1e9 - wall0) if last else (publish_end - mono0)
        self.total_hist.add(self.phase_hist)
        self._received_before += counts["received"]
        self.phase = -1
        return PhaseResult(
            k=k,
            rate=rate,
            duration=duration,
            counts=counts,
            latency=self.phase_hist,
            wall_s=wall,
            window_s=max(window, 1e-3),
            cpu_s=cpu,
            worker_cpu_max=worker_cpu_max,
            errors=errors,
            stopped=stopped,
            nodes=nodes,
        )

    def _node_results(self) -> list[dict[str, Any]]:
        """The phase per node: the workers' counters summed, and the node's latencies."""
        out: list[dict[str, Any]] = []
        for i, counts in enumerate(self.node_counts):
            latency = stats.histogram_of(counts.take())
            node: dict[str, Any] = {
                "published": 0, "acked": 0, "rejected": 0, "errors": {},
                "received": latency.get_total_count(), "latency": latency,
            }  # fmt: skip
            for body in self.results.values():
                per_node = body.get("nodes") or []
                if i < len(per_node):
                    published, acked, rejected, codes = per_node[i]
                    node["published"] += published
                    node["acked"] += acked
                    node["rejected"] += rejected
                    for code, n in codes.items():
                        node["errors"][code] = node["errors"].get(code, 0) + n
            out.append(node)
        return out

    def finish(self) -> float:
        """Tell workers to close their clients and exit; return their total CPU seconds."""
        self.live.stage = "closing"
        self.send_all("exit")
        saved, self.interrupted = self.interrupted, False
        self.deadline = max(self.deadline, time.monotonic() + 20)
        self.wait_until(lambda: len(self.byes) >= len(self.pipes), 20)
        self.interrupted = saved
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        return self.cpu_seconds()

    def execute(self) -> dict[str, Any]:
        """The whole run; returns the raw material for :func:`loadtest.report.build`."""
        scn = self.scn
        phases: list[PhaseResult] = []
        conn: dict[str, Any] = {}
        ramp_stop = ""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main else None
        try:
            self.start()
            conn = self.connect()
            if conn["connected"] == 0:
                sample = next(iter(conn["error_samples"]), "no answer")
                raise RunError(f"no client could connect to {scn.url}: {sample}")
            rate = scn.rate
            steps = scn.ramp_steps if scn.ramp else 1
            for k in range(steps):
                if self.interrupted or self.stop_reason:
                    break
                result = self.run_phase(k, rate, scn.duration)
                phases.append(result)
                if scn.ramp:
                    if result.stopped:  # the run stopped, not the step: say which
                        ramp_stop = f"{result.stopped} during the {rate:g} msgs/s step"
                        break
                    broke = ramp_breach(result, scn)
                    if broke:
                        ramp_stop = f"{broke} at {rate:g} msgs/s"
                        break
                    rate = rate * scn.ramp_factor
            if scn.ramp and not ramp_stop:
                ramp_stop = self.stop_reason or f"all {steps} steps sustained"
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop_reason = "interrupted (Ctrl-C)"
        finally:
            cpu_total = self.finish() if self.pipes else 0.0
            if in_main:
                signal.signal(signal.SIGINT, previous or signal.default_int_handler)
        return {
            "run_id": self.run_id,
            "connect": conn,
            "phases": phases,
            "ramp_stop": ramp_stop,
            "latency": self.total_hist,
            "samples": self.live.samples,
            "wall_s": time.monotonic() - self._wall0,
            "cpu_s": cpu_total,
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
            "disconnects": sum(int(b.get("disconnects", 0)) for b in self.latest.values()),
            "worker_cpu": [
                {k: round(float(v), 3) for k, v in b.items() if k.endswith("_s")}
                for b in self.byes.values()
            ],
        }


def ramp_breach(result: PhaseResult, scn: Scenario) -> str:
    """Why a ramp step does not count as sustained ('' when it does): the first that applies of
    a run stopped during it, publishes the server refused, loss, p99, and a generator that fell
    behind its rate."""
    max_p99 = scn.max_p99_ms if scn.max_p99_ms is not None else 250.0
    max_loss = scn.max_loss if scn.max_loss is not None else 0.0
    expected = result.counts["expected"]
    loss = result.lost / expected if expected else 0.0
    p99 = result.latency.get_value_at_percentile(99.0) / 1000 if result.counts["received"] else 0
    if result.stopped:
        return f"cut short ({result.stopped})"
    if result.counts["rejected"]:
        codes = ", ".join(f"{n:,} {code}" for code, n in sorted(result.errors.items()))
        return f"the server refused {result.counts['rejected']:,} publishes ({codes})"
    if loss > max_loss:
        return f"loss {loss:.4%} > {max_loss:.4%}"
    if p99 > max_p99:
        return f"p99 {p99:.1f} ms > {max_p99:g} ms"
    if result.counts["published"] < 0.9 * result.rate * result.duration:
        return "the generator could not publish at this rate"
    return ""
