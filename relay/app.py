"""The application factory: ``create_app(settings) -> Starlette``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import socketio
from socketio import packet as sio_packet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from relay import __version__, connecthook, handlers, metrics, names
from relay.api import Api
from relay.backends import make_relay
from relay.core import envelope
from relay.core.service import Relay
from relay.core.webhooks import Webhooks
from relay.errors import Unauthorized
from relay.page import IndexPage
from relay.settings import Settings
from relay.wire.engine import RelayEngine
from relay.wire.guard import EdgeGuard
from relay.wire.sio import RelayManager, RelaySocketIO
from relay.wire.transport import EngineIOTransport
from relay.wire.websocket import FastWebSocketProtocol

log = logging.getLogger("relay")

STATIC_DIR = Path(__file__).parent / "static"


class RevalidatedStaticFiles(StaticFiles):
    """The chat page's files, revalidated on every load (cheap: ETags answer 304).

    Without ``no-cache`` a browser may keep an old JS module beside a new ``index.html``
    after an upgrade.
    """

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>relay</title></head>
<body><h1>relay</h1><p>The Socket.IO endpoint is <code>/socket.io/</code>;
health is at <a href="/healthz">/healthz</a>.</p></body></html>
"""


class OrjsonModule:
    """The ``json`` module python-socketio and python-engineio use, backed by orjson.

    orjson refuses nesting deeper than 1,024 levels with a ValueError instead of recursing,
    which is what keeps a 10,000-deep payload from reaching the handlers.
    """

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            # Too deep to decode: keep the event's name (and so its ack) and let the handlers
            # answer bad_request, instead of dropping the packet without a word.
            start = text[:100] if isinstance(text, str) else text[:100].decode("latin-1")
            head = _EVENT_HEAD.match(start)
            if "depth" not in str(exc).lower() or head is None:
                raise
            return [orjson.loads(head.group(1)), names.NESTED_TOO_DEEPLY]


_EVENT_HEAD = re.compile(r'\s*\[\s*("[A-Za-z0-9_\-.:@/]{1,64}")\s*,')


def build_sio(settings: Settings) -> socketio.AsyncServer:
    origins: str | list[str] = "*" if "*" in settings.cors_origins else list(settings.cors_origins)
    return RelaySocketIO(
        client_manager=RelayManager(),
        async_mode="asgi",
        json=OrjsonModule,
        async_handlers=False,  # a client's events run in the order it sent them
        cors_allowed_origins=origins,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        max_http_buffer_size=settings.max_frame,
        max_buffer=settings.max_buffer,  # per-connection send buffer (relay.wire.engine)
        # a session without a namespace (relay.wire.engine)
        connect_timeout=settings.connect_timeout,
        logger=False,
        engineio_logger=False,
    )


async def drain(sio: socketio.AsyncServer) -> None:
    """Close every Engine.IO session cleanly, so clients reconnect (to this or another node).

    Before the first close, ``sio.before_drain`` (relay.handlers) tells the relay core: a
    cluster node keeps the connections it closes as sessions, saved for other nodes; then
    ``sio.finish_answers`` waits (bounded) for the acks still on their way: a publish accepted
    before the shutdown is answered before its connection closes."""
    before = getattr(sio, "before_drain", None)
    if before is not None:
        before()
    finish = getattr(sio, "finish_answers", None)
    if finish is not None:
        await finish()
    sockets = list(sio.eio.sockets.values())
    for sock in sockets:
        with contextlib.suppress(Exception):
            await sock.close(wait=False, abort=False)
        # Release a long-poll GET still parked on the queue: a session that was already closed
        # (e.g. refused at connect, then closed by its client) is never woken by close(), and
        # its GET would hold shutdown for the whole graceful timeout.
        sock.queue.put_nowait(None)
    if sockets or not getattr(sio, "relay_drained", False):
        # (once: the server's shutdown drains, then the application's lifespan finds nothing)
        log.info("closed %d client sessions", len(sockets))
    sio.relay_drained = True


