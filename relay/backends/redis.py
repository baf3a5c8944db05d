"""The Redis connection of one cluster node: ordered commands, subscriptions, reconnects.

Commands go through one queue and one writer task that sends them in batches, each batch one
pipeline on one connection: what this node asks, Redis does in the order asked (two publishes
from one client get their offsets in the order sent), at one round trip per batch. Every batch
has a deadline (:data:`CALL_TIMEOUT_S`): a slow or dead Redis fails the calls of that batch
with ``unavailable``, it never stalls the event loop, and the queue is bounded
(:data:`QUEUE_SIZE`: past it a call is refused at once).

Subscriptions live on one pub/sub connection, read by one listener task. When it fails, the
listener reconnects with capped exponential backoff (logging each attempt), subscribes again
to every channel and calls ``on_connect``, which is where the node fills the gaps and writes
back its state (a Redis that restarted empty knows nothing of it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from relay.errors import Unavailable

log = logging.getLogger("relay.redis")

#: seconds one batch of commands (and a connect) may take before its calls fail
CALL_TIMEOUT_S = 2.0
#: calls waiting for the writer; past it a call is refused at once (``unavailable``)
QUEUE_SIZE = 10_000
#: calls sent in one pipeline at most
BATCH = 256
#: reconnect backoff: first wait, cap (seconds)
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
#: the listener wakes at least this often (a read without a deadline would never notice)
LISTEN_TICK_S = 1.0

Apply = Callable[[Pipeline], Any]


class Script:
    """A Lua script run by its SHA1 (EVALSHA); the bus loads it into Redis when Redis lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(self, keys: list[str], args: list[Any]) -> Apply:
        """What adds this script's run on ``keys`` and ``args`` to a pipeline."""
        sha, n = self.sha, len(keys)
        return lambda pipe: pipe.evalsha(sha, n, *keys, *args)


