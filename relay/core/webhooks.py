"""Webhooks: connection, membership and (opt-in) publish events POSTed, signed, to one URL.

Theory of operation
-------------------
The relay core never waits for a webhook. At a connect, disconnect, join or leave (and at a
client's publish whose event name matches ``RELAY_WEBHOOK_PUBLISH``) it calls one of
:class:`Webhooks`' ``note`` methods, which appends a small tuple to a bounded deque and, when
the sender is idle, wakes it. A full queue drops the new event and counts it (logged at most
once per :data:`LOG_EVERY_S`).

One sender task owns delivery: it waits for an event, lingers ``RELAY_WEBHOOK_LINGER`` for
others to join it, takes up to ``RELAY_WEBHOOK_BATCH`` and POSTs them as one request; while the
queue is backed up it takes the next batch at once. There is exactly one request in flight, so
the receiver sees batches in order. A batch is retried with capped, jittered exponential
backoff after a timeout, a connection error, a 429 (its ``Retry-After`` honoured up to the cap)
or a 5xx, until ``RELAY_WEBHOOK_RETRY_FOR`` has passed since its first attempt; then its events
are dropped and counted. Any other answer outside 2xx drops the batch at once. The status is
the answer: of the body, at most :data:`ANSWER_MAX` bytes are read (so the connection can
serve the next request), and a longer body, or one still arriving when the request's
``RELAY_WEBHOOK_TIMEOUT`` is up, closes the connection instead; a receiver that answers
gigabytes, or dribbles forever, costs neither memory nor the in-flight slot past the timeout.
Each attempt is signed afresh (its own ``X-Relay-Timestamp``), so a receiver's 5-minute window
holds for retries.

``room_occupied`` and ``room_vacated`` follow the ``join`` of a room's first member and the
``leave`` of its last. One process knows both when it notes the join or leave; in a cluster
(:mod:`relay.backends.cluster`) the script in Redis that adds or removes the member decides,
and the node whose script did reports it, once (:attr:`Webhooks.rooms_here` off).

At shutdown the sender flushes what is queued, without lingering, for up to
``RELAY_SHUTDOWN_TIMEOUT``; what is still queued or in flight then is dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from relay import __version__
from relay.core.auth import Matcher
from relay.settings import Settings

if TYPE_CHECKING:
    import aiohttp

    from relay.core.rooms import Member

log = logging.getLogger("relay.core.webhooks")

SIGNATURE_HEADER = "X-Relay-Signature"
TIMESTAMP_HEADER = "X-Relay-Timestamp"
#: how old a request's timestamp may be before a receiver rejects it (the contract's 5 minutes)
TOLERANCE_S = 300
#: retry backoff: the first wait, and the longest (a 429's Retry-After is held to it too)
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 10.0
#: a repeated warning (queue full, batches dropped) is logged at most this often
LOG_EVERY_S = 10.0
#: event names whose pattern match is remembered (past it the cache starts over)
MATCH_CACHE_SIZE = 1024
#: bytes of a receiver's answer read at most (past it the connection is closed, not drained)
ANSWER_MAX = 64 * 1024

#: (name, ts, sid, user, room) or, for publish, (name, ts, sid, user, room, event, offset)
Event = tuple[Any, ...]


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Relay-Signature`` value: ``sha256=`` and the HMAC of ``timestamp.body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def check_signature(
    secret: str | bytes,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float | None = None,
    tolerance: float = TOLERANCE_S,
) -> str | None:
    """Why a request is not a genuine, fresh webhook; ``None`` when it is."""
    if not timestamp or not signature:
        return f"no {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header"
    try:
        sent = int(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER}={timestamp!r} is not Unix seconds"
    age = (time.time() if now is None else now) - sent
    if abs(age) > tolerance:
        return f"{TIMESTAMP_HEADER} is {age:.0f} s off (more than {tolerance:g} s)"
    if not hmac.compare_digest(sign(secret, sent, body), signature):
        return f"{SIGNATURE_HEADER} does not match the body (another secret?)"
    return None


def event_dict(event: Event) -> dict[str, Any]:
    """The contract's EVENT for one queued tuple (``room`` only where it applies)."""
    out: dict[str, Any] = {"name": event[0], "ts": event[1], "sid": event[2], "user": event[3]}
    if event[4] is not None:
        out["room"] = event[4]
    if len(event) > 5:
        out["event"] = event[5]
        out["offset"] = event[6]
    return out


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling, capped, with jitter (50-100%)."""
    full = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    return full * (0.5 + rand() / 2)


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (an HTTP date is not honoured: backoff applies instead)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


class Webhooks:
    """The queue the core notes events on, and the task that sends them (see the module)."""

    def __init__(self, settings: Settings, clock_ms: Callable[[], int]) -> None:
        assert settings.webhook_url is not None and settings.webhook_secret is not None
        self.url = settings.webhook_url
        self._secret = settings.webhook_secret.encode()
        self._settings = settings
        self._clock = clock_ms
        self._queue: collections.deque[Event] = collections.deque()
        self._limit = settings.webhook_queue
        self._publish = Matcher(settings.webhook_publish) if settings.webhook_publish else None
        self._wanted: dict[str, bool] = {}
        #: the sender's wake-up, while it waits for an event
        self._waiter: asyncio.Future[None] | None = None
        self._in_flight: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        #: the sender is gone for good (shut down): events noted now are dropped at once
        self._finished = False
        self._lingering = False
        #: whether joined/left's first/last decide room_occupied/room_vacated (one process);
        #: off, the caller reports them with occupied/vacated
        self.rooms_here = True
        self._next_log: dict[str, float] = {}
        self.stats = {"sent": 0, "requests": 0, "retries": 0}
        self.dropped = {"queue_full": 0, "rejected": 0, "expired": 0, "shutdown": 0}

    @property
    def wants_publish(self) -> bool:
        return self._publish is not None

    # -- the core's side: append, never wait ---------------------------------------------------

    def connected(self, member: Member) -> None:
        self._put(("connect", self._clock(), member.sid, member.user, None))

    def disconnected(
        self, member: Member, rooms: list[str], occupied: Callable[[str], bool]
    ) -> None:
        """``member`` is gone, having left ``rooms`` (each vacated unless still ``occupied``)."""
        for room in rooms:
            self.left(member, room, not occupied(room))
        self._put(("disconnect", self._clock(), member.sid, member.user, None))

    def joined(self, member: Member, room: str, first: bool) -> None:
        ts = self._clock()
        self._put(("join", ts, member.sid, member.user, room))
        if first and self.rooms_here:
            self._put(("room_occupied", ts, member.sid, member.user, room))

    def left(self, member: Member, room: str, last: bool) -> None:
        ts = self._clock()
        self._put(("leave", ts, member.sid, member.user, room))
        if last and self.rooms_here:
            self._put(("room_vacated", ts, member.sid, member.user, room))

    def occupied(self, sid: str, user: str | None, room: str) -> None:
        """``sid``'s join made ``room`` occupied (decided elsewhere: see ``rooms_here``)."""
        self._put(("room_occupied", self._clock(), sid, user, room))

    def vacated(self, sid: str, user: str | None, room: str) -> None:
        """``sid``'s leave left ``room`` empty (decided elsewhere: see ``rooms_here``)."""
        self._put(("room_vacated", self._clock(), sid, user, room))

    def published(
        self, sid: str, user: str | None, room: str, event: str, offset: int | None
    ) -> None:
        """A client's publish: queued when ``event`` matches ``RELAY_WEBHOOK_PUBLISH``."""
        wanted = self._wanted.get(event)
        if wanted is None:
            wanted = self._publish is not None and self._publish.fullmatch(event)
            if len(self._wanted) >= MATCH_CACHE_SIZE:
                self._wanted.clear()
            self._wanted[event] = wanted
        if wanted:
            self._put(("publish", self._clock(), sid, user, room, event, offset))

    def _put(self, event: Event) -> None:
        queue = self._queue
        if len(queue) >= self._limit or self._finished:
            self._refuse()
            return
        queue.append(event)
        waiter = self._waiter
        if waiter is not None and not self._lingering:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _refuse(self) -> None:
        if self._finished:  # (after the shutdown flush: nothing will send it)
            self.dropped["shutdown"] += 1
            return
        self.dropped["queue_full"] += 1
        self._warn(
            "queue_full",
            "webhook queue full (RELAY_WEBHOOK_QUEUE=%d): dropping events (%d so far)",
            self._limit,
            self.dropped["queue_full"],
        )

    # -- the sender ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sender (inside the running loop)."""
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._settings.webhook_timeout),
            connector=aiohttp.TCPConnector(limit=1),
            headers={"User-Agent": f"relay/{__version__} webhooks"},
        )
        self._task = asyncio.create_task(self._run(), name="relay-webhooks")

    async def close(self, timeout: float) -> None:
        """Flush what is queued within ``timeout`` seconds; then drop (and count) the rest."""
        self._closing = True
        self._wake()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=1)
        self._finished = True
        lost = len(self._queue) + len(self._in_flight)
        if lost:
            self.dropped["shutdown"] += lost
            log.warning("shutdown: dropped %d webhook events not sent in time", lost)
        self._queue.clear()
        self._in_flight = []
        if self._session is not None:
            await self._session.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None

    async def _run(self) -> None:
        settings = self._settings
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
                lone = len(queue) < settings.webhook_batch
                if lone and settings.webhook_linger and not self._closing:
                    # others may join the batch (a shutdown cuts the wait short)
                    self._waiter = asyncio.get_running_loop().create_future()
                    self._lingering = True
                    await asyncio.wait({self._waiter}, timeout=settings.webhook_linger)
                    self._lingering = False
                    self._waiter = None
                continue
            batch = [queue.popleft() for _ in range(min(settings.webhook_batch, len(queue)))]
            self._in_flight = batch
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end webhooks for good
                log.exception("webhook delivery failed; dropping %d events", len(batch))
                self.dropped["rejected"] += len(batch)
            self._in_flight = []

    async def _deliver(self, batch: list[Event]) -> None:
        body = orjson.dumps({"events": [event_dict(e) for e in batch]})
        started = time.monotonic()
        attempt = 0
        while True:
            ok, wait, why = await self._post(body)
            if ok:
                self.stats["sent"] += len(batch)
                return
            if wait is None:  # not worth retrying
                self.dropped["rejected"] += len(batch)
                self._warn("rejected", "webhook refused (%s): dropped %d events", why, len(batch))
                return
            attempt += 1
            delay = min(wait, BACKOFF_CAP_S) if wait > 0 else backoff(attempt)
            if time.monotonic() - started + delay > self._settings.webhook_retry_for:
                self.dropped["expired"] += len(batch)
                self._warn(
                    "expired",
                    "webhook still failing (%s) after %.1f s (RELAY_WEBHOOK_RETRY_FOR):"
                    " dropped %d events",
                    why,
                    time.monotonic() - started,
                    len(batch),
                )
                return
            self.stats["retries"] += 1
            log.info("webhook failed (%s); retry %d in %.2f s", why, attempt, delay)
            await asyncio.sleep(delay)

    async def _post(self, body: bytes) -> tuple[bool, float | None, str]:
        """One attempt: (delivered, seconds to wait before a retry or None for none, why)."""
        import aiohttp

        assert self._session is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        self.stats["requests"] += 1
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                after = response.headers.get("Retry-After")
                await _skim(response)
        except TimeoutError:
            return False, 0.0, f"no answer within {self._settings.webhook_timeout:g} s"
        except aiohttp.ClientError as exc:
            return False, 0.0, f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return True, None, ""
        if status == 429:
            return False, retry_after(after) or 0.0, "429"
        if status >= 500:
            return False, 0.0, str(status)
        return False, None, str(status)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now >= self._next_log.get(kind, 0.0):
            self._next_log[kind] = now + LOG_EVERY_S
            log.warning(message, *args)

    def describe(self) -> dict[str, Any]:
        """For /healthz: queue depth, what was sent, retried and dropped."""
        return {
            "queued": len(self._queue),
            "in_flight": len(self._in_flight),
            **self.stats,
            "dropped": dict(self.dropped),
        }


async def _skim(response: aiohttp.ClientResponse) -> None:
    """Read the rest of an answer whose status is known: up to :data:`ANSWER_MAX` bytes, and
    within the request's timeout; past either, close the connection (never read to the end)."""
    import aiohttp

    content = response.content
    read = 0
    try:
        while read <= ANSWER_MAX:
            chunk = await content.readany()
            if not chunk:
                return  # (the whole body: the connection may serve the next request)
            read += len(chunk)
    except (TimeoutError, aiohttp.ClientError):
        pass  # (the status stands: the body was never the answer)
    response.close()


__all__ = ["Webhooks", "check_signature", "event_dict", "sign"]
