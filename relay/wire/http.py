"""uvicorn's httptools HTTP protocol with relay's edge in front and its websocket behind.

Every TCP connection starts here: the edge guard (relay.wire.guard) counts it, times its
headers and meters its bytes; a websocket upgrade is handed, already parsed, to
:class:`relay.wire.websocket.FastWebSocketProtocol`; anything else is uvicorn's ASGI cycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httptools
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from relay.errors import BadRequest
from relay.limits import Bucket
from relay.wire.guard import EdgeGuard, forwarded_ip, guard_of, refusal
from relay.wire.handshake import UNKNOWN, address, peer
from relay.wire.websocket import HOLD_INBOUND, METER_EVERY, FastWebSocketProtocol

log = logging.getLogger("relay.wire.http")


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol, handing an upgrade to :class:`FastWebSocketProtocol`.

    uvicorn's own upgrade re-serializes the request for the websocket protocol to parse again;
    this hands over what httptools parsed. It also unhooks the parser, which holds the protocol
    (a reference cycle that would otherwise wait for a full garbage collection), and looks the
    connection's addresses up only when something asks for them (an HTTP request's scope, a
    log line): two system calls and a socket object per connection that a websocket taken
    without ASGI never needs.
    """

    _lazy_server: Any = UNKNOWN
    _lazy_client: Any = UNKNOWN

    @property
    def server(self) -> tuple[str, int | None] | None:
        return address(self, "_lazy_server", get_local_addr)  # type: ignore[no-any-return]

    @server.setter
    def server(self, value: tuple[str, int | None] | None) -> None:
        self._lazy_server = value

    @property
    def client(self) -> tuple[str, int] | None:
        return address(self, "_lazy_client", get_remote_addr)  # type: ignore[no-any-return]

    @client.setter
    def client(self, value: tuple[str, int] | None) -> None:
        self._lazy_client = value

    #: this request's ``_should_upgrade`` (uvicorn asks twice per upgrade request)
    _upgrade_answer: bool | None = None

    def _should_upgrade(self) -> bool:
        answer = self._upgrade_answer
        if answer is None:
            answer = self._upgrade_answer = super()._should_upgrade()
        return answer

    def on_message_begin(self) -> None:
        # uvicorn's, with the addresses filled in once the request is not an upgrade
        if not self._watched and self._edge is not None:
            # a keep-alive connection's next request: its headers are on the clock again
            self._watched = True
            self._edge.watch(self, self.loop)
        self._upgrade_answer = None
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": UNKNOWN,
            "client": UNKNOWN,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_headers_complete(self) -> None:
        edge = self._edge
        if edge is not None and edge.trust_proxy and self._edge_ip is None:
            # behind a proxy the client's IP is known only now: the last X-Forwarded-For entry
            # (the peer's address without one), counted for as long as this TCP connection
            client = self.client
            ip = forwarded_ip(self.headers) or (client[0] if client else "?")
            answer = edge.admit(ip)
            if answer is not None:
                self._refuse(answer)
                raise _Refused  # (ends this read's parse: see data_received)
            self._edge_ip = ip
        scope = self.scope
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is scope:  # an HTTP request (its task not begun)
            scope["server"] = self.server
            scope["client"] = self.client
            if self._watched:  # the body gets the same time again (a slow POST)
                edge.watch(self, self.loop)  # type: ignore[union-attr]
        elif self._watched:  # an upgrade: the websocket's own timeouts take over
            self._watched = False
            edge.unwatch(self)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self._watched:
            self._watched = False
            self._edge.unwatch(self)  # type: ignore[union-attr]
        super().on_message_complete()

    # -- the edge: connection caps and the header timeout (relay.wire.guard) ----------------------

    #: the guard counting this connection (None: not counted), and the IP counted under
    _edge: EdgeGuard | None = None
    _edge_ip: str | None = None
    #: the guard's header timeout runs: the request's headers (or body) are not all in yet
    _watched = False
    #: the client IP's inbound byte bucket (relay.wire.guard; looked up once the connection has
    #: received METER_EVERY bytes), what it received since it was last charged, and whether
    #: reading is paused to keep to its rate
    _inbound: Bucket | None = None
    _unmetered = 0
    _throttled = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's, with the addresses left to look up (see the class's docstring), then the
        # edge's count: the connection is refused, or counted (and its request on the clock)
        self.connections.add(self)
        self.transport = transport
        self.flow = _Flow(transport, self)  # (uvicorn's, aware of the inbound rate's pause)
        self._lazy_server = self._lazy_client = UNKNOWN
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            client = self.client
            prefix = f"{client[0]}:{client[1]} - " if client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        config: Any = self.config
        edge = getattr(config, "relay_edge", UNKNOWN)  # (looked up once per server)
        if edge is UNKNOWN:
            edge = config.relay_edge = guard_of(self.app)
        if edge is None:
            return
        ip = None
        if edge.ip_at_accept:
            client = self._lazy_client = peer(transport)  # (the one look-up: kept for scopes)
            ip = client[0] if client else "?"
        refused = edge.accept(self, ip, self.loop)
        if refused is not None:
            self._refuse(refused)
            return
        self._edge = edge
        self._edge_ip = ip
        self._watched = True

    def _refuse(self, answer: bytes) -> None:
        """Answer with the edge's refusal and close (the count is released on close)."""
        self.transport.write(answer)
        self.transport.close()

    def timed_out(self) -> None:
        """The request's headers or body did not arrive in time (the guard's sweep): close,
        answering 408 when nothing of a response has been sent on this request."""
        self._watched = False
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            seconds = self._edge.header_timeout if self._edge is not None else 0
            error = BadRequest(
                f"the request did not arrive in full within {seconds:g} s"
                " (RELAY_HEADER_TIMEOUT): closing the connection"
            )
            transport.write(refusal(error, 408))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # (the application's receive() says so; send() is a no-op)
            cycle.message_event.set()
        transport.close()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, where a request the edge refused once its headers were in ends the parse,
        # and the client IP's inbound rate may stop reading for a while
        unmetered = self._unmetered + len(data)
        if unmetered < METER_EVERY:
            self._unmetered = unmetered
        else:
            self._unmetered = 0
            self._meter(unmetered)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                return  # answered and closing
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

    def _meter(self, received: int) -> None:
        """Charge ``received`` bytes to the IP's inbound bucket; past its rate, stop reading
        until the debt is paid."""
        edge = self._edge
        if edge is None or not edge.inbound_rate.per_s:
            return
        inbound = self._inbound
        if inbound is None:
            inbound = self._inbound = edge.inbound_bucket(self._edge_ip, self)
        debt = inbound.spend(edge.inbound_rate, time.monotonic(), received)
        if debt and not self._throttled:
            self._throttled = True
            self.transport.pause_reading()
            self.loop.call_later(debt, self._unthrottle)
            edge.throttled += 1

    def _unthrottle(self) -> None:
        transport = self.transport
        if transport is None or transport.get_protocol() is not self:
            return  # upgraded meanwhile: the websocket protocol holds its own pause
        self._throttled = False
        if not self.flow.read_paused and not transport.is_closing():
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        edge = self._edge
        if edge is not None:
            self._edge = None
            edge.release(self._edge_ip)
            if self._watched:
                self._watched = False
                edge.unwatch(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        cls = self.ws_protocol_class
        edge = self._edge
        if cls is None or not issubclass(cls, FastWebSocketProtocol):
            if edge is not None:  # (another protocol cannot carry the count: released here)
                self._edge = None
                edge.release(self._edge_ip)
            super().handle_websocket_upgrade()
        else:
            self.connections.discard(self)
            protocol = cls(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            transport = self.transport
            protocol.adopt(transport, self._lazy_server, self._lazy_client)
            if edge is not None:  # the count follows the connection: released when it closes
                self._edge = None
                protocol.edge = edge
                protocol.edge_ip = self._edge_ip
                protocol.inbound = self._inbound
                protocol.unmetered = self._unmetered
                if self._throttled and self._inbound is not None:
                    # reading is paused for the rate: the websocket's own hold takes it over
                    self._throttled = False
                    protocol.holds = HOLD_INBOUND
                    debt = max(0.0, -self._inbound.tokens) / edge.inbound_rate.per_s
                    self.loop.call_later(debt, protocol.release, HOLD_INBOUND)
            transport.set_protocol(protocol)
            protocol.upgrade(self.scope["method"], self.url, self.headers, self.scope)
        self.parser = None  # type: ignore[assignment]
        self.cycle = None  # type: ignore[assignment]


class _Flow(FlowControl):
    """uvicorn's flow control, which leaves reading paused while the inbound rate holds it."""

    def __init__(self, transport: asyncio.Transport, owner: HttpProtocol) -> None:
        super().__init__(transport)
        self._owner = owner

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self._owner._throttled:
                self._transport.resume_reading()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the edge refused."""


__all__ = ["HttpProtocol"]
