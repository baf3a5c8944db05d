"""One worker process's swarm: connect its share of clients, join, publish, count.

The worker talks to the parent over a multiprocessing pipe (see :mod:`loadtest.workers` for the
message flow). Everything per delivery happens in :meth:`Swarm.on_delivery`: find the run's
tag in the frame (no JSON parse), one dict lookup for the stream, one dict increment for the
latency, one compare of the room's offset with the receiver's last; in C
(loadtest/_fastcount.c) where it was built, else in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from relay.loadtest import stats
from relay.loadtest.clients import Client, ConnectError, PollingClient, WSClient
from relay.loadtest.scenario import node_of
from relay.loadtest.stats import EXACT_BELOW as _EXACT_BELOW
from relay.loadtest.stats import SIG_BITS as _SIG_BITS

_fast_count: Callable[..., Any] | None
try:  # the C accounting (setup: pyproject's ext-modules, optional); else the Python below
    from relay.loadtest import _fastcount
except ImportError:  # pragma: no cover - depends on a compiler at install time
    _fast_count = None
else:  # a build from older sources (another calling convention) counts as none
    _fast_count = _fastcount.count if getattr(_fastcount, "ABI", 1) == 2 else None

#: the envelope's offset, as loadtest/_fastcount.c reads it (a number of at most 18 digits)
_offset_in = re.compile(rb'"offset": *(\d{1,18})(?!\d)').search
_IN_ORDER = stats.IN_ORDER
_DUPLICATE = stats.DUPLICATE

_time_ns = time.time_ns
PROGRESS_EVERY = 0.25  # seconds between counter updates to the parent
HIST_EVERY = 4  # progress updates between latency histogram flushes (one a second)


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker needs; picklable."""

    url: str
    transport: str
    run_id: str
    mode: str
    rooms: int
    publishers: int
    payload: int
    indices: tuple[int, ...]
    connect_rate: float | None
    connect_timeout: float
    concurrency: int
    auth: dict[str, Any] | None = None
    seed: int = 0
    room_prefix: str = "lt"
    extra: dict[str, Any] = field(default_factory=dict)
    #: every node (a cluster's URLs); () is ``(url,)``. Client ``idx`` goes to
    #: ``urls[scenario.node_of(idx, rooms, len(urls))]``
    urls: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.urls or (self.url,)


def room_name(prefix: str, run_id: str, room: int) -> str:
    return f"{prefix}-{run_id}-{room}"


