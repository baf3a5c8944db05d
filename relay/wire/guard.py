"""The transport edge's limits: connections in total and per client IP, new connections per IP
per second, and how long a client may take to send its request headers (and then its body).

One :class:`EdgeGuard` per application (``app.state.edge``) holds the counts; the HTTP
protocol (:class:`relay.wire.http.HttpProtocol`) asks it about every TCP connection it accepts
and tells it when one ends, and :class:`relay.wire.websocket.FastWebSocketProtocol` takes the
connection's place in the count when it upgrades, so each connection is counted from accept to
close exactly once.

- ``max_connections``: past it a new connection is answered ``503 unavailable`` and closed at
  once, before a byte of its request is read.
- ``max_connections_per_ip``: past it, ``429 rate_limited`` and closed. The IP is the socket's
  peer, looked up when the connection is accepted; behind a proxy (``trust_proxy``) it is the
  last ``X-Forwarded-For`` entry, so it is checked once the first request's headers are
  complete, and counted until that TCP connection closes.
- ``connect_rate`` (a token bucket per IP) counts new Engine.IO sessions, not TCP connections:
  an HTTP client without keep-alive (Node's long-polling transport, a serverless function
  calling the API) opens a TCP connection per request, which is not a new client.
  :meth:`EdgeGuard.session` is asked by the Engine.IO server (relay.wire.engine) when a session
  opens; past the rate, ``429 rate_limited`` with ``Retry-After``.
- ``inbound_rate`` (bytes a second, a token bucket per IP shared by its connections): a
  connection whose read puts its IP's bucket in debt stops reading until the debt is paid, so
  TCP slows the sender down. Nothing is refused or dropped; a flood of large publishes from
  many connections of one IP costs the server what the rate allows, not what the network can
  carry. (Without an IP, with the per-IP cap off and no proxy, each connection has its own.)
- ``header_timeout``: from accept (or from the first byte of a keep-alive connection's next
  request) until the request's headers are complete, and again until its body is: past it the
  connection is closed, with a ``408`` when nothing of a response was sent yet. One timer per
  server sweeps the connections that are waiting, so a connection costs a dictionary entry,
  not a timer of its own. (The idle time between keep-alive requests is uvicorn's
  ``timeout_keep_alive``.)

The guard is bookkeeping only; the protocol writes the answers. Every refusal has the
contract's error body, ``{"error": {"code", "message"}}``, naming the setting that refused it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import orjson

from relay.errors import RateLimited, RelayError, Unavailable
from relay.limits import Bucket, Buckets, PerKeyCount
from relay.settings import Settings

log = logging.getLogger("relay.wire.guard")

#: seconds between two warnings about the same kind of refusal (a flood logs a line, not a flood)
LOG_EVERY = 60.0


class Watched(Protocol):
    """A connection the header timeout may end (:meth:`relay.wire.http.HttpProtocol.timed_out`)."""

    def timed_out(self) -> None: ...


class EdgeGuard:
    """Counts and caps for every TCP connection the server accepts (HTTP and websocket)."""

    def __init__(self, settings: Settings, clock: Any = time.monotonic) -> None:
        self.settings = settings
        self.max_connections = settings.max_connections
        self.open = 0
        #: connections per IP: kept only when a per-IP limit needs the IP (else no look-up)
        self.per_ip = PerKeyCount(settings.max_connections_per_ip)
        self.rates = Buckets(settings.connect_rate, clock=clock)
        self.trust_proxy = settings.trust_proxy
        self.inbound_rate = settings.inbound_rate
        #: per IP: the inbound byte bucket its connections share (relay.wire.websocket meters a
        #: connection's reads against it once it has received 16 KiB)
        self.inbound = Buckets(settings.inbound_rate, clock=clock)
        self.by_ip = bool(settings.max_connections_per_ip or self.trust_proxy)
        #: the peer address decides the IP (no proxy in front): checked at accept
        self.ip_at_accept = self.by_ip and not self.trust_proxy
        self.refused = {"max_connections": 0, "max_connections_per_ip": 0, "connect_rate": 0}
        self.header_timeouts = 0
        #: times a connection stopped reading to keep its IP to the inbound rate
        self.throttled = 0
        self.header_timeout = settings.header_timeout
        #: connections waiting for their headers or body -> when they must have them
        self.waiting: dict[Watched, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._logged: dict[str, float] = {}

    # -- connections ---------------------------------------------------------------------------

    def accept(
        self, conn: Watched, ip: str | None, loop: asyncio.AbstractEventLoop
    ) -> bytes | None:
        """A TCP connection from ``ip`` was accepted: count it and put its request's headers on
        the clock; or the answer that refuses it (then nothing was counted: write it, close).

        ``ip`` is None when no per-IP limit needs it at accept (:attr:`ip_at_accept`: none is
        set, or behind a proxy, where :meth:`admit` counts the IP once the headers are in).
        One call per connection, on every connect's path.
        """
        if self.max_connections and self.open >= self.max_connections:
            return self._refuse(
                "max_connections",
                Unavailable(
                    f"the server has {self.open} connections open, its limit"
                    f" (RELAY_MAX_CONNECTIONS={self.max_connections}): try again later"
                ),
            )
        if ip is not None:
            answer = self.admit(ip)
            if answer is not None:
                return answer
        self.open += 1
        self.waiting[conn] = loop.time() + self.header_timeout
        if self._timer is None:
            self._timer = loop.call_later(self._interval(), self._sweep, loop)
        return None

    def session(self, ip: str) -> RateLimited | None:
        """A new Engine.IO session from ``ip``: None when the connect rate allows it, else the
        error refusing it (counted and logged here; the engine answers it)."""
        wait = self.rates.take(ip)
        if not wait:
            return None
        rate = self.rates.rate
        error = RateLimited(
            f"too many new connections from {ip}: at most {rate.per_s:g} a second, in"
            f" bursts of {rate.burst:g} (RELAY_CONNECT_RATE); retry in {wait:.3f} s",
            retry_after=wait,
        )
        self._count_refusal("connect_rate", error)
        return error

    def admit(self, ip: str) -> bytes | None:
        """Count a connection under ``ip`` (from :meth:`accept`, or behind a proxy once its
        headers are in, for a connection :meth:`accept` counted), or the answer refusing it."""
        if not self.per_ip.acquire(ip):
            return self._refuse(
                "max_connections_per_ip",
                RateLimited(
                    f"too many connections from {ip}: at most {self.per_ip.limit} open at once"
                    " (RELAY_MAX_CONNECTIONS_PER_IP)"
                ),
            )
        return None

    def release(self, ip: str | None) -> None:
        """A connection counted by :meth:`accept` (and by :meth:`admit` for ``ip``) closed."""
        self.open -= 1
        if ip is not None:
            self.per_ip.release(ip)

    def inbound_bucket(self, ip: str | None, conn: Any) -> Bucket:
        """The inbound byte bucket of a connection from ``ip``, shared with the IP's other
        connections; ``conn``'s own peer address when no IP was counted for it (no per-IP
        limit needed it at accept)."""
        if ip is None:
            client = getattr(conn, "client", None)
            ip = client[0] if client else "?"
        return self.inbound.bucket(ip)

    def _refuse(self, reason: str, error: RelayError) -> bytes:
        self._count_refusal(reason, error)
        return refusal(error)

    def _count_refusal(self, reason: str, error: RelayError) -> None:
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY) >= LOG_EVERY:
            self._logged[reason] = now
            log.warning("refusing connections: %s (counts in /healthz under edge)", error.message)

    # -- the header timeout --------------------------------------------------------------------

    def watch(self, conn: Watched, loop: asyncio.AbstractEventLoop) -> None:
        """``conn`` must have its request's headers (or body) within ``header_timeout``."""
        self.waiting[conn] = loop.time() + self.header_timeout
        if self._timer is None:
            self._timer = loop.call_later(self._interval(), self._sweep, loop)

    def unwatch(self, conn: Watched) -> None:
        self.waiting.pop(conn, None)

    def _interval(self) -> float:
        # a timeout is enforced at most a quarter late (and never checked more than 20x a second)
        return min(1.0, max(0.05, self.header_timeout / 4))

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        late = [conn for conn, deadline in self.waiting.items() if deadline <= now]
        for conn in late:
            del self.waiting[conn]
            self.header_timeouts += 1
            try:
                conn.timed_out()
            except Exception:
                log.exception("closing a connection past its header timeout")
        if self.waiting:
            self._timer = loop.call_later(self._interval(), self._sweep, loop)

    # -- /healthz ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``/healthz`` shows of the edge: connections open, per IP, refused."""
        return {
            "connections": self.open,
            "max_connections": self.max_connections,
            "max_connections_per_ip": self.per_ip.limit,
            "connect_rate": str(self.rates.rate),
            "inbound_rate": str(self.inbound_rate),
            "inbound_throttled": self.throttled,
            "trust_proxy": self.trust_proxy,
            # (None: no per-IP limit is set, so IPs are not looked up)
            "ips": len(self.per_ip) if self.by_ip else None,
            "busiest_ip_connections": self.per_ip.busiest() if self.by_ip else None,
            "refused": dict(self.refused),
            "header_timeout_s": self.header_timeout,
            "waiting_for_request": len(self.waiting),
            "header_timeouts": self.header_timeouts,
        }