class RelayApp(Starlette):
    """Starlette, with Socket.IO requests handed straight to python-socketio's ASGI app.

    Everything under ``/socket.io/`` skips Starlette's middleware stack and router (error
    middleware, exception middleware, route matching, the mount's scope rewrite): on a connect
    storm that is a good part of each connection's CPU. Any other path is Starlette's.
    """

    socketio_app: Any = None

    def accept_websocket(
        self, proto: FastWebSocketProtocol, path: str, query: bytes, headers: Any
    ) -> bool:
        """A new Engine.IO websocket on ``/socket.io/``, opened without ASGI when the engine can
        (:meth:`relay.wire.engine.RelayEngine.accept_websocket`; see
        :data:`relay.wire.handshake.DIRECT`)."""
        sio_app = self.socketio_app
        if sio_app is None or path != SOCKETIO_PREFIX:
            return False
        server = getattr(sio_app, "engineio_server", None)  # (python-socketio's server)
        engine = getattr(server, "eio", server)
        if not isinstance(engine, RelayEngine):
            return False
        return engine.accept_websocket(proto, query, headers, path)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sio_app = self.socketio_app
        if (
            sio_app is not None
            and scope["type"] != "lifespan"
            and scope["path"].startswith(SOCKETIO_PREFIX)
        ):
            await sio_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


