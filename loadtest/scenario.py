"""A load test's options: one frozen dataclass, from CLI flags and/or a TOML scenario file."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.cli.urls import normalize_url
from relay.errors import RelayError

MODES = ("broadcast", "unicast", "mixed")
TRANSPORTS = ("websocket", "polling")


class ScenarioError(ValueError):
    """An option has a value the load test cannot run with; the message names it."""


@dataclass(frozen=True)
class Scenario:
    """Everything a run needs. Field names are the TOML keys (``max_p99_ms`` = ``--max-p99-ms``)."""

    url: str = "http://127.0.0.1:8000"
    #: every node of a cluster (``--url`` repeated; ``url = [...]`` in TOML); () is ``(url,)``
    urls: tuple[str, ...] = ()
    clients: int = 100
    rooms: int = 10
    mode: str = "broadcast"
    rate: float = 100.0
    duration: float = 10.0
    publishers: int | None = None
    payload: int = 64
    connect_rate: float | None = None
    connect_timeout: float = 20.0
    concurrency: int = 200
    transport: str = "websocket"
    workers: int = 0
    drain: float = 5.0
    ramp: bool = False
    ramp_factor: float = 1.5
    ramp_steps: int = 12
    max_p99_ms: float | None = None
    max_loss: float | None = None
    min_rate: float | None = None
    max_time: float = 900.0
    token: str | None = None
    user_prefix: str | None = None
    seed: int = 1

    @property
    def worker_count(self) -> int:
        n = self.workers or os.cpu_count() or 1
        return max(1, min(n, self.clients))

    @property
    def publisher_count(self) -> int:
        return self.clients if self.publishers is None else self.publishers

    def node_of(self, idx: int) -> int:
        """Which of :attr:`urls` client ``idx`` connects to: see :func:`node_of`."""
        return node_of(idx, self.rooms, len(self.urls) or 1)

    def replace(self, **changes: Any) -> Scenario:
        return dataclasses.replace(self, **changes)

    def validate(self) -> Scenario:
        """This scenario with its URL normalised (``host:port`` is ``http://host:port``, as
        for ``relay send``), or :class:`ScenarioError` naming the first bad option."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ScenarioError(what)

        try:
            urls = tuple(normalize_url(u, "url") for u in (self.urls or (self.url,)))
        except RelayError as exc:
            raise ScenarioError(exc.message) from None
        need(
            len(set(urls)) == len(urls),
            f"url: a node is given twice ({', '.join(u for u in urls if urls.count(u) > 1)})",
        )

        need(self.mode in MODES, f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        need(
            self.transport in TRANSPORTS,
            f"transport {self.transport!r} is not one of {', '.join(TRANSPORTS)}",
        )
        need(self.clients >= 1, f"clients must be at least 1, got {self.clients}")
        need(self.rooms >= 1, f"rooms must be at least 1, got {self.rooms}")
        need(self.rate > 0, f"rate must be positive, got {self.rate}")
        need(self.duration > 0, f"duration must be positive, got {self.duration}")
        need(self.payload >= 0, f"payload must be 0 or more bytes, got {self.payload}")
        need(self.publisher_count >= 1, f"publishers must be at least 1, got {self.publishers}")
        need(self.workers >= 0, f"workers must be 0 (auto) or more, got {self.workers}")
        need(self.drain >= 0, f"drain must be 0 or more seconds, got {self.drain}")
        need(self.max_time > 0, f"max_time must be positive, got {self.max_time}")
        need(self.ramp_factor > 1, f"ramp_factor must be above 1, got {self.ramp_factor}")
        need(
            self.connect_rate is None or self.connect_rate > 0,
            f"connect_rate must be positive, got {self.connect_rate}",
        )
        need(
            self.max_loss is None or 0 <= self.max_loss <= 1,
            f"max_loss is a ratio between 0 and 1, got {self.max_loss}",
        )
        need(self.mode == "broadcast" or self.clients >= 2, "unicast needs at least 2 clients")
        if (urls[0], urls) == (self.url, self.urls):
            return self
        return self.replace(url=urls[0], urls=urls)

    @classmethod
    def load(
        cls,
        path: Path | None,
        overrides: dict[str, Any],
        fallbacks: dict[str, Any] | None = None,
    ) -> Scenario:
        """``fallbacks`` (the environment's), then TOML file values (if any), then every
        override that is not None (the flags typed)."""
        values: dict[str, Any] = {k: v for k, v in (fallbacks or {}).items() if v is not None}
        if path is not None:
            try:
                raw = tomllib.loads(path.read_text())
            except OSError as exc:
                raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ScenarioError(f"scenario {path} is not valid TOML: {exc}") from None
            table = raw.get("loadtest", raw)
            known = {f.name for f in dataclasses.fields(cls)}
            for key, value in table.items():
                name = key.replace("-", "_")
                if name not in known:
                    raise ScenarioError(f"scenario {path}: unknown option {key!r}")
                values[name] = value
            _url_as_urls(values)
        values.update({k: v for k, v in overrides.items() if v is not None})
        _url_as_urls(values)
        try:
            return cls(**values).validate()
        except TypeError as exc:
            raise ScenarioError(str(exc)) from None


def _url_as_urls(values: dict[str, Any]) -> None:
    """``url`` (one, or a list: TOML's ``url = ["a", "b"]``) as ``urls``, which it replaces:
    the later source's nodes replace the earlier's, all of them."""
    if "url" in values:
        url = values.pop("url")
        values["urls"] = tuple(url) if isinstance(url, (list, tuple)) else (url,)
    elif isinstance(values.get("urls"), list):
        values["urls"] = tuple(values["urls"])


def node_of(idx: int, rooms: int, nodes: int) -> int:
    """The node client ``idx`` (in room ``idx % rooms``) connects to: round-robin over the
    nodes both along the clients (clients and publishers ``0, 1, 2, ...`` land on nodes
    ``0, 1, 2, ...`` while there are rooms left) and within each room (its members ``r``,
    ``r + rooms``, ``r + 2 rooms``, ... on consecutive nodes), so every room of two members or
    more spans nodes and its messages must cross between them. Plain ``idx % nodes`` would
    put all of room ``r`` on node ``r % nodes`` whenever ``nodes`` divides ``rooms``."""
    return (idx % rooms + idx // rooms) % nodes