_PHRASES = {408: b"Request Timeout", 429: b"Too Many Requests", 503: b"Service Unavailable"}


def refusal(error: RelayError, status: int | None = None) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` as the contract's error body, after which
    the connection closes."""
    status = status or error.http_status
    body = refusal_body(error)
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES.get(status, b"")),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % max(1, round(retry_after + 0.5)))
    return b"".join([*head, b"\r\n", body])


def refusal_body(error: RelayError) -> bytes:
    """The contract's error body for ``error``."""
    return orjson.dumps({"error": error.to_dict()})


def guard_of(app: Any) -> EdgeGuard | None:
    """The :class:`EdgeGuard` of ``app`` (``app.state.edge``), or of an application it wraps
    (``.app``: uvicorn's middlewares); None when there is none."""
    for _ in range(8):
        state = getattr(app, "state", None)
        edge = getattr(state, "edge", None) if state is not None else None
        if isinstance(edge, EdgeGuard):
            return edge
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def forwarded_ip(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The last ``X-Forwarded-For`` entry of (lower-cased) ``headers``: what the trusted proxy in
    front of us saw as the client (earlier entries are the client's own say, and unchecked)."""
    value = None
    for name, raw in headers:
        if name == b"x-forwarded-for":
            value = raw
    if value is None:
        return None
    last = value.rpartition(b",")[2].strip()
    return last.decode("latin-1")[:64] or None


__all__ = ["EdgeGuard", "forwarded_ip", "guard_of", "refusal", "refusal_body"]
