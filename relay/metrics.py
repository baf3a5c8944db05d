"""``GET /metrics``: Prometheus text, read from the counters relay already keeps.

Nothing is counted for Prometheus on the socket path: at each scrape a collector reads the
core's ``stats``, the edge's and the API's refusals, the webhook queue's counters, the
backend's own (a cluster node's Redis state: ``relay_redis_*``), and walks
the Engine.IO sessions once to tell websockets from long-polls. A scrape costs one pass over
the connections; a message costs nothing more than it did.

With ``RELAY_METRICS_KEY`` (or, without it, ``RELAY_API_KEY``) set, a scrape needs
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.api import error_response
from relay.connecthook import ConnectHook
from relay.core.service import Relay
from relay.core.webhooks import Webhooks
from relay.errors import Unauthorized
from relay.settings import Settings
from relay.wire.flusher import flusher_for
from relay.wire.guard import EdgeGuard


class RelayCollector(Collector):
    """Every relay metric, made at scrape time from the live counters."""

    def __init__(
        self,
        relay: Relay,
        eio: Any,
        api: Any,
        edge: EdgeGuard,
        hooks: Webhooks | None,
        connect_hook: ConnectHook | None = None,
    ) -> None:
        self.relay = relay
        self.eio = eio
        self.api = api
        self.edge = edge
        self.hooks = hooks
        self.connect_hook = connect_hook

    def collect(self) -> Iterator[Metric]:
        relay, stats = self.relay, self.relay.stats
        websocket = polling = 0
        queued = {"websocket": 0, "polling": 0}
        for sock in list(self.eio.sockets.values()):
            if sock.closed:
                continue
            if sock.upgraded:
                websocket += 1
            else:
                polling += 1
            queued["websocket" if sock.upgraded else "polling"] += _queued(sock)
        connections = GaugeMetricFamily(
            "relay_connections", "Engine.IO sessions open, by transport", labels=["transport"]
        )
        connections.add_metric(["websocket"], websocket)
        connections.add_metric(["polling"], polling)
        yield connections
        waiting = GaugeMetricFamily(
            "relay_bytes_queued",
            "Bytes accepted for connections and not yet taken by the kernel (or a poll)",
            labels=["transport"],
        )
        for transport, size in queued.items():
            waiting.add_metric([transport], size)
        yield waiting
        yield GaugeMetricFamily(
            "relay_rooms", "Rooms with at least one member", value=relay.registry.room_count()
        )
        yield GaugeMetricFamily(
            "relay_rooms_known",
            "Rooms kept (with members or history)",
            value=len(relay.history),
        )
        yield GaugeMetricFamily(
            "relay_history_bytes", "Bytes of history held", value=relay.history.bytes
        )
        messages = CounterMetricFamily(
            "relay_messages", "Messages sent, by kind (room: publish; direct)", labels=["kind"]
        )
        messages.add_metric(["room"], stats["published"])
        messages.add_metric(["direct"], stats["direct"])
        yield messages
        yield CounterMetricFamily(
            "relay_deliveries",
            "Copies of messages put on connections (a publish to N members counts N)",
            value=stats["delivered"],
        )
        fanout = relay.fanout
        by_kind = CounterMetricFamily(
            "relay_deliveries_by_kind", "relay_deliveries, by kind (room; direct)", labels=["kind"]
        )
        by_kind.add_metric(["room"], fanout.deliveries)
        by_kind.add_metric(["direct"], stats["delivered"] - fanout.deliveries)
        yield by_kind
        yield HistogramMetricFamily(
            "relay_fanout_seconds",
            "Time a publish takes in the core, every local recipient's frame queued included",
            buckets=fanout.buckets(),
            sum_value=fanout.total,
        )
        limited = CounterMetricFamily(
            "relay_rate_limited", "Requests answered rate_limited or refused", labels=["limit"]
        )
        limited.add_metric(["connection"], stats["rate_limited"])
        limited.add_metric(["api"], self.api.rate_limited)
        for name, count in self.edge.refused.items():
            limited.add_metric([name], count)
        yield limited
        flusher = flusher_for(asyncio.get_running_loop())
        yield CounterMetricFamily(
            "relay_slow_clients_dropped",
            "Connections dropped for not reading (send buffer over RELAY_MAX_BUFFER)",
            value=flusher.slow_dropped,
        )
        for kind, name, text, number in relay.backend_metrics():  # (a cluster's Redis state)
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, text, value=number)
        if self.connect_hook is not None:
            yield from self._connect_hook(self.connect_hook)
        hooks = self.hooks
        if hooks is None:
            return
        described = hooks.describe()
        yield GaugeMetricFamily(
            "relay_webhook_queue", "Webhook events waiting to be sent", value=described["queued"]
        )
        yield CounterMetricFamily(
            "relay_webhook_events_sent", "Webhook events delivered", value=described["sent"]
        )
        yield CounterMetricFamily(
            "relay_webhook_retries", "Webhook requests retried", value=described["retries"]
        )
        dropped = CounterMetricFamily(
            "relay_webhook_events_dropped", "Webhook events dropped, by cause", labels=["cause"]
        )
        for cause, count in described["dropped"].items():
            dropped.add_metric([cause], count)
        yield dropped

    @staticmethod
    def _connect_hook(hook: ConnectHook) -> Iterator[Metric]:
        described = hook.describe()
        yield GaugeMetricFamily(
            "relay_connect_hook_in_flight",
            "Connect hook requests waiting for the backend",
            value=described["in_flight"],
        )
        decided = CounterMetricFamily(
            "relay_connect_hook_decisions",
            "Connects decided by the connect hook (failed and busy: refused unavailable)",
            labels=["result"],
        )
        for result in ("allowed", "denied", "failed", "busy"):
            decided.add_metric([result], described[result])
        yield decided


def _queued(sock: Any) -> int:
    """Bytes waiting for one session: its websocket's (relay.wire.websocket, the transport's buffer
    included), or its long-poll queue's."""
    fast = getattr(sock, "fast", None)
    if fast is not None:
        return int(fast.buffered())
    return int(getattr(sock.queue, "size", 0))


def route(
    relay: Relay,
    eio: Any,
    api: Any,
    edge: EdgeGuard,
    hooks: Webhooks | None,
    settings: Settings,
    connect_hook: ConnectHook | None = None,
) -> Route:
    """The ``/metrics`` route, with its own registry (several apps may share a process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay, eio, api, edge, hooks, connect_hook))
    key = settings.metrics_key or settings.api_key

    async def metrics(request: Request) -> Response:
        if key is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), key.encode()
            ):
                which = "RELAY_METRICS_KEY" if settings.metrics_key else "RELAY_API_KEY"
                return error_response(
                    Unauthorized(f"send 'Authorization: Bearer <key>' with the {which}")
                )
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return Route("/metrics", metrics, methods=["GET"])


__all__ = ["RelayCollector", "route"]