class Swarm:
    """The clients of one worker, and their exact counts."""

    def __init__(self, cfg: WorkerConfig, pipe: Connection) -> None:
        self.cfg = cfg
        self.pipe = pipe
        self.run_id = cfg.run_id
        self.clients: list[Client] = []
        self.open = 0
        self.disconnects = 0
        self.phase = -1
        self.acc = stats.Accounting()
        self.streams = self.acc.streams
        self.rooms = stats.RoomOffsets(len(cfg.indices))
        self.room_last = self.rooms.last
        # latencies per node; a receiver's deliveries are counted in its node's buckets
        nodes = len(cfg.nodes)
        self.lats = [stats.Counts() for _ in range(nodes)]
        self.lat = self.lats[0]
        self.lat_buckets = self.lat.buckets
        self.node_of_local = [node_of(idx, cfg.rooms, nodes) for idx in cfg.indices]
        self.buckets_of = [self.lats[n].buckets for n in self.node_of_local]
        self.marker = f'"{cfg.run_id}:'.encode()
        self.marker_len = len(self.marker)
        self.set_phase(-1)
        self.late = 0
        self.foreign = 0
        self.last_ns = 0
        self._reset_phase_counters()
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.rng = random.Random(cfg.seed)
        self.pad = "x" * cfg.payload
        self.room_sizes: dict[int, int] = {}
        self.sids: list[tuple[int, str]] = []
        self.bseq: dict[int, int] = {}
        self.useq: dict[int, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.session: aiohttp.ClientSession | None = None

    def _reset_phase_counters(self) -> None:
        self.published = 0
        self.acked = 0
        self.rejected = 0
        self.expected = 0
        self.error_codes: dict[str, int] = {}
        #: per node: [published, acked, rejected, {error code: count}]
        self.per_node: list[list[Any]] = [[0, 0, 0, {}] for _ in self.cfg.nodes]

    # -- sink for clients -----------------------------------------------------------------
    def on_delivery_py(self, local: int, frame: bytes) -> None:
        """One ``42["message",{...}]`` frame (maybe still behind its websocket header). The hot
        path: no JSON parse, no object kept.

        A publish's ``data`` is ``{"lt": "RUN:PHASE:STREAM:SEQ:SENT_NS", "x": padding}``; the
        run id is random, so finding ``"RUN:PHASE:`` locates our tag however the server
        re-encodes the envelope around it (anything else goes to :meth:`_off_phase`). The
        stream fast path of :class:`stats.Accounting` and the latency bucketing of
        :class:`stats.Counts` are inlined here.
        """
        i = frame.find(self.hot)
        if i < 0:
            self._off_phase(frame)
            return
        at = i
        i += self.hot_len
        try:
            end = frame.index(b'"', i)
            stream, seq_b, sent = frame[i:end].split(b":")
            now = _time_ns()
            seq = int(seq_b)
            key = (local << 32) | int(stream)
            lat = (now - int(sent)) // 1000
        except ValueError:
            self.foreign += 1
            return
        acc = self.acc
        acc.received += 1
        st = self.streams.get(key)
        if st is not None and seq == st[0] and st[2] is None:
            st[0] = seq + 1
            st[1] = seq
            status = _IN_ORDER
        else:
            status = acc.place(key, seq)
        if status != _DUPLICATE:
            # after our tag (relay puts it after data), else before it; none: not a room's
            m = _offset_in(frame, end) or _offset_in(frame, 0, at)
            if m is not None:
                offset = int(m[1])
                last = self.room_last
                if offset == last[local] + 1:
                    last[local] = offset
                else:
                    self.rooms.check(local, offset, status != _IN_ORDER)
        # stats.quantize, inlined: this runs once per received delivery
        if lat >= _EXACT_BELOW:
            shift = lat.bit_length() - _SIG_BITS
            lat = (lat >> shift) << shift
        elif lat < 0:
            lat = 0
        buckets = self.buckets_of[local]
        buckets[lat] = buckets.get(lat, 0) + 1
        self.last_ns = now

    def on_delivery_c(self, local: int, frame: bytes) -> None:
        """:meth:`on_delivery` with the parse, the latency and the stream's fast path in C
        (loadtest/_fastcount.c): about 0.4 µs a delivery instead of 2."""
        assert _fast_count is not None
        r = _fast_count(
            frame, self.hot, local, self.streams, self.buckets_of[local], self.room_last
        )
        if r.__class__ is int:
            if r > 0:
                self.acc.received += 1
                self.last_ns = r
            elif r == -1:
                self._off_phase(frame)
            else:
                self.foreign += 1
            return
        now, key, seq, offset = r
        acc = self.acc
        acc.received += 1
        status = _IN_ORDER if key is None else acc.place(key, seq)
        if offset >= 0 and status != _DUPLICATE:
            last = self.room_last
            if offset == last[local] + 1:
                last[local] = offset
            else:
                self.rooms.check(local, offset, status != _IN_ORDER)
        self.last_ns = now

    #: the sink's entry point: the C accounting where it was built
    on_delivery = on_delivery_c if _fast_count is not None else on_delivery_py

    def _off_phase(self, frame: bytes) -> None:
        """Not tagged with the current phase: a late delivery of an earlier one, or foreign."""
        i = frame.find(self.marker)
        if i >= 0:
            i += self.marker_len
            j = frame.find(b'"', i)
            fields = frame[i:j].split(b":") if j > 0 else []
            if len(fields) == 4 and fields[0] != self.phase_tag:
                self.late += 1
                return
        self.foreign += 1

    def on_ack(self, client: Client, token: Any, ok: bool, code: str | None) -> None:
        node = self.per_node[client.node]
        if ok:
            self.acked += 1
            node[1] += 1
            return
        self.rejected += 1
        node[2] += 1
        self.expected -= self.room_sizes.get(token, 0) if token >= 0 else 1
        key = code or "error"
        self.error_codes[key] = self.error_codes.get(key, 0) + 1
        node[3][key] = node[3].get(key, 0) + 1

    def on_closed(self, client: Client) -> None:
        if client.sid is not None:
            self.open -= 1
            self.disconnects += 1

    # -- parent link ----------------------------------------------------------------------
    def send(self, kind: str, body: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pipe.send((kind, body))

    def _read_pipe(self, loop: asyncio.AbstractEventLoop) -> None:
        """A thread doing blocking reads: an event loop reader would make the pipe
        non-blocking, and a large message would then fail half-read."""
        put = self.commands.put_nowait
        while True:
            try:
                msg = self.pipe.recv()
            except (EOFError, OSError):
                msg = ("exit", None)
            try:
                loop.call_soon_threadsafe(put, msg)
            except RuntimeError:  # the loop is closed: we are done
                return
            if msg[0] == "exit":
                return

    def progress(self, with_hist: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "phase": self.phase,
            "open": self.open,
            "disconnects": self.disconnects,
            "published": self.published,
            "acked": self.acked,
            "rejected": self.rejected,
            "expected": self.expected,
            "received": self.acc.received,
            "unique": self.acc.unique,
            "duplicates": self.acc.duplicates,
            # each delivery once: the room's offsets count only what the streams did not
            "out_of_order": self.acc.out_of_order + self.rooms.out_of_order,
            "out_of_order_by_offset": self.rooms.out_of_order,
            "offset_gaps": self.rooms.gaps,
            "epoch_changes": self.rooms.epoch_changes,
            "late": self.late,
            "foreign": self.foreign,
            "cpu_s": time.process_time(),
            "last_ns": self.last_ns,
            "errors": dict(self.error_codes),
            "nodes": [[pub, acked, rejected, dict(codes)] for pub, acked, rejected, codes in
                      self.per_node],
        }  # fmt: skip
        if with_hist:
            body["hists"] = [lat.take() for lat in self.lats]  # per node
        return body

    async def _ticker(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            n += 1
            every_second = n % HIST_EVERY == 0
            self.send("progress", self.progress(every_second))
            if every_second:
                for client in self.clients:
                    client.delay_acks()

    # -- phases ---------------------------------------------------------------------------
    async def connect_all(self) -> dict[str, Any]:
        cfg = self.cfg
        cls = WSClient if cfg.transport == "websocket" else PollingClient
        session: aiohttp.ClientSession | None = None
        if cls is PollingClient:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout),
            )
            PollingClient.session = session
        self.session = session
        for local, idx in enumerate(cfg.indices):
            self.clients.append(cls(idx, local, idx % cfg.rooms, self, self.node_of_local[local]))
        connect_counts = stats.Counts()
        errors: dict[str, int] = {}
        node_errors = [0] * len(cfg.nodes)
        gate = asyncio.Semaphore(cfg.concurrency)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(i: int, client: Client) -> None:
            if cfg.connect_rate:
                delay = t0 + i / cfg.connect_rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            async with gate:
                try:
                    await client.open(cfg.nodes[client.node], cfg.auth, cfg.connect_timeout)
                except ConnectError as exc:
                    msg = str(exc)[:160]
                    errors[msg] = errors.get(msg, 0) + 1
                    node_errors[client.node] += 1
                    with contextlib.suppress(Exception):
                        await client.close()
                    return
                self.open += 1
                connect_counts.record(client.connect_us)
                await self._join(client)

        await asyncio.gather(*(one(i, c) for i, c in enumerate(self.clients)))
        hist = stats.new_histogram()
        connect_counts.drain_into(hist)
        return {
            "clients": [(c.idx, c.sid, c.joined) for c in self.clients if c.sid and not c.closed],
            "errors": errors,
            "node_errors": node_errors,
            "connect_hist": stats.encode(hist),
            "connect_s": loop.time() - t0,
        }

    async def _join(self, client: Client) -> None:
        done: asyncio.Future[tuple[bool, str | None]] = asyncio.get_running_loop().create_future()

        def acked(ok: bool, code: str | None, data: Any) -> None:
            if ok:
                first = data[0] if isinstance(data, list) and data else data
                if isinstance(first, dict):
                    self.rooms.joined(client.local, first.get("offset"), first.get("epoch"))
            if not done.done():
                done.set_result((ok, code))

        room = room_name(self.cfg.room_prefix, self.run_id, client.room)
        client.request("join", {"room": room}, acked)
        try:
            ok, _ = await asyncio.wait_for(done, self.cfg.connect_timeout)
        except TimeoutError:
            ok = False
        client.joined = ok

    def set_phase(self, k: int) -> None:
        self.phase = k
        self.phase_tag = str(k).encode() if k >= 0 else b"-"
        self.hot = self.marker + self.phase_tag + b":"  # b"-" never occurs in a publish
        self.hot_len = len(self.hot)

    def setup(self, body: dict[str, Any]) -> None:
        self.room_sizes = {int(k): v for k, v in body["room_sizes"].items()}
        self.sids = body["sids"]
        self.position = {idx: i for i, (idx, _) in enumerate(self.sids)}
        self.room_names = {
            r: room_name(self.cfg.room_prefix, self.run_id, r) for r in self.room_sizes
        }

    async def publish_phase(self, k: int, rate: float, duration: float) -> None:
        """Send ``rate`` messages/s from this worker's publishers for ``duration`` s."""
        pubs = [
            c
            for c in self.clients
            if c.idx < self.cfg.publishers and c.joined and not c.closed and c.sid
        ]
        total = round(rate * duration)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0
        mode = self.cfg.mode
        while sent < total and pubs:
            due = min(total, int((loop.time() - t0) * rate) + 1)
            while sent < due:
                client = pubs[sent % len(pubs)]
                unicast = mode == "unicast" or (mode == "mixed" and sent % 2 == 1)
                if client.closed:
                    pass
                elif unicast:
                    self._direct(client, k)
                else:
                    self._broadcast(client, k)
                sent += 1
            # until the next one is due (a slow rate wakes rarely), batching a fast one by 1 ms
            await asyncio.sleep(max(t0 + sent / rate - loop.time(), 0.001))

    def _broadcast(self, client: Client, k: int) -> None:
        stream = client.idx << 1
        seq = self.bseq.get(stream, 0)
        self.bseq[stream] = seq + 1
        client.next_ack += 1
        client.acks[client.next_ack] = client.room
        client.send(
            f'42{client.next_ack}["publish",{{"room":"{self.room_names[client.room]}",'
            f'"data":{{"lt":"{self.run_id}:{k}:{stream}:{seq}:{time.time_ns()}",'
            f'"x":"{self.pad}"}}}}]'
        )
        self.published += 1
        self.per_node[client.node][0] += 1
        self.expected += self.room_sizes.get(client.room, 0)

    def _direct(self, client: Client, k: int) -> None:
        n = len(self.sids)
        if n < 2:
            return
        me = self.position.get(client.idx, -1)
        j = self.rng.randrange(n - 1)
        if j >= me >= 0:
            j += 1
        target, sid = self.sids[j]
        stream = (client.idx << 1) | 1
        pair = (target << 32) | stream
        seq = self.useq.get(pair, 0)
        self.useq[pair] = seq + 1
        client.next_ack += 1
        client.acks[client.next_ack] = -1
        client.send(
            f'42{client.next_ack}["direct",{{"to":"{sid}",'
            f'"data":{{"lt":"{self.run_id}:{k}:{stream}:{seq}:{time.time_ns()}",'
            f'"x":"{self.pad}"}}}}]'
        )
        self.published += 1
        self.per_node[client.node][0] += 1
        self.expected += 1

    def collect(self) -> dict[str, Any]:
        """Close the phase: final counts and the rest of its histogram; reset for the next."""
        body = self.progress(with_hist=True)
        self.set_phase(-1)
        self.last_ns = 0
        self.acc = stats.Accounting()
        self.streams = self.acc.streams
        self.rooms.reset_counts()  # the offsets seen so far still hold
        self.bseq.clear()
        self.useq.clear()
        self._reset_phase_counters()
        return body

    def _report_published(self, k: int) -> None:
        # Counters first: the parent judges the drain on a snapshot taken after the last send.
        self.send("progress", self.progress(with_hist=False))
        self.send("published", k)

    def _published_callback(self, k: int) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled():
                self._report_published(k)

        return done

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_pipe, args=(loop,), daemon=True).start()
        publishing: asyncio.Task[None] | None = None
        try:
            # progress (how many are open) flows while connecting too: the live view shows it
            self._tasks.add(loop.create_task(self._ticker()))
            self.send("connected", await self.connect_all())
            # Thousands of long-lived client objects: keep the collector from rescanning them.
            gc.collect()
            gc.freeze()

            while True:
                kind, body = await self.commands.get()
                if kind == "setup":
                    self.setup(body)
                elif kind == "phase":
                    # Armed first, publishing on "go": every worker must count phase k before
                    # any worker publishes into it, or early deliveries would look late.
                    self.set_phase(body["k"])
                    self.send("armed", {"k": body["k"], "cpu_s": time.process_time()})
                elif kind == "go":
                    publishing = loop.create_task(
                        self.publish_phase(body["k"], body["rate"], body["duration"])
                    )
                    publishing.add_done_callback(self._published_callback(body["k"]))
                elif kind == "stop" and publishing is not None:
                    publishing.cancel()
                    self._report_published(self.phase)
                elif kind == "collect":
                    self.send("result", self.collect())
                elif kind == "exit":
                    break
        finally:
            for task in [*self._tasks, *([publishing] if publishing else [])]:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
            if self.session is not None:
                await self.session.close()
            t = os.times()
            self.send("bye", {"cpu_s": time.process_time(), "user_s": t.user, "sys_s": t.system})


def worker_main(cfg: WorkerConfig, pipe: Connection) -> None:
    """Process entry point: Ctrl-C belongs to the parent, which tells workers to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    runner(Swarm(cfg, pipe).run())
