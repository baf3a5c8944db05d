"""One ``Settings`` object, built once at the edge from flags and the environment.

Nothing else in relay reads ``os.environ``: :func:`Settings.from_env` takes any mapping, so
tests pass a plain dict. Every parser fails loudly, naming the variable and the value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.errors import ConfigError
from relay.limits import Rate, parse_rate

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
}  # fmt: skip
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parse_size(key: str, raw: str) -> int:
    """``"65536"``, ``"64KiB"``, ``"1MB"`` -> bytes."""
    m = _SIZE_RE.fullmatch(raw)
    if m is None:
        raise ConfigError(f"{key}={raw!r} is not a size (try 65536, 64KiB or 1MiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def parse_duration(key: str, raw: str) -> float:
    """``"600"``, ``"600s"``, ``"10m"``, ``"250ms"`` -> seconds."""
    m = _DURATION_RE.fullmatch(raw)
    if m is None:
        raise ConfigError(f"{key}={raw!r} is not a duration (try 600, 600s, 10m or 250ms)")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]


def parse_byte_rate(key: str, raw: str) -> Rate:
    """Bytes a second, and the burst: ``"8MiB/s,32MiB"``, ``"1MB"``, ``"0"``."""
    return parse_rate(key, raw, lambda text: float(parse_size(key, text)))


def parse_int(key: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer") from None


def parse_port(key: str, raw: str) -> int:
    port = parse_int(key, raw)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}={raw!r} is not a port (0-65535)")
    return port


def parse_str(key: str, raw: str) -> str:
    return raw.strip()


def parse_log_level(key: str, raw: str) -> str:
    level = raw.strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{key}={raw!r} is not a log level (one of {', '.join(LOG_LEVELS)})")
    return level


def parse_log_format(key: str, raw: str) -> str:
    fmt = raw.strip().lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"{key}={raw!r} is not a log format (one of {', '.join(LOG_FORMATS)})")
    return fmt


def parse_header_names(key: str, raw: str) -> tuple[str, ...]:
    """Comma-separated HTTP header names (``Cookie,X-Tenant``), kept lowercase."""
    headers = tuple(dict.fromkeys(h.strip().lower() for h in raw.split(",") if h.strip()))
    for header in headers:
        if not re.fullmatch(r"[a-z0-9!#$%&'*+\-.^_`|~]{1,64}", header):
            raise ConfigError(f"{key}={raw!r}: {header!r} is not an HTTP header name")
    return headers


def parse_origins(key: str, raw: str) -> tuple[str, ...]:
    """Comma-separated origins; ``*`` allows any origin."""
    origins = tuple(o.strip() for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^\s/]+", origin):
            raise ConfigError(
                f"{key}={raw!r}: {origin!r} is not an origin (like https://example.com, or *)"
            )
    return origins


def parse_optional(key: str, raw: str) -> str | None:
    return raw.strip() or None


def parse_url(key: str, raw: str) -> str | None:
    """An ``http://`` or ``https://`` URL with a host, or ``None`` for an empty value."""
    url = raw.strip()
    if not url:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(?:[/?#]\S*)?", url):
        raise ConfigError(f"{key}={raw!r} is not an http(s) URL (like https://example.com/hooks)")
    return url


def parse_patterns(key: str, raw: str) -> tuple[str, ...]:
    """Comma-separated event-name patterns (``*`` matches any run): ``chat.*,typing``."""
    patterns = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    for pattern in patterns:
        if not re.fullmatch(r"[A-Za-z0-9_\-.:@/*]{1,64}", pattern):
            raise ConfigError(
                f"{key}={raw!r}: {pattern!r} is not an event-name pattern"
                " (1-64 letters, digits, _-.:@/ and *, e.g. chat.*)"
            )
    return patterns


def parse_redis_url(key: str, raw: str) -> str | None:
    """``redis://[user:pass@]host[:port][/db]`` or ``rediss://`` (TLS); blank is unset."""
    url = raw.strip()
    if not url:
        return None
    if not re.match(r"rediss?://[^\s/]", url):
        raise ConfigError(f"{key}={raw!r} is not a Redis URL (redis://host:6379 or rediss://...)")
    return url


def parse_bool(key: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={raw!r} is not a boolean (true or false)")


PUBLISH_RATE = Rate(100.0, 200.0)
JOIN_RATE = Rate(20.0, 100.0)
DELIVERY_RATE = Rate(20_000.0, 40_000.0)
INBOUND_RATE = Rate(8 * 1024 * 1024, 32 * 1024 * 1024)
CONNECT_RATE = Rate(20.0, 100.0)
API_RATE = Rate(1000.0, 2000.0)


@dataclass(frozen=True)
class Settings:
    """Everything relay can be told; defaults are the embedded, in-memory setup."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    max_payload: int = 64 * 1024
    max_frame: int = 1024 * 1024
    history_size: int = 1000
    history_ttl: float = 600.0
    cors_origins: tuple[str, ...] = ("*",)
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_buffer: int = 4 * 1024 * 1024
    shutdown_timeout: float = 10.0
    recovery_ttl: float = 120.0  # connection state recovery window; 0 turns it off
    secret: str | None = None
    api_key: str | None = None
    #: cluster mode: several relays sharing this Redis behave as one (relay.backends.redis)
    redis_url: str | None = None
    #: verify a ``rediss://`` server's certificate (Heroku's Redis add-on presents a
    #: self-signed one: its app.json turns this off; anywhere else keep it on)
    redis_tls_verify: bool = True
    #: cluster mode: a node whose heartbeat is this old is dead, and its members are removed
    node_timeout: float = 15.0
    # -- limits: what one client may make the server hold or do (0 turns a cap or a rate off) --
    #: bytes of history kept across all rooms; past it the biggest room's oldest messages go
    #: (cluster mode: every node's rooms, in Redis: relay.backends.scripts)
    history_max_bytes: int = 64 * 1024 * 1024
    #: bytes kept for every dropped connection awaiting recovery together
    recovery_max_bytes: int = 64 * 1024 * 1024
    #: rooms the server keeps (with members or with history; cluster mode: the cluster's)
    max_rooms: int = 50_000
    #: rooms one connection may be in at once
    max_rooms_per_connection: int = 100
    #: TCP connections open at once (HTTP and websocket), and from one client IP
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    #: per connection: ``publish`` and ``direct`` events; ``join`` and ``presence`` events
    publish_rate: Rate = PUBLISH_RATE
    join_rate: Rate = JOIN_RATE
    #: per connection: deliveries its publishes cause (a publish to N members costs N)
    delivery_rate: Rate = DELIVERY_RATE
    #: per client IP: new connections
    connect_rate: Rate = CONNECT_RATE
    #: per client IP: bytes received (websocket frames, request bodies); past it, relay stops
    #: reading from that IP's connections until the rate allows (TCP slows the sender down)
    inbound_rate: Rate = INBOUND_RATE
    #: per API key (per client IP when no key is set): HTTP API requests
    api_rate: Rate = API_RATE
    #: seconds a client has to send a request's headers (and then its body)
    header_timeout: float = 10.0
    #: seconds an Engine.IO session may stay open without a Socket.IO CONNECT
    connect_timeout: float = 10.0
    #: processes a platform asks for (Heroku sets WEB_CONCURRENCY by dyno size): relay's rooms
    #: live in memory, so it runs one and says so when asked for more
    web_concurrency: int = 1
    #: processes serving one port (``relay serve --workers``); 0: WEB_CONCURRENCY when Redis
    #: joins them (cluster mode), else 1. More than one needs Redis (see :meth:`processes`)
    workers: int = 0
    #: take the client's IP from the last X-Forwarded-For entry (behind Heroku's router, a
    #: load balancer); off, the socket's peer is the client
    trust_proxy: bool = False
    # -- webhooks (relay.core.webhooks): on when a URL is set; a URL needs a secret --
    webhook_url: str | None = None
    webhook_secret: str | None = None
    #: event-name patterns of client publishes to report (none: publishes are not reported)
    webhook_publish: tuple[str, ...] = ()
    #: events waiting to be sent; past it new events are dropped (and counted)
    webhook_queue: int = 10_000
    #: events in one request at most, and how long the first of a batch waits for company
    webhook_batch: int = 100
    webhook_linger: float = 0.05
    #: seconds one request may take; how long a batch is retried before its events are dropped
    webhook_timeout: float = 10.0
    webhook_retry_for: float = 60.0
    #: the key GET /metrics needs (as a bearer token); unset: RELAY_API_KEY, when that is set
    metrics_key: str | None = None
    # -- the connect hook (relay.connecthook): on when a URL is set; signed like webhooks --
    connect_hook_url: str | None = None
    #: the key requests are signed with; unset: RELAY_WEBHOOK_SECRET
    connect_hook_secret: str | None = None
    #: seconds the backend has to answer; handshake headers passed along (lowercase names)
    connect_hook_timeout: float = 3.0
    connect_hook_headers: tuple[str, ...] = ()
    #: hook requests in flight at once; a connect past it is refused ``unavailable``
    connect_hook_concurrency: int = 100
    #: ``text`` (uvicorn's lines) or ``json`` (one object a line: relay.logjson)
    log_format: str = "text"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``env`` (``PORT``, ``RELAY_*``, ``REDIS_URL``), then ``overrides``.

        Overrides are values already parsed (CLI flags); ``None`` means "not given".
        """
        values: dict[str, Any] = {}
        given: dict[str, str] = {}
        for name, (key, parse) in ENV_KEYS.items():
            raw = env.get(key)
            alias = ENV_ALIASES.get(name)
            if alias is not None and (env.get(alias) or "").strip():
                key, raw = alias, env[alias]  # (the relay-specific name wins)
            if raw is not None and raw.strip() != "":
                values[name] = parse(key, raw)
                given[key] = raw
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
                if name in ENV_KEYS:
                    given.pop(ENV_KEYS[name][0], None)  # the flag won over the variable
        settings = cls(**values)
        settings.check(given)
        return settings

    def processes(self) -> int:
        """How many processes serve the port: ``workers`` when set; else WEB_CONCURRENCY in
        cluster mode (Heroku sets it by dyno size); else one (WEB_CONCURRENCY without Redis
        would split one relay into several that do not see each other: relay runs one and
        warns, rather than refuse to start on a platform that set it by itself)."""
        if self.workers:
            return self.workers
        return self.web_concurrency if self.redis_url else 1

    def check(self, given: Mapping[str, str] | None = None) -> None:
        """Reject combinations no server could run with.

        ``given`` maps variables to the text they were set to, so a message shows what the user
        wrote (``'0ms'``) rather than the parsed value (``0.0``).
        """
        given = given or {}
        limits: list[tuple[str, float, float]] = [
            ("RELAY_MAX_PAYLOAD", self.max_payload, 1),
            ("RELAY_HISTORY_TTL", self.history_ttl, 0),
            ("RELAY_HISTORY_SIZE", self.history_size, 0),
            ("RELAY_PING_INTERVAL", self.ping_interval, 0.01),
            ("RELAY_PING_TIMEOUT", self.ping_timeout, 0.01),
            ("RELAY_MAX_BUFFER", self.max_buffer, 1024),
            ("RELAY_RECOVERY_TTL", self.recovery_ttl, 0),
            ("RELAY_HISTORY_MAX_BYTES", self.history_max_bytes, 0),
            ("RELAY_MAX_ROOMS", self.max_rooms, 0),
            ("RELAY_RECOVERY_MAX_BYTES", self.recovery_max_bytes, 0),
            ("RELAY_MAX_ROOMS_PER_CONNECTION", self.max_rooms_per_connection, 0),
            ("RELAY_MAX_CONNECTIONS", self.max_connections, 0),
            ("RELAY_MAX_CONNECTIONS_PER_IP", self.max_connections_per_ip, 0),
            ("RELAY_HEADER_TIMEOUT", self.header_timeout, 0.01),
            ("WEB_CONCURRENCY", self.web_concurrency, 1),
            ("RELAY_WORKERS", self.workers, 0),
            ("RELAY_CONNECT_TIMEOUT", self.connect_timeout, 0.01),
            ("RELAY_WEBHOOK_QUEUE", self.webhook_queue, 1),
            ("RELAY_WEBHOOK_BATCH", self.webhook_batch, 1),
            ("RELAY_WEBHOOK_LINGER", self.webhook_linger, 0),
            ("RELAY_WEBHOOK_TIMEOUT", self.webhook_timeout, 0.01),
            ("RELAY_WEBHOOK_RETRY_FOR", self.webhook_retry_for, 0),
            ("RELAY_CONNECT_HOOK_TIMEOUT", self.connect_hook_timeout, 0.01),
            ("RELAY_CONNECT_HOOK_CONCURRENCY", self.connect_hook_concurrency, 1),
            ("RELAY_NODE_TIMEOUT", self.node_timeout, 0.3),
        ]
        for key, value, low in limits:
            if value < low:
                raise ConfigError(f"{key}={given.get(key, value)!r} must be at least {low}")
        if self.max_payload > self.max_frame - 1024:
            shown = given.get("RELAY_MAX_PAYLOAD", self.max_payload)
            raise ConfigError(
                f"RELAY_MAX_PAYLOAD={shown!r} must leave room for the envelope "
                f"inside the {self.max_frame}-byte transport limit"
            )
        if self.workers > 1 and self.redis_url is None:
            raise ConfigError(
                f"RELAY_WORKERS={given.get('RELAY_WORKERS', self.workers)!r} needs Redis"
                " (REDIS_URL): without it each process would be a separate relay whose clients"
                " never meet; set REDIS_URL, or run one worker"
            )
        if self.secret is not None and self.api_key is None:
            raise ConfigError(
                "RELAY_SECRET is set but RELAY_API_KEY is not: with a secret, the HTTP API needs"
                " a key too (set RELAY_API_KEY, e.g. to the output of `openssl rand -hex 32`)"
            )

        if self.webhook_url is not None and self.webhook_secret is None:
            raise ConfigError(
                "RELAY_WEBHOOK_URL is set but RELAY_WEBHOOK_SECRET is not: webhooks are signed"
                " (set RELAY_WEBHOOK_SECRET, e.g. to the output of `openssl rand -hex 32`)"
            )

        self._check_connect_hook(given)

    def _check_connect_hook(self, given: Mapping[str, str]) -> None:
        if self.connect_hook_url is None:
            return
        if self.connect_hook_secret is None and self.webhook_secret is None:
            raise ConfigError(
                "RELAY_CONNECT_HOOK_URL is set but neither RELAY_CONNECT_HOOK_SECRET nor"
                " RELAY_WEBHOOK_SECRET is: hook requests are signed (set one, e.g. to the"
                " output of `openssl rand -hex 32`)"
            )
        if self.connect_hook_timeout >= self.connect_timeout:
            shown = given.get("RELAY_CONNECT_HOOK_TIMEOUT", self.connect_hook_timeout)
            raise ConfigError(
                f"RELAY_CONNECT_HOOK_TIMEOUT={shown!r} must be shorter than"
                f" RELAY_CONNECT_TIMEOUT ({self.connect_timeout:g} s): a client waits for both"
            )

    @property
    def connect_hook_key(self) -> str | None:
        """The secret hook requests are signed with (its own, else the webhooks')."""
        return self.connect_hook_secret or self.webhook_secret

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


ENV_KEYS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "host": ("RELAY_HOST", parse_str),
    "port": ("PORT", parse_port),
    "log_level": ("RELAY_LOG_LEVEL", parse_log_level),
    "max_payload": ("RELAY_MAX_PAYLOAD", parse_size),
    "history_size": ("RELAY_HISTORY_SIZE", parse_int),
    "history_ttl": ("RELAY_HISTORY_TTL", parse_duration),
    "cors_origins": ("RELAY_CORS_ORIGINS", parse_origins),
    "ping_interval": ("RELAY_PING_INTERVAL", parse_duration),
    "ping_timeout": ("RELAY_PING_TIMEOUT", parse_duration),
    "max_buffer": ("RELAY_MAX_BUFFER", parse_size),
    "shutdown_timeout": ("RELAY_SHUTDOWN_TIMEOUT", parse_duration),
    "recovery_ttl": ("RELAY_RECOVERY_TTL", parse_duration),
    "secret": ("RELAY_SECRET", parse_optional),
    "api_key": ("RELAY_API_KEY", parse_optional),
    "redis_url": ("REDIS_URL", parse_redis_url),
    "redis_tls_verify": ("RELAY_REDIS_TLS_VERIFY", parse_bool),
    "node_timeout": ("RELAY_NODE_TIMEOUT", parse_duration),
    "history_max_bytes": ("RELAY_HISTORY_MAX_BYTES", parse_size),
    "max_rooms": ("RELAY_MAX_ROOMS", parse_int),
    "recovery_max_bytes": ("RELAY_RECOVERY_MAX_BYTES", parse_size),
    "max_rooms_per_connection": ("RELAY_MAX_ROOMS_PER_CONNECTION", parse_int),
    "max_connections": ("RELAY_MAX_CONNECTIONS", parse_int),
    "max_connections_per_ip": ("RELAY_MAX_CONNECTIONS_PER_IP", parse_int),
    "publish_rate": ("RELAY_PUBLISH_RATE", parse_rate),
    "join_rate": ("RELAY_JOIN_RATE", parse_rate),
    "delivery_rate": ("RELAY_DELIVERY_RATE", parse_rate),
    "inbound_rate": ("RELAY_INBOUND_RATE", parse_byte_rate),
    "connect_rate": ("RELAY_CONNECT_RATE", parse_rate),
    "api_rate": ("RELAY_API_RATE", parse_rate),
    "header_timeout": ("RELAY_HEADER_TIMEOUT", parse_duration),
    "connect_timeout": ("RELAY_CONNECT_TIMEOUT", parse_duration),
    "trust_proxy": ("RELAY_TRUST_PROXY", parse_bool),
    "web_concurrency": ("WEB_CONCURRENCY", parse_int),
    "workers": ("RELAY_WORKERS", parse_int),
    "webhook_url": ("RELAY_WEBHOOK_URL", parse_url),
    "webhook_secret": ("RELAY_WEBHOOK_SECRET", parse_optional),
    "webhook_publish": ("RELAY_WEBHOOK_PUBLISH", parse_patterns),
    "webhook_queue": ("RELAY_WEBHOOK_QUEUE", parse_int),
    "webhook_batch": ("RELAY_WEBHOOK_BATCH", parse_int),
    "webhook_linger": ("RELAY_WEBHOOK_LINGER", parse_duration),
    "webhook_timeout": ("RELAY_WEBHOOK_TIMEOUT", parse_duration),
    "webhook_retry_for": ("RELAY_WEBHOOK_RETRY_FOR", parse_duration),
    "metrics_key": ("RELAY_METRICS_KEY", parse_optional),
    "connect_hook_url": ("RELAY_CONNECT_HOOK_URL", parse_url),
    "connect_hook_secret": ("RELAY_CONNECT_HOOK_SECRET", parse_optional),
    "connect_hook_timeout": ("RELAY_CONNECT_HOOK_TIMEOUT", parse_duration),
    "connect_hook_headers": ("RELAY_CONNECT_HOOK_HEADERS", parse_header_names),
    "connect_hook_concurrency": ("RELAY_CONNECT_HOOK_CONCURRENCY", parse_int),
    "log_format": ("RELAY_LOG_FORMAT", parse_log_format),
}

#: a second variable for a setting, read instead of ``ENV_KEYS``'s when set: REDIS_URL is what
#: Redis add-ons set, RELAY_REDIS_URL picks another Redis (or one for relay alone) beside it
ENV_ALIASES: dict[str, str] = {"redis_url": "RELAY_REDIS_URL"}
