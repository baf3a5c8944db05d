"""The connect hook: relay asks your backend whether (and as whom) a client may connect.

Theory of operation
-------------------
With ``RELAY_CONNECT_HOOK_URL`` set, a Socket.IO ``CONNECT`` on "/" is admitted by
:func:`admit` instead of the synchronous gate of :mod:`relay.handlers`: relay POSTs
``{"auth", "headers", "ip", "ts"}`` to the URL, signed as webhooks are
(``X-Relay-Timestamp``, ``X-Relay-Signature``; keyed with ``RELAY_CONNECT_HOOK_SECRET``, else
``RELAY_WEBHOOK_SECRET``), and the answer decides:

- ``{"allow": true, "user": "alice" | null, "rooms": ["pattern", ...] | null}``: the connection
  is ``user`` and may use the rooms the patterns match (exactly a token's ``rooms`` claim, with
  its limits; absent or ``null``: any room).
- ``{"allow": false, "reason": "...", "code"?: "unauthorized" | "forbidden"}``: refused with
  that code (``unauthorized`` unless the backend says ``forbidden``) and the reason as message.
- Anything else (no answer within ``RELAY_CONNECT_HOOK_TIMEOUT``, a connection error, a status
  that is not 200, a body that is not such an object) refuses the connection ``unavailable``.
  relay never lets a client in because the backend could not be asked.

Tokens first: with ``RELAY_SECRET`` set, a client that sends ``auth.token`` is checked locally
and the hook is not called (a bad token is ``unauthorized``, as without a hook); a client
without a token is asked about. That is Centrifugo's rule for its connect proxy, and lets a
deployment move between the two without refusing anyone. Without a secret every connection
is asked about, and open mode's ``auth.user`` counts for nothing: the hook names the user.

Only the connecting client waits: the request is awaited in that connection's own reader, and
at most ``RELAY_CONNECT_HOOK_CONCURRENCY`` requests are in flight (a connect past that is
refused ``unavailable`` at once, never queued). The Engine.IO connect timeout still bounds the
whole wait (the hook's timeout must be shorter). Without a hook none of this code runs: the
websocket path keeps its synchronous gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import socketio

from relay import __version__, names
from relay.core import envelope
from relay.core.auth import Identity, room_patterns
from relay.core.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from relay.errors import BadRequest, Forbidden, RelayError, Unauthorized, Unavailable
from relay.settings import Settings

if TYPE_CHECKING:
    import aiohttp

    from relay.core.service import Relay
    from relay.handlers import Admission

log = logging.getLogger("relay.connecthook")

#: bytes of an answer read at most (a decision is a few hundred)
MAX_ANSWER = 64 * 1024
#: codes a denial may carry
DENY_CODES: dict[str, type[RelayError]] = {"unauthorized": Unauthorized, "forbidden": Forbidden}


def decide(answer: Any) -> Identity:
    """The identity an ``allow`` answer grants; the refusal a ``deny`` answer asks for; or
    :class:`Unavailable` for anything else (the backend's bug must not let a client in)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
        raise Unavailable("the connect hook's answer has no boolean 'allow'")
    if not answer["allow"]:
        reason = answer.get("reason")
        message = reason[:200] if isinstance(reason, str) and reason else "refused by the backend"
        code = answer.get("code") or "unauthorized"
        refusal = DENY_CODES.get(code) if isinstance(code, str) else None
        if refusal is None:
            why = f"the connect hook's 'code' {code!r} is not one of {list(DENY_CODES)}"
            raise Unavailable(why)
        raise refusal(message)
    user = answer.get("user")
    if user is not None:
        try:
            user = names.user_name(user)
        except BadRequest as exc:
            raise Unavailable(f"the connect hook's {exc.message}") from None
    rooms = room_patterns(answer.get("rooms"), "the connect hook's 'rooms'", Unavailable)
    return Identity.scoped(user, rooms)


def client_ip(sio: Any, eio_sid: str, environ: Mapping[str, Any], trust_proxy: bool) -> str | None:
    """The connecting client's IP: behind a trusted proxy the last ``X-Forwarded-For`` entry,
    else the socket's peer (a websocket's protocol, or a long-poll's ASGI scope)."""
    if trust_proxy:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded:
            return str(forwarded).rsplit(",", 1)[-1].strip()[:64] or None
    sock = sio.eio.sockets.get(eio_sid)
    fast = getattr(sock, "fast", None)
    peer = fast.client if fast is not None else (environ.get("asgi.scope") or {}).get("client")
    return str(peer[0]) if peer else None


class ConnectHook:
    """The HTTP client that asks the backend (see the module)."""

    def __init__(self, settings: Settings, clock_ms: Any) -> None:
        assert settings.connect_hook_url is not None and settings.connect_hook_key is not None
        self.url = settings.connect_hook_url
        self._secret = settings.connect_hook_key.encode()
        self._timeout = settings.connect_hook_timeout
        self._limit = settings.connect_hook_concurrency
        #: header name -> its environ key (``x-tenant`` -> ``HTTP_X_TENANT``)
        self._headers = {
            name: "HTTP_" + name.upper().replace("-", "_") for name in settings.connect_hook_headers
        }
        self._clock = clock_ms
        self._session: aiohttp.ClientSession | None = None
        self.in_flight = 0
        self.stats = {"allowed": 0, "denied": 0, "failed": 0, "busy": 0}

    def _client(self) -> aiohttp.ClientSession:
        """The HTTP client, opened at the first connect (inside the running loop)."""
        import aiohttp

        if self._session is not None:
            return self._session
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(limit=self._limit),
            headers={"User-Agent": f"relay/{__version__} connect-hook"},
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def body(self, auth: Any, environ: Mapping[str, Any], ip: str | None) -> bytes:
        headers = {}
        for name, key in self._headers.items():
            value = environ.get(key)
            if value is not None:
                headers[name] = str(value)
        return orjson.dumps({"auth": auth, "headers": headers, "ip": ip, "ts": self._clock()})

    async def identify(self, auth: Any, environ: Mapping[str, Any], ip: str | None) -> Identity:
        """Ask the backend about a connecting client: its identity, or a RelayError."""
        if self.in_flight >= self._limit:
            self.stats["busy"] += 1
            raise Unavailable("too many connections are waiting for the backend; retry")
        self.in_flight += 1
        try:
            identity = decide(await self._ask(self.body(auth, environ, ip)))
        except (Unauthorized, Forbidden):
            self.stats["denied"] += 1
            raise
        except Unavailable as exc:
            self.stats["failed"] += 1
            log.warning("connect hook failed: %s", exc.message)
            raise Unavailable("the backend that admits connections is unavailable; retry") from None
        except Exception:  # a bug here must refuse the client, not leave it hanging
            self.stats["failed"] += 1
            log.exception("connect hook failed")
            raise Unavailable("the backend that admits connections is unavailable; retry") from None
        finally:
            self.in_flight -= 1
        self.stats["allowed"] += 1
        return identity

    async def _ask(self, body: bytes) -> Any:
        import aiohttp

        session = self._client()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        try:
            async with session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                raw = await response.content.read(MAX_ANSWER + 1)
        except TimeoutError:
            raise Unavailable(f"no answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        if status != 200:
            raise Unavailable(f"answered HTTP {status}")
        if len(raw) > MAX_ANSWER:
            raise Unavailable(f"answered more than {MAX_ANSWER} bytes")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Unavailable("answered something that is not JSON") from None

    def describe(self) -> dict[str, Any]:
        """For /healthz and /metrics: requests in flight, and how connects were decided."""
        return {"in_flight": self.in_flight, **self.stats}


async def admit(relay: Relay, hook: ConnectHook, sio: Any, auth: Any, eio_sid: str) -> Admission:
    """Let a connection in, asking the hook (tokens first: see the module); raises
    ConnectionRefusedError, as the synchronous gate does, with the contract's error data."""
    from relay.handlers import admission, identify

    settings = relay.settings
    if settings.secret is not None and isinstance(auth, dict) and auth.get("token") is not None:
        identity = identify(relay, auth)
    else:
        if auth is not None and not isinstance(auth, dict):
            error: RelayError = BadRequest(f"'auth' must be an object, got {type(auth).__name__}")
            raise socketio.exceptions.ConnectionRefusedError(error.message, error.to_dict())
        environ = sio.environ.get(eio_sid) or {}
        ip = client_ip(sio, eio_sid, environ, settings.trust_proxy)
        try:
            identity = await hook.identify(auth or {}, environ, ip)
        except RelayError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict()) from None
    return admission(relay, identity, auth)


def setup(sio: Any, relay: Relay, settings: Settings) -> ConnectHook | None:
    """With ``RELAY_CONNECT_HOOK_URL`` set: the hook, admitting every connection on ``sio``
    (after relay.handlers registered its own gate, which it replaces); else None."""
    if settings.connect_hook_url is None:
        return None
    hook = ConnectHook(settings, envelope.now_ms)
    install(sio, relay, hook)
    return hook


def install(sio: Any, relay: Relay, hook: ConnectHook) -> None:
    """Admit connections on ``sio`` through ``hook`` (replacing relay.handlers' sync gate)."""

    async def gate(auth: Any, eio_sid: str) -> Admission:
        return await admit(relay, hook, sio, auth, eio_sid)

    sio.gate = None  # (so relay's websocket path hands CONNECT to the awaiting way)
    sio.async_gate = gate


__all__ = ["ConnectHook", "admit", "client_ip", "decide", "install", "setup"]
