"""Backends: where rooms, offsets and history live, chosen once at start-up.

Unset ``REDIS_URL``: the in-memory core (:class:`relay.core.service.Relay`), one process. Set: the
cluster core (:class:`relay.backends.cluster.ClusterRelay`), several processes sharing one
Redis. The handlers and the HTTP API never ask which: see :mod:`relay.core.deferred`.
"""

from __future__ import annotations

from relay.core.service import Relay
from relay.settings import Settings
from relay.wire.transport import Transport


def make_relay(settings: Settings, transport: Transport) -> Relay:
    """The relay core ``settings`` ask for."""
    if settings.redis_url is None:
        return Relay(settings, transport)
    from relay.backends.cluster import ClusterRelay  # (redis is imported only when used)

    return ClusterRelay(settings, transport)


__all__ = ["make_relay"]
