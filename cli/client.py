"""One Socket.IO connection from the CLI to a relay, with every failure as a :class:`RelayError`.

``relay send`` and ``relay listen`` share this: it checks the URL, connects over WebSocket
within a deadline, turns a refused connection, a ``connect_error`` or an error ack into the
matching error of :mod:`relay.errors`, and owns (and closes) its HTTP session, so nothing is
left for the garbage collector to complain about. It never prints and never exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import socketio

from relay.cli.urls import normalize_url
from relay.errors import (
    BadRequest,
    Forbidden,
    Internal,
    NotFound,
    RateLimited,
    RelayError,
    TooLarge,
    Unauthorized,
    Unavailable,
)

_ERRORS: dict[str, type[RelayError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        TooLarge,
        RateLimited,
        Unavailable,
        Internal,
    )
}

__all__ = ["Ack", "Connection", "check_ack", "error_from", "normalize_url"]

Ack = dict[str, Any]
EventHandler = Callable[[str, Any], None]
AckCallback = Callable[[Ack], None]

# python-engineio logs a failed connection at WARNING/ERROR even with logging off; the CLI
# reports failures itself, in one line.
for _name in ("engineio.client", "socketio.client"):
    logging.getLogger(_name).setLevel(logging.CRITICAL + 1)


def error_from(error: Any, what: str) -> RelayError:
    """The contract's ``{"code", "message"}`` -> the matching :class:`RelayError`."""
    if not isinstance(error, dict):
        return Internal(f"{what}: the server answered {error!r}")
    code = str(error.get("code", "internal"))
    message = str(error.get("message") or code)
    if code == RateLimited.code:
        wait = error.get("retry_after_ms")
        seconds = wait / 1000 if isinstance(wait, int | float) and wait >= 0 else None
        return RateLimited(f"{what}: {message} ({code})", retry_after=seconds)
    cls = _ERRORS.get(code, Internal)
    return cls(f"{what}: {message} ({code})")


def check_ack(ack: Any, what: str) -> Ack:
    """Return a successful ack, or raise the error it carries."""
    if not isinstance(ack, dict):
        raise Internal(f"{what}: the server answered {ack!r}, not an ack object")
    if ack.get("ok") is not True:
        raise error_from(ack.get("error"), what)
    return ack


