"""The core: connections, rooms, history, recovery and the service that routes events.

- :mod:`~relay.core.service`: :class:`~relay.core.service.Relay`, the in-memory core and the
  memory backend itself (publish, direct, join, leave, presence; its synchronous fast path);
- :mod:`~relay.core.rooms` (the registry of connections and room members),
  :mod:`~relay.core.history` (offsets, epochs, bounded history), :mod:`~relay.core.recovery`
  (sessions of dropped connections), :mod:`~relay.core.envelope` (messages encoded once),
  :mod:`~relay.core.auth` (tokens and identities), :mod:`~relay.core.fanout` (fan-out timing),
  :mod:`~relay.core.webhooks` (events to the backend, off the socket path),
  :mod:`~relay.core.deferred` (how a backend answers later without the callers branching).

It delivers through :class:`relay.wire.transport.Transport` and never imports the edge or
relay.backends: :mod:`relay.backends.cluster` builds the cluster on top of it.
"""
