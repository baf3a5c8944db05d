"""Sending messages over one connection in order: how ``relay send`` streams stdin.

Theory of operation
-------------------
Messages go out in order with up to ``window`` acks outstanding, and their acks are settled in
that same order. Each one is checked before it goes: a message whose packet is over the frame
limit of a relay connection is refused here, with its line number (sent, it would only make the
relay close the connection).

A relay answers ``rate_limited`` (with ``retry_after_ms``) when one connection publishes faster
than its ``RELAY_PUBLISH_RATE``. A refused message can be sent again, but the ones sent after it
may have been accepted meanwhile (the relay's token bucket refills between them), which would
publish them ahead of it. So the stream keeps below the rate the relay states on ``/healthz``
(nine tenths of it, with half its burst; the default rate if it states none), and should
``rate_limited`` come back anyway (a relay slower than it says, a burst squeezed by the
network), it
settles what is in flight, sends nothing new, resends the refused messages in order once the
relay's wait has passed (each at most :data:`MAX_TRIES` times), and goes on one message at a
time. A message accepted ahead of one refused before it is named in the outcome.

Any other refusal stops the stream: nothing more is sent, what is in flight is settled (and may
be published), and the :class:`Outcome` says exactly which messages were published.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.errors import RateLimited, RelayError, TooLarge
from relay.limits import Bucket, Rate, parse_rate
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.cli.client import Ack, Connection

#: a relay closes a connection that sends a bigger websocket frame (Settings.max_frame)
MAX_FRAME = Settings.max_frame
#: bytes of a frame around the JSON of ``[event, payload]``: Engine.IO and Socket.IO types, ack id
FRAME_OVERHEAD = 24
#: sends of one message refused as rate_limited before the stream gives up on it
MAX_TRIES = 10
#: the wait when a rate_limited answer does not say how long (seconds)
DEFAULT_RETRY = 0.5


def frame_size(action: str, payload: Any) -> int:
    """Bytes of the websocket frame that sends ``payload`` as ``action``: python-socketio
    encodes with the standard ``json`` module, ASCII only, so ``é`` costs six bytes."""
    return len(json.dumps([action, payload], separators=(",", ":"))) + FRAME_OVERHEAD


@dataclass(frozen=True)
class Unsendable:
    """A message the source could not even read whole (a line over the frame limit)."""

    number: int
    error: RelayError


Item = tuple[int, Any] | Unsendable


class Pacer:
    """Keeps sends below a relay's publish rate (a token bucket of our own, a bit slower)."""

    def __init__(
        self,
        rate: Rate | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = None
        if rate is not None and rate.enabled:
            self.rate = Rate(rate.per_s * 0.9, max(1.0, rate.burst / 2))
        self.clock = clock
        self.sleep = sleep
        self.bucket = None if self.rate is None else Bucket(self.rate, clock())

    async def wait(self) -> None:
        """Return when one more message may go."""
        if self.rate is None or self.bucket is None:
            return
        while not self.bucket.take(self.rate, self.clock()):
            # a microsecond over the wait: a float short of a whole token must not spin
            await self.sleep(self.bucket.retry_after(self.rate) + 1e-6)


async def publish_rate(conn: Connection) -> Rate | None:
    """The publish rate the relay states on ``/healthz`` (None if it states none)."""
    health = await conn.get_json("/healthz")
    limits = health.get("limits") if isinstance(health, dict) else None
    text = limits.get("publish_rate") if isinstance(limits, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return parse_rate("publish_rate", text)
    except RelayError:
        return None


@dataclass
class _Message:
    number: int
    payload: dict[str, Any]
    future: asyncio.Future[Ack] | None = None
    tries: int = 0
    resend_at: float = 0.0


@dataclass
class Outcome:
    """What happened to each message: ``sent`` (numbers, in order), which were published,
    which went without an answer, and the error that stopped the stream, if one did."""

    sent: list[int] = field(default_factory=list)
    published: set[int] = field(default_factory=set)
    unconfirmed: list[int] = field(default_factory=list)
    error: RelayError | None = None
    #: (published, refused earlier and resent): a pair published out of order
    overtaken: list[tuple[int, int]] = field(default_factory=list)

    def summary(self, noun: str = "line") -> str:
        """``published lines 1-4 and 6-7, and no other``."""
        published = _ranges(noun, self.sent, self.published)
        text = f"published {published}" if published else f"no {noun} was published"
        if self.unconfirmed:
            unknown = _ranges(noun, self.sent, set(self.unconfirmed))
            text += f"; {unknown} went unanswered (and may be published)"
        return text + (", and no other" if published or self.unconfirmed else "")


def _ranges(noun: str, order: list[int], chosen: set[int]) -> str:
    """``lines 1-4 and 6-7``: the numbers of ``order`` in ``chosen``, consecutive ones as a
    range (a blank line, never sent, splits a range: ``1-4`` means 1, 2, 3 and 4)."""
    runs: list[list[int]] = []
    for number in order:
        if number not in chosen:
            continue
        if runs and runs[-1][1] == number - 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    names = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    if not names:
        return ""
    if names == [str(runs[0][0])]:
        return f"{noun} {names[0]}"
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{noun}s {joined}"


class Streamer:
    """Sends what ``source`` yields over ``conn``, as the module describes."""

    def __init__(
        self,
        conn: Connection,
        action: str,
        source: AsyncIterator[Item],
        report: Callable[[Ack], None],
        *,
        window: int = 64,
        label: Callable[[int], str] | None = None,
        pacer: Pacer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.conn = conn
        self.action = action
        self.source = source
        self.report = report
        self.window = max(1, window)
        self.label = label or (lambda n: action)
        self.pacer = pacer or Pacer(None)
        self.sleep = sleep
        self.outcome = Outcome()
        self.pending: deque[_Message] = deque()
        self.loop = asyncio.get_running_loop()

    async def run(self) -> Outcome:
        """Send everything (or up to the first refusal); never raises a :class:`RelayError`."""
        try:
            await self._run()
        except RelayError as exc:  # the connection failed: what was in flight is unknown
            self.outcome.error = self.outcome.error or exc
            self.outcome.unconfirmed = [m.number for m in self.pending if m.future is not None]
        return self.outcome

    async def _run(self) -> None:
        exhausted = False
        while True:
            while self._may_read() and not exhausted:
                item = await anext(self.source, None)
                if item is None:
                    exhausted = True
                else:
                    await self._take(item)
            if not self.pending:
                return
            head = next((m for m in self.pending if m.future is not None), None)
            if head is None:
                await self._resend(self.pending[0])
            else:
                await self._settle(head)

    def _may_read(self) -> bool:
        return (
            self.outcome.error is None
            and len(self.pending) < self.window
            and all(m.future is not None for m in self.pending)
        )

    async def _take(self, item: Item) -> None:
        if isinstance(item, Unsendable):
            self.outcome.error = item.error
            return
        number, payload = item
        size = frame_size(self.action, payload)
        if size > MAX_FRAME:
            self.outcome.error = TooLarge(
                f"{self.label(number)}: {size:,} bytes as a Socket.IO packet, over the "
                f"{MAX_FRAME:,}-byte frame limit of a relay connection, so it was not sent "
                "(a relay takes 'data' up to its RELAY_MAX_PAYLOAD, 64 KiB unless raised)"
            )
            return
        message = _Message(number, payload)
        self.pending.append(message)
        self.outcome.sent.append(number)
        await self._send(message)

    async def _send(self, message: _Message) -> None:
        await self.pacer.wait()
        message.tries += 1
        message.future = await self.conn.request(self.action, message.payload)

    async def _resend(self, message: _Message) -> None:
        if self.outcome.error is not None:  # stopped: what waits to be resent stays unsent
            self.pending.clear()
            return
        delay = message.resend_at - self.loop.time()
        if delay > 0:
            await self.sleep(delay)
        await self._send(message)

    async def _settle(self, message: _Message) -> None:
        from relay.cli.client import check_ack

        assert message.future is not None
        what = self.label(message.number)
        ack = await self.conn.wait(message.future, what)
        message.future = None
        try:
            check_ack(ack, what)
        except RateLimited as exc:
            if self.outcome.error is not None:
                self.pending.remove(message)
            elif message.tries >= MAX_TRIES:
                self.pending.remove(message)
                self.outcome.error = RateLimited(
                    f"{exc.message}; still refused after {message.tries} tries"
                )
            else:
                # one at a time from now on: only then can a resend not be overtaken
                self.window = 1
                wait = DEFAULT_RETRY if exc.retry_after is None else exc.retry_after
                message.resend_at = self.loop.time() + wait
            return
        except RelayError as exc:
            self.pending.remove(message)
            self.outcome.error = exc
            return
        waiting = [m.number for m in self.pending if m.future is None and m is not message]
        if waiting and waiting[0] < message.number:
            self.outcome.overtaken.append((message.number, waiting[0]))
        self.pending.remove(message)
        self.outcome.published.add(message.number)
        self.report(ack)


__all__ = [
    "MAX_FRAME",
    "MAX_TRIES",
    "Item",
    "Outcome",
    "Pacer",
    "Streamer",
    "Unsendable",
    "frame_size",
    "publish_rate",
]