async def _diagnose(url: str, timeout: float) -> str:
    """Why a WebSocket connection to ``url`` failed, in a few words."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return "no answer (timed out)"
    except ConnectionRefusedError:
        return "connection refused (is `relay serve` running there?)"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "it did not accept a Socket.IO WebSocket connection (is it a relay?)"


class Connection:
    """A connected ``socketio.AsyncClient``; use ``async with Connection(...) as conn``.

    ``on_event(name, arg)`` receives every server event (``presence`` included) in arrival
    order; ``on_disconnect(reason)`` is called once if the connection drops. Both run inside the
    client's receive path and must not block.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        auth: dict[str, Any] | None = None,
        on_event: EventHandler | None = None,
        on_disconnect: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.auth = auth
        self._on_event = on_event
        self._on_disconnect = on_disconnect
        self._refusal: Any = None
        self._pending: set[asyncio.Future[Ack]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.client: socketio.AsyncClient | None = None
        self.closed_reason: str | None = None

    @property
    def sid(self) -> str | None:
        return None if self.client is None else self.client.get_sid()

    async def __aenter__(self) -> Connection:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect within ``timeout``, or raise :class:`Unavailable` / the server's refusal."""
        self._session = aiohttp.ClientSession()
        client = socketio.AsyncClient(
            reconnection=False,
            handle_sigint=False,
            http_session=self._session,
            logger=False,
            engineio_logger=False,
            request_timeout=max(1, int(self.timeout)),
        )
        self.client = client
        client.on("connect_error", self._refused)
        client.on("disconnect", self._dropped)
        client.on("*", self._event)
        try:
            async with asyncio.timeout(self.timeout):
                await client.connect(
                    self.url,
                    auth=self.auth,
                    transports=["websocket"],
                    wait_timeout=self.timeout,
                )
        except (TimeoutError, socketio.exceptions.ConnectionError) as exc:
            await self.close()
            raise await self._connect_error(exc) from None
        except BaseException:
            await self.close()
            raise

    async def _connect_error(self, exc: BaseException) -> RelayError:
        if isinstance(self._refusal, dict):
            data = self._refusal.get("data")
            if isinstance(data, dict) and "code" in data:
                return error_from(data, f"{self.url} refused the connection")
            return Unauthorized(
                f"{self.url} refused the connection: {self._refusal.get('message', 'refused')}"
            )
        if isinstance(exc, TimeoutError):
            return Unavailable(f"cannot connect to {self.url}: no answer within {self.timeout:g}s")
        reason = await _diagnose(self.url, min(self.timeout, 3.0))
        return Unavailable(f"cannot connect to {self.url}: {reason}")

    async def close(self) -> None:
        """Disconnect (if connected) and release the HTTP session; safe to call twice."""
        self._fail_pending("the connection was closed")
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()
            with contextlib.suppress(Exception):
                await client.eio.disconnect(abort=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def get_json(self, path: str, timeout: float = 3.0) -> Any:
        """``GET`` ``path`` of the relay's HTTP side (``/healthz``) as JSON, within ``timeout``
        (and the connection's own); None when that fails in any way (it is only ever a hint)."""
        if self._session is None:
            return None
        limit = aiohttp.ClientTimeout(total=min(timeout, self.timeout))
        try:
            async with self._session.get(self.url + path, timeout=limit) as response:
                if response.status != 200:
                    return None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    # -- calls ---------------------------------------------------------------------------------

    async def emit(self, event: str, payload: dict[str, Any], callback: AckCallback) -> None:
        """Send ``event``; ``callback(ack)`` runs, in order with events, when the ack arrives."""
        if self.client is None or not self.client.connected:
            raise Unavailable(f"not connected to {self.url}")

        def on_ack(*args: Any) -> None:
            callback(args[0] if args else {})

        try:
            await self.client.emit(event, payload, callback=on_ack)
        except socketio.exceptions.SocketIOError as exc:
            raise Unavailable(f"lost the connection to {self.url}: {exc}") from None

    async def request(self, event: str, payload: dict[str, Any]) -> asyncio.Future[Ack]:
        """Send ``event`` and return a future of its raw ack (failed if the connection drops)."""
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

        def resolve(ack: Ack) -> None:
            if not future.done():
                future.set_result(ack)

        await self.emit(event, payload, resolve)
        return future

    async def call(self, event: str, payload: dict[str, Any], what: str | None = None) -> Ack:
        """Send ``event`` and wait (up to ``timeout``) for a successful ack."""
        future = await self.request(event, payload)
        return check_ack(await self.wait(future, event), what or event)

    async def wait(self, future: asyncio.Future[Ack], what: str) -> Ack:
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            future.cancel()
            raise Unavailable(
                f"no answer to {what!r} from {self.url} within {self.timeout:g}s"
            ) from None

    # -- client callbacks (run in the receive path, in order) ----------------------------------

    def _refused(self, data: Any = None) -> None:
        self._refusal = data

    def _dropped(self, reason: Any = None) -> None:
        self.closed_reason = str(reason or "disconnected")
        self._fail_pending(f"lost the connection to {self.url} ({self.closed_reason})")
        if self._on_disconnect is not None:
            self._on_disconnect(self.closed_reason)

    def _event(self, event: str, *args: Any) -> None:
        if self._on_event is not None:
            self._on_event(event, args[0] if args else None)

    def _fail_pending(self, message: str) -> None:
        for future in list(self._pending):
            if not future.done():
                future.set_exception(Unavailable(message))
                future.exception()  # retrieved here, so asyncio logs nothing if nobody waits
