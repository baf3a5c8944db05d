"""relay.settings: every variable parsed from a plain mapping; bad values named with their key."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import ConfigError
from relay.limits import OFF, Rate
from relay.settings import ENV_KEYS, Settings

VALID: list[tuple[str, str, str, Any]] = [
    ("RELAY_HOST", " 0.0.0.0 ", "host", "0.0.0.0"),
    ("PORT", "8080", "port", 8080),
    ("PORT", "0", "port", 0),
    ("RELAY_LOG_LEVEL", "DEBUG", "log_level", "debug"),
    ("RELAY_LOG_LEVEL", "trace", "log_level", "trace"),
    ("RELAY_MAX_PAYLOAD", "65536", "max_payload", 65536),
    ("RELAY_MAX_PAYLOAD", "64KiB", "max_payload", 65536),
    ("RELAY_MAX_PAYLOAD", "64 kb", "max_payload", 64000),
    ("RELAY_MAX_PAYLOAD", "0.5MiB", "max_payload", 524288),
    ("RELAY_MAX_PAYLOAD", "100b", "max_payload", 100),
    ("RELAY_HISTORY_SIZE", "50", "history_size", 50),
    ("RELAY_HISTORY_SIZE", "0", "history_size", 0),
    ("RELAY_HISTORY_TTL", "600", "history_ttl", 600.0),
    ("RELAY_HISTORY_TTL", "10m", "history_ttl", 600.0),
    ("RELAY_HISTORY_TTL", "250ms", "history_ttl", 0.25),
    ("RELAY_HISTORY_TTL", "1h", "history_ttl", 3600.0),
    ("RELAY_HISTORY_TTL", "1.5s", "history_ttl", 1.5),
    ("RELAY_CORS_ORIGINS", "*", "cors_origins", ("*",)),
    (
        "RELAY_CORS_ORIGINS",
        "https://a.example, http://localhost:3000",
        "cors_origins",
        ("https://a.example", "http://localhost:3000"),
    ),
    ("RELAY_PING_INTERVAL", "5s", "ping_interval", 5.0),
    ("RELAY_PING_TIMEOUT", "2500ms", "ping_timeout", 2.5),
    ("RELAY_MAX_BUFFER", "8MiB", "max_buffer", 8 * 1024 * 1024),
    ("RELAY_SHUTDOWN_TIMEOUT", "3", "shutdown_timeout", 3.0),
    ("RELAY_RECOVERY_TTL", "2m", "recovery_ttl", 120.0),
    ("RELAY_SECRET", "s3cret", "secret", "s3cret"),
    ("RELAY_SECRET", "  ", "secret", None),
    ("RELAY_API_KEY", "key", "api_key", "key"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0", "redis_url", "redis://127.0.0.1:6379/0"),
    ("REDIS_URL", "rediss://:pw@example.com:25061", "redis_url", "rediss://:pw@example.com:25061"),
    ("RELAY_REDIS_TLS_VERIFY", "false", "redis_tls_verify", False),
    ("RELAY_NODE_TIMEOUT", "5s", "node_timeout", 5.0),
    ("RELAY_HISTORY_MAX_BYTES", "256MiB", "history_max_bytes", 256 * 1024 * 1024),
    ("RELAY_MAX_ROOMS", "1000", "max_rooms", 1000),
    ("RELAY_RECOVERY_MAX_BYTES", "8MiB", "recovery_max_bytes", 8 * 1024 * 1024),
    ("RELAY_MAX_ROOMS_PER_CONNECTION", "0", "max_rooms_per_connection", 0),
    ("RELAY_MAX_CONNECTIONS", "20000", "max_connections", 20000),
    ("RELAY_MAX_CONNECTIONS_PER_IP", "50", "max_connections_per_ip", 50),
    ("RELAY_PUBLISH_RATE", "10/s,30", "publish_rate", Rate(10.0, 30.0)),
    ("RELAY_PUBLISH_RATE", "50", "publish_rate", Rate(50.0, 100.0)),
    ("RELAY_JOIN_RATE", "off", "join_rate", OFF),
    ("RELAY_DELIVERY_RATE", "5000/s,8000", "delivery_rate", Rate(5000.0, 8000.0)),
    ("RELAY_INBOUND_RATE", "1MiB/s,4MiB", "inbound_rate", Rate(1048576.0, 4194304.0)),
    ("RELAY_INBOUND_RATE", "64KiB", "inbound_rate", Rate(65536.0, 131072.0)),
    ("RELAY_CONNECT_RATE", "120/m", "connect_rate", Rate(2.0, 4.0)),
    ("RELAY_API_RATE", "0", "api_rate", OFF),
    ("RELAY_HEADER_TIMEOUT", "5s", "header_timeout", 5.0),
    ("RELAY_CONNECT_TIMEOUT", "2500ms", "connect_timeout", 2.5),
    ("RELAY_TRUST_PROXY", "true", "trust_proxy", True),
    ("RELAY_TRUST_PROXY", "0", "trust_proxy", False),
    ("WEB_CONCURRENCY", "4", "web_concurrency", 4),
    ("RELAY_WORKERS", "1", "workers", 1),
    ("RELAY_WEBHOOK_URL", "https://example.com/hooks", "webhook_url", "https://example.com/hooks"),
    ("RELAY_WEBHOOK_SECRET", "whsec", "webhook_secret", "whsec"),
    ("RELAY_WEBHOOK_PUBLISH", "chat.*, typing", "webhook_publish", ("chat.*", "typing")),
    ("RELAY_WEBHOOK_QUEUE", "500", "webhook_queue", 500),
    ("RELAY_WEBHOOK_BATCH", "10", "webhook_batch", 10),
    ("RELAY_WEBHOOK_LINGER", "20ms", "webhook_linger", 0.02),
    ("RELAY_WEBHOOK_TIMEOUT", "2s", "webhook_timeout", 2.0),
    ("RELAY_WEBHOOK_RETRY_FOR", "1m", "webhook_retry_for", 60.0),
    ("RELAY_METRICS_KEY", "scrape", "metrics_key", "scrape"),
    (
        "RELAY_CONNECT_HOOK_URL",
        "https://example.com/connect",
        "connect_hook_url",
        "https://example.com/connect",
    ),
    ("RELAY_CONNECT_HOOK_SECRET", "hksec", "connect_hook_secret", "hksec"),
    ("RELAY_CONNECT_HOOK_TIMEOUT", "500ms", "connect_hook_timeout", 0.5),
    (
        "RELAY_CONNECT_HOOK_HEADERS",
        "Cookie, X-Tenant,cookie",
        "connect_hook_headers",
        ("cookie", "x-tenant"),
    ),
    ("RELAY_CONNECT_HOOK_CONCURRENCY", "8", "connect_hook_concurrency", 8),
    ("RELAY_LOG_FORMAT", "JSON", "log_format", "json"),
]

#: variables that only make sense with another one set (RELAY_SECRET needs RELAY_API_KEY)
COMPANIONS = {
    "RELAY_SECRET": {"RELAY_API_KEY": "key"},
    "RELAY_WEBHOOK_URL": {"RELAY_WEBHOOK_SECRET": "whsec"},
    "RELAY_CONNECT_HOOK_URL": {"RELAY_CONNECT_HOOK_SECRET": "hksec"},
}

INVALID: list[tuple[str, str]] = [
    ("PORT", "http"),
    ("PORT", "70000"),
    ("PORT", "-1"),
    ("RELAY_LOG_LEVEL", "loud"),
    ("RELAY_MAX_PAYLOAD", "abc"),
    ("RELAY_MAX_PAYLOAD", "12 parsecs"),
    ("RELAY_MAX_PAYLOAD", "-5"),
    ("RELAY_MAX_PAYLOAD", "0"),
    ("RELAY_MAX_PAYLOAD", "2MiB"),  # does not fit in the 1 MiB transport limit
    ("RELAY_HISTORY_SIZE", "abc"),
    ("RELAY_HISTORY_SIZE", "1.5"),
    ("RELAY_HISTORY_SIZE", "-1"),
    ("RELAY_HISTORY_TTL", "soon"),
    ("RELAY_HISTORY_TTL", "10 days"),
    ("RELAY_CORS_ORIGINS", "example.com"),
    ("RELAY_CORS_ORIGINS", "https://a.example/path"),
    ("RELAY_PING_INTERVAL", "fast"),
    ("RELAY_PING_INTERVAL", "0"),
    ("RELAY_PING_TIMEOUT", "0ms"),
    ("RELAY_MAX_BUFFER", "lots"),
    ("RELAY_MAX_BUFFER", "10"),
    ("RELAY_SHUTDOWN_TIMEOUT", "never"),
    ("RELAY_PUBLISH_RATE", "fast"),
    ("RELAY_PUBLISH_RATE", "-3/s"),
    ("RELAY_PUBLISH_RATE", "10/s,0"),
    ("RELAY_JOIN_RATE", "10/week"),
    ("RELAY_INBOUND_RATE", "lots/s"),
    ("RELAY_DELIVERY_RATE", "1e400"),
    ("RELAY_CONNECT_RATE", "nan"),
    ("RELAY_MAX_ROOMS", "-1"),
    ("RELAY_MAX_CONNECTIONS", "many"),
    ("RELAY_HEADER_TIMEOUT", "0"),
    ("RELAY_CONNECT_TIMEOUT", "later"),
    ("RELAY_TRUST_PROXY", "maybe"),
    ("WEB_CONCURRENCY", "0"),
    ("RELAY_WORKERS", "-1"),
    ("RELAY_WORKERS", "two"),
    ("RELAY_HISTORY_MAX_BYTES", "-1"),
    ("RELAY_WEBHOOK_URL", "example.com/hooks"),
    ("RELAY_WEBHOOK_PUBLISH", "chat message"),
    ("RELAY_WEBHOOK_QUEUE", "0"),
    ("RELAY_WEBHOOK_BATCH", "none"),
    ("RELAY_WEBHOOK_TIMEOUT", "0"),
    ("RELAY_WEBHOOK_RETRY_FOR", "forever"),
    ("RELAY_CONNECT_HOOK_URL", "ftp://example.com"),
    ("RELAY_CONNECT_HOOK_TIMEOUT", "0"),
    ("RELAY_CONNECT_HOOK_HEADERS", "X Tenant"),
    ("RELAY_CONNECT_HOOK_CONCURRENCY", "0"),
    ("RELAY_LOG_FORMAT", "xml"),
    ("REDIS_URL", "localhost:6379"),
    ("RELAY_REDIS_URL", "http://127.0.0.1:6379"),
    ("RELAY_REDIS_TLS_VERIFY", "sometimes"),
    ("RELAY_NODE_TIMEOUT", "0.1"),
]


@pytest.mark.parametrize(("key", "raw", "field", "expected"), VALID, ids=lambda v: str(v)[:30])
def test_each_variable_is_parsed(key: str, raw: str, field: str, expected: Any) -> None:
    env = {key: raw, **COMPANIONS.get(key, {})}
    assert getattr(Settings.from_env(env), field) == expected


def test_relay_redis_url_wins_over_redis_url() -> None:
    env = {"REDIS_URL": "redis://addon:6379", "RELAY_REDIS_URL": "redis://own:6379"}
    assert Settings.from_env(env).redis_url == "redis://own:6379"
    assert Settings.from_env({**env, "RELAY_REDIS_URL": " "}).redis_url == "redis://addon:6379"
    assert Settings.from_env({}).redis_url is None


def test_every_variable_is_covered() -> None:
    assert {key for key, *_ in VALID} == {key for key, _ in ENV_KEYS.values()}


@pytest.mark.parametrize(("key", "raw"), INVALID, ids=lambda v: str(v)[:30])
def test_invalid_values_name_the_variable_and_the_value(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({key: raw})
    message = str(info.value)
    assert key in message, message
    assert raw.strip() in message or repr(raw) in message, message
    assert "\n" not in message


def test_the_message_reads_well() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RELAY_MAX_PAYLOAD": "abc"})
    assert str(info.value).startswith("RELAY_MAX_PAYLOAD='abc' is not a size")


def test_defaults_and_empty_values() -> None:
    default = Settings()
    assert Settings.from_env({}) == default
    assert Settings.from_env({"RELAY_MAX_PAYLOAD": "", "PORT": "  "}) == default
    assert (default.max_payload, default.history_size, default.history_ttl) == (65536, 1000, 600)
    assert default.max_frame == 1024 * 1024 and default.secret is None


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"HOME": "/root", "RELAY_UNKNOWN": "x"}) == Settings()


def test_overrides_win_and_none_means_not_given() -> None:
    env = {"PORT": "9000", "RELAY_HISTORY_SIZE": "5"}
    s = Settings.from_env(env, port=1234, history_size=None)
    assert (s.port, s.history_size) == (1234, 5)


def test_settings_are_frozen_and_replace_makes_a_copy() -> None:
    s = Settings()
    t = s.replace(history_size=3)
    assert (s.history_size, t.history_size) == (1000, 3)
    with pytest.raises(AttributeError):
        s.history_size = 4  # type: ignore[misc]


def test_a_secret_without_an_api_key_is_refused_in_one_line() -> None:
    # (the HTTP API would otherwise be open to anyone, bypassing every token's room scopes)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RELAY_SECRET": "s3cret"})
    message = str(info.value)
    assert "RELAY_SECRET" in message and "RELAY_API_KEY" in message and "\n" not in message
    with pytest.raises(ConfigError):
        Settings(secret="s3cret").check()
    Settings(secret="s3cret", api_key="k").check()


def test_workers_need_redis_and_web_concurrency_counts_only_with_it() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"RELAY_WORKERS": "2"})
    assert "RELAY_WORKERS='2' needs Redis (REDIS_URL)" in str(refused.value)
    assert "\n" not in str(refused.value)
    # a platform's WEB_CONCURRENCY alone never refuses to start: one process, and a warning
    assert Settings.from_env({"WEB_CONCURRENCY": "4"}).processes() == 1
    redis = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert Settings.from_env({**redis, "WEB_CONCURRENCY": "4"}).processes() == 4
    assert (
        Settings.from_env({**redis, "WEB_CONCURRENCY": "4", "RELAY_WORKERS": "2"}).processes() == 2
    )
    assert Settings.from_env({"RELAY_WORKERS": "1", "WEB_CONCURRENCY": "3"}).processes() == 1