def connect(url: str, tls_verify: bool) -> aioredis.Redis:
    """A client for ``url``; every call times out, and nothing is retried behind our back."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": CALL_TIMEOUT_S,
        "socket_connect_timeout": CALL_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }
    if urlsplit(url).scheme == "rediss" and not tls_verify:
        options["ssl_cert_reqs"] = "none"
    return aioredis.Redis.from_url(url, **options)


def describe(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


class Bus:
    """One node's commands and subscriptions; see the module's docstring."""

    def __init__(
        self,
        client: aioredis.Redis,
        where: str,
        on_message: Callable[[str, str], None],
        on_connect: Callable[[], Awaitable[None]],
    ) -> None:
        self.client = client
        self.where = where
        self._on_message = on_message
        self._on_connect = on_connect
        self._queue: asyncio.Queue[tuple[Apply, asyncio.Future[Any] | None]] = asyncio.Queue(
            QUEUE_SIZE
        )
        self._channels: dict[str, asyncio.Future[None]] = {}
        self._scripts: list[Script] = []
        #: whether Redis is known to hold every script (loaded once per connection's life)
        self._loaded = False
        self._pubsub: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()
        #: what is wrong, or None while commands and the subscription work
        self.problem: str | None = "not connected yet"
        self._commands_ok = True
        self.reconnects = 0
        #: set once the first connection is up (start-up waits for it, a while)
        self.ready = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._write(), "relay-redis-writer")
        self._spawn(self._listen(), "relay-redis-pubsub")

    def script(self, source: str) -> Script:
        """A script this bus's calls may run (``bus.call(script.run(keys, args))``)."""
        script = Script(source)
        self._scripts.append(script)
        return script

    def listen_to(self, channel: str) -> None:
        """Subscribe to ``channel`` from the next connection on, without waiting."""
        if channel not in self._channels:
            self._channels[channel] = asyncio.get_running_loop().create_future()

    async def flush(self, timeout: float = CALL_TIMEOUT_S) -> None:
        """Wait (at most ``timeout`` seconds) until every queued call was sent."""
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.warning("%d Redis calls were not sent before shutdown", self._queue.qsize())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if future is not None and not future.done():
                future.set_exception(Unavailable("relay is shutting down"))
        await self.client.aclose()

    @property
    def reachable(self) -> bool:
        """False when both the subscription and the last commands failed: a call would fail
        too (while only the subscription reconnects, commands still work). After such an
        outage it stays false until ``on_connect`` ran, even when some command (a heartbeat)
        got through first: a Redis that came back may have lost data the node must notice
        before it takes new publishes."""
        return self.problem is None or self._commands_ok

    @property
    def healthy(self) -> bool:
        return self.problem is None and self._commands_ok

    @property
    def queued(self) -> int:
        """Calls and state writes waiting for the writer."""
        return self._queue.qsize()

    def state(self) -> str:
        if self.problem is not None:
            return f"unavailable: {self.problem} ({self.where})"
        if not self._commands_ok:
            return f"unavailable: commands fail ({self.where})"
        return "ok"

    # -- commands ------------------------------------------------------------------------------

    async def call(self, apply: Apply) -> Any:
        """Queue ``apply`` (which adds one command to a pipeline); its reply, or Unavailable."""
        return await self.ask(apply)

    def ask(self, apply: Apply) -> Awaitable[Any]:
        """Queue ``apply`` now, before whatever is queued after this returns (a call's own
        queueing waits for its first await); await the result for its reply, or Unavailable."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((apply, future))
        except asyncio.QueueFull:
            future.set_exception(Unavailable(f"Redis is not keeping up: {QUEUE_SIZE} calls wait"))
        return self._reply(future)

    async def _reply(self, future: asyncio.Future[Any]) -> Any:
        # the deadline counts from here: a call queued behind a batch Redis does not answer
        # fails with it, and one not sent yet by then is never sent (the writer skips it)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await asyncio.shield(future)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()  # (answered just as the deadline passed)
            future.cancel()
            raise Unavailable(f"Redis did not answer within {CALL_TIMEOUT_S:g} s") from None

    def send(self, apply: Apply) -> None:
        """Queue ``apply`` without waiting for its reply (state written in the background)."""
        try:
            self._queue.put_nowait((apply, None))
        except asyncio.QueueFull:
            log.warning("Redis is not keeping up: a state write was dropped")
            self._commands_ok = False  # (healthy again after the next resync)

    async def _write(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            live = [item for item in batch if item[1] is None or not item[1].done()]
            if not live:  # (every caller gave up waiting: nothing of it is sent)
                for _ in batch:
                    queue.task_done()
                continue
            try:
                replies = await self._send(live)
            except asyncio.CancelledError:
                _fail(live, Unavailable("relay is shutting down"))
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._commands_ok = False
                why = str(exc) or type(exc).__name__
                log.warning("Redis commands failed (%s): %s", self.where, why)
                _fail(live, Unavailable(f"Redis is unavailable: {why}"))
                continue
            finally:
                for _ in batch:
                    queue.task_done()
            if self.problem is None:  # (else the listener's resync says so: see reachable)
                self._commands_ok = True
            for (_, future), reply in zip(live, replies, strict=True):
                if future is None or future.done():
                    if isinstance(reply, Exception):
                        log.warning("a Redis state write failed: %s", reply)
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(Unavailable(f"Redis answered an error: {reply}"))
                else:
                    future.set_result(reply)

    async def _send(self, batch: list[tuple[Apply, asyncio.Future[Any] | None]]) -> list[Any]:
        """``batch`` as one pipeline; its replies, or TimeoutError after :data:`CALL_TIMEOUT_S`
        exactly (redis-py's own clean-up of the abandoned connection happens in the
        background: it may take as long again, and nobody waits for it)."""
        # (owned: stop() cancels it, even when abandoned below)
        job = self._spawn(self._execute([apply for apply, _ in batch]))
        try:
            done, _ = await asyncio.wait({job}, timeout=CALL_TIMEOUT_S)
        except asyncio.CancelledError:
            job.cancel()
            raise
        if not done:
            job.cancel()
            job.add_done_callback(_abandoned)
            raise TimeoutError(f"Redis did not answer within {CALL_TIMEOUT_S:g} s")
        replies: list[Any] = job.result()
        return replies

    async def _execute(self, applies: list[Apply]) -> list[Any]:
        """One pipeline of ``applies``. Scripts run by SHA1 (one round trip); a Redis that
        lost them (a restart) answers NOSCRIPT without running anything, so those are loaded
        and run again."""
        if not self._loaded:
            await self._load_scripts()
        pipe = self.client.pipeline(transaction=False)
        for apply in applies:
            apply(pipe)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        again = [i for i, reply in enumerate(replies) if _noscript(reply)]
        if again:
            self._loaded = False
            await self._load_scripts()
            pipe = self.client.pipeline(transaction=False)
            for i in again:
                applies[i](pipe)
            for i, reply in zip(again, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        return replies

    async def _load_scripts(self) -> None:
        """Load every script in one round trip (one each would take as many: on a Redis far
        away, more than a call may wait)."""
        pipe = self.client.pipeline(transaction=False)
        for script in self._scripts:
            pipe.script_load(script.source)
        await pipe.execute()
        self._loaded = True

    # -- subscriptions -------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel`` and wait until Redis says so (Unavailable if it cannot)."""
        done = self._channels.get(channel)
        if done is None:
            done = self._channels[channel] = asyncio.get_running_loop().create_future()
            pubsub = self._pubsub
            if pubsub is not None:
                try:
                    async with asyncio.timeout(CALL_TIMEOUT_S):
                        await pubsub.subscribe(channel)
                except (RedisError, OSError, TimeoutError):
                    pass  # (the listener reconnects and subscribes to every channel again)
        elif done.done() and done.cancelled():
            return
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await asyncio.shield(done)
        except TimeoutError:
            raise Unavailable(f"Redis did not confirm a subscription ({self.where})") from None

    def unsubscribe(self, channel: str) -> None:
        done = self._channels.pop(channel, None)
        if done is None:
            return
        if not done.done():
            done.cancel()
        pubsub = self._pubsub
        if pubsub is not None:
            self._spawn(self._unsubscribe(pubsub, channel))

    async def _unsubscribe(self, pubsub: Any, channel: str) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                if channel not in self._channels:  # (not subscribed again meanwhile)
                    await pubsub.unsubscribe(channel)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("unsubscribing from %s failed: %s", channel, exc)

    def _spawn(self, job: Any, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(job, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _listen(self) -> None:
        backoff = BACKOFF_MIN_S
        attempt = 0
        while True:
            pubsub = self.client.pubsub()
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await pubsub.ping()  # (connects)
                    self._pubsub = pubsub  # (a subscribe() from now on goes straight to it)
                    self._loaded = False  # (a Redis that restarted holds no script)
                    loop = asyncio.get_running_loop()
                    for channel, done in list(self._channels.items()):
                        if done.done():  # confirmed on a previous connection: wait again
                            self._channels[channel] = loop.create_future()
                    if self._channels:
                        await pubsub.subscribe(*self._channels)
                async with asyncio.timeout(CALL_TIMEOUT_S * 4):
                    await self._on_connect()
                self._commands_ok = True  # (the state writes above went through)
                self.ready.set()
                if attempt:
                    log.info("Redis is back (%s) after %d attempts", self.where, attempt)
                    self.reconnects += 1
                self.problem = None
                backoff, attempt = BACKOFF_MIN_S, 0
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_TICK_S)
                    if message is not None:
                        self._received(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._pubsub = None
                attempt += 1
                self.problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning(
                    "Redis subscription lost (%s): %s; reconnecting in %.2f s (attempt %d)",
                    self.where,
                    self.problem,
                    backoff,
                    attempt,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                self._pubsub = None
                try:
                    async with asyncio.timeout(1):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError, TimeoutError):
                    pass

    def _received(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind == "message":
            try:
                self._on_message(channel, message["data"])
            except Exception:
                log.exception("handling a message on %s", channel)
        elif kind == "subscribe":
            done = self._channels.get(channel)
            if done is not None and not done.done():
                done.set_result(None)


def _noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)


def _abandoned(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()  # (retrieved: it failed after its callers were answered)


def _fail(batch: list[tuple[Apply, asyncio.Future[Any] | None]], exc: Exception) -> None:
    for _, future in batch:
        if future is not None and not future.done():
            future.set_exception(exc)