SOCKETIO_PREFIX = "/socket.io/"


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the relay application: Socket.IO under ``/socket.io/``, health, the page."""
    settings = settings or Settings()
    settings.check()  # (settings built in code skip from_env's checks: e.g. a secret, no key)
    sio = build_sio(settings)
    relay = make_relay(settings, EngineIOTransport(sio.eio))  # (memory, or Redis: REDIS_URL)
    handlers.register(sio, relay)
    hook = connecthook.setup(sio, relay, settings)  # (None without RELAY_CONNECT_HOOK_URL)
    hooks = Webhooks(settings, envelope.now_ms) if settings.webhook_url else None
    if hooks is not None:
        relay.report_to(hooks)
    edge = EdgeGuard(settings)
    sio.eio.edge = edge  # (new sessions are held to the per-IP connect rate)
    processes = settings.processes()
    if processes > 1:
        sio.eio.polling_refused = (
            f"HTTP long-polling is off: {processes} relay processes share this port and a"
            " polling session's requests could reach any of them; connect over WebSocket"
            " (socket.io-client: transports: ['websocket']), or run one worker"
        )
    started = time.monotonic()

    async def healthz(request: Request) -> Response:
        backends = relay.health()
        usable = all(state == "ok" for state in backends.values())
        body = {
            "status": "ok" if usable else "unavailable",
            "version": __version__,
            "uptime_s": round(time.monotonic() - started, 1),
            "backends": backends,
            **relay.describe(),
            "api_rate_limited": api.rate_limited,
            "edge": edge.describe(),
        }
        if hooks is not None:
            body["webhooks"] = hooks.describe()
        if hook is not None:
            body["connect_hook"] = hook.describe()
        return JSONResponse(body, status_code=200 if usable else 503)

    index_html = STATIC_DIR / "index.html"
    page = IndexPage(index_html, settings) if index_html.is_file() else None

    async def index(request: Request) -> Response:
        if page is not None:
            return page.response(request)
        return HTMLResponse(PLACEHOLDER)

    api = Api(relay, settings)

    async def end_connection(sid: str) -> None:
        log.info("%s: disconnected through the HTTP API", sid)
        await sio.disconnect(sid)

    api.end_connection = end_connection
    relay.end_connection = end_connection  # (a cluster node ends its own for the others)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks: set[asyncio.Task[None]] = set()
        for job, name in [
            (_sweeper(relay, settings, api), "relay-history-sweep"),
            (_expire_tokens(relay, sio), "relay-token-expiry"),
        ]:
            task = asyncio.create_task(job, name=name)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if hooks is not None:
            hooks.start()
        await relay.start()
        log.info("relay %s ready (%s)", __version__, relay.backend)
        if settings.secret is None and not _loopback(settings.host):
            log.warning(
                "OPEN MODE ON A PUBLIC INTERFACE: relay listens on %s without RELAY_SECRET, so"
                " anyone who can reach it may connect as any user and join any room%s."
                " Set RELAY_SECRET and RELAY_API_KEY (see the README's deploy section)",
                settings.host,
                "" if settings.api_key else ", and use the HTTP API",
            )
        if settings.web_concurrency > 1 and settings.processes() == 1:
            log.warning(
                "WEB_CONCURRENCY=%d, but relay runs one process: its rooms, history and"
                " connections live in memory, and several processes would be separate relays"
                " that do not see each other's clients. Scale up (a bigger dyno), not out",
                settings.web_concurrency,
            )
        try:
            yield
        finally:
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            await drain(sio)
            await sio.shutdown()
            # (before webhooks close: a cluster node's last leaves may vacate rooms, which
            # Redis tells it)
            await relay.stop()
            if hooks is not None:  # (after the drain: its disconnects are reported too)
                await hooks.close(settings.shutdown_timeout)
            if hook is not None:
                await hook.close()

    sio_app = socketio.ASGIApp(sio, socketio_path="socket.io")
    routes = [
        *api.routes(),
        Route("/", index),
        Route("/healthz", healthz),
        metrics.route(relay, sio.eio, api, edge, hooks, settings, hook),
        Mount("/socket.io", app=sio_app),  # (RelayApp answers these paths before routing)
    ]
    if STATIC_DIR.is_dir():
        routes.append(
            Mount("/static", app=RevalidatedStaticFiles(directory=STATIC_DIR), name="static")
        )
    app = RelayApp(routes=routes, lifespan=lifespan)
    app.socketio_app = sio_app
    app.state.settings = settings
    app.state.sio = sio
    app.state.relay = relay
    app.state.edge = edge
    return app


async def _sweeper(relay: Relay, settings: Settings, api: Api) -> None:
    interval = max(0.5, min(5.0, settings.history_ttl / 2))
    while True:
        await asyncio.sleep(interval)
        try:
            dropped = relay.sweep()
            api.buckets.sweep()
        except Exception:
            log.exception("history sweep failed")
        else:
            if dropped:
                log.debug("forgot %d idle rooms", dropped)


#: how often, at least, token expiries are looked at (a token ends at most this late)
EXPIRY_TICK_S = 1.0


async def _expire_tokens(relay: Relay, sio: socketio.AsyncServer) -> None:
    """End every connection whose token expires, when it does (checked at connect only, a
    token would outlive its ``exp`` for as long as its connection lasts).

    The client gets a ``connect_error`` with ``{"code": "unauthorized"}``, exactly as when it
    connects with an expired token, so the code that refreshes a token for a refused connect
    handles this too; then the server disconnects it.
    """
    while True:
        due = relay.next_expiry()
        wait = EXPIRY_TICK_S if due is None else min(EXPIRY_TICK_S, due - time.time())
        await asyncio.sleep(max(0.01, wait))
        for sid in relay.expired(time.time()):
            try:
                await _end_expired(sio, sid)
            except Exception:
                log.exception("ending %s, whose token expired", sid)


async def _end_expired(sio: socketio.AsyncServer, sid: str) -> None:
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    if eio_sid is None:
        return
    error = Unauthorized("the token has expired")
    refused = sio.packet_class(
        sio_packet.CONNECT_ERROR, data={"message": error.message, "data": error.to_dict()}
    )
    await sio._send_packet(eio_sid, refused)
    log.info("%s: its token expired; disconnecting it", sid)
    await sio.disconnect(sid)


def _loopback(host: str) -> bool:
    """Whether binding ``host`` keeps relay reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
