"""The HTTP API for backends and serverless functions: ``/api/v1``.

JSON in and out; errors are ``{"error": {"code", "message"}}`` with the matching status. A message
published here reaches Socket.IO clients exactly as one published by a client, with ``from.sid``
null, and shares the room's offsets.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match, Route

from relay import __version__, apispec, names
from relay.core.deferred import Deferred
from relay.core.service import HTTP_SENDER, Relay
from relay.errors import (
    BadRequest,
    Internal,
    NotFound,
    RateLimited,
    RelayError,
    TooLarge,
    Unauthorized,
)
from relay.limits import Buckets
from relay.settings import Settings

log = logging.getLogger("relay.api")

ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(exc: RelayError) -> Response:
    response = json_response({"error": exc.to_dict()}, exc.http_status)
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        response.headers["retry-after"] = str(max(1, round(exc.retry_after + 0.5)))
    return response


class UnsupportedMediaType(BadRequest):
    """A body that is not ``application/json`` (which a cross-site form cannot send)."""

    http_status = 415


def client_ip(request: Request, trust_proxy: bool) -> str:
    """The client's address: the socket's peer, or behind a trusted proxy the last
    ``X-Forwarded-For`` entry (the one that proxy added)."""
    if trust_proxy:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()
    client = request.client
    return client.host if client is not None else "?"


class Api:
    """The ``/api/v1`` endpoints, bound to one relay."""

    def __init__(self, relay: Relay, settings: Settings) -> None:
        self.relay = relay
        self.settings = settings
        #: one bucket per API key (per client IP when no key is set)
        self.buckets = Buckets(settings.api_rate)
        self.rate_limited = 0
        #: ends one connection (DELETE /api/v1/connections/{sid}); set by the app
        self.end_connection: Callable[[str], Awaitable[None]] | None = None
        self._openapi = orjson.dumps(apispec.openapi(__version__))

    def routes(self) -> list[Route]:
        wrap = self._guard
        return [
            # Room and user names may hold "/" (as "/" or "%2F"): they take the rest of the path.
            Route("/api/v1/rooms/{room:path}/events", wrap(self.room_event), methods=["POST"]),
            Route("/api/v1/users/{user:path}/events", wrap(self.user_event), methods=["POST"]),
            Route("/api/v1/connections/{sid}/events", wrap(self.sid_event), methods=["POST"]),
            Route("/api/v1/rooms/{room:path}/members", wrap(self.members), methods=["GET"]),
            Route("/api/v1/rooms/{room:path}/history", wrap(self.history), methods=["GET"]),
            Route("/api/v1/rooms", wrap(self.rooms), methods=["GET"]),
            Route("/api/v1/batch", wrap(self.batch), methods=["POST"]),
            Route("/api/v1/connections/{sid}", wrap(self.connection), methods=["GET"]),
            Route("/api/v1/connections/{sid}", wrap(self.disconnect), methods=["DELETE"]),
            # (the document describes, it tells nothing of the relay's state: no key needed)
            Route("/api/v1/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/v1/{rest:path}", wrap(self.no_such_endpoint), methods=ANY_METHOD),
        ]

    async def no_such_endpoint(self, request: Request) -> Response:
        """Anything else under ``/api/v1``: the contract's error body, not a plain-text 404."""
        allowed = [
            method
            for route in self.routes()[:-1]
            if route.matches(request.scope)[0] is Match.PARTIAL
            for method in sorted(route.methods or ())
            if method != "HEAD"
        ]
        path = request.url.path
        if allowed:
            exc = BadRequest(f"{request.method} is not allowed on {path}; use {', '.join(allowed)}")
            response = json_response({"error": exc.to_dict()}, 405)
            response.headers["allow"] = ", ".join(allowed)
            return response
        raise NotFound(f"no such endpoint: {request.method} {path}")

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        """Authentication and the error contract around every endpoint."""

        async def guarded(request: Request) -> Response:
            try:
                self._authenticate(request)
                self._throttle(request)
                try:
                    return await endpoint(request)
                except Deferred as later:  # a backend that answers later (relay.core.deferred)
                    ack = await later.task
                    return json_response({k: v for k, v in ack.items() if k != "ok"})
            except RelayError as exc:
                return error_response(exc)
            except ClientDisconnect:
                # the client went away mid-body (or was timed out): nobody to answer, no bug
                log.debug("%s %s: the client left mid-request", request.method, request.url.path)
                return Response(status_code=400)
            except Exception:
                log.exception("internal error in %s %s", request.method, request.url.path)
                return error_response(Internal())

        return guarded

    def _authenticate(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send 'Authorization: Bearer <api key>'")
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("the API key is not valid")

    def _throttle(self, request: Request, cost: int = 1) -> None:
        rate = self.settings.api_rate
        if not rate.enabled or cost <= 0:
            return
        if self.settings.api_key is not None:
            key = "key"  # one key: one bucket (the key itself is never kept)
        else:
            key = client_ip(request, self.settings.trust_proxy)
        wait = self.buckets.take(key, cost)
        if wait:
            self.rate_limited += 1
            raise RateLimited(
                f"too many API requests: at most {rate.per_s:g} a second, in bursts of up to"
                f" {rate.burst:g} (RELAY_API_RATE); retry in {wait:.3f} s",
                wait,
            )

    async def _json(self, request: Request) -> Any:
        """The request's JSON body: ``application/json``, within the frame limit, parsed."""
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            shown = media or "none"
            raise UnsupportedMediaType(
                f"the body must be JSON sent as 'Content-Type: application/json', got {shown}"
            )
        limit = self.settings.max_frame
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise TooLarge(f"the request body is {length} bytes; the limit is {limit}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise TooLarge(f"the request body is over the {limit}-byte limit")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body must be a JSON object: {exc}") from None

    async def _body(self, request: Request) -> tuple[str, Any]:
        """An event body (``{"event"?, "data"}``): the event name and the data."""
        body = apispec.EVENT_BODY.check(await self._json(request))
        return body.get("event") or names.DEFAULT_EVENT, body["data"]

    async def room_event(self, request: Request) -> Response:
        room = names.room_name(request.path_params["room"])
        event, data = await self._body(request)
        message = self.relay.publish(HTTP_SENDER, room, event, data)
        return json_response({"id": message.id, "offset": message.offset})

    async def user_event(self, request: Request) -> Response:
        user = names.user_name(request.path_params["user"])
        event, data = await self._body(request)
        message, delivered = self.relay.direct(
            HTTP_SENDER, to=None, user=user, event=event, data=data
        )
        return json_response({"id": message.id, "delivered": delivered})

    async def sid_event(self, request: Request) -> Response:
        sid = names.sid(request.path_params["sid"], "sid")
        event, data = await self._body(request)
        message, delivered = self.relay.direct(
            HTTP_SENDER, to=sid, user=None, event=event, data=data
        )
        return json_response({"id": message.id, "delivered": delivered})

    async def members(self, request: Request) -> Response:
        room = names.room_name(request.path_params["room"])
        presence = self.relay.presence(room)
        return json_response({"room": room, "members": presence["members"]})

    async def history(self, request: Request) -> Response:
        room = names.room_name(request.path_params["room"])
        since = apispec.HISTORY_SINCE.read(request.query_params)
        limit = apispec.HISTORY_LIMIT.read(request.query_params)
        epoch = self.relay.history_epoch(room)
        first = await _read(self.relay, room, since, min(HISTORY_CHUNK, limit))
        body = _history_body(self.relay, room, epoch, first, since, limit)
        return StreamingResponse(body, media_type="application/json")

    async def rooms(self, request: Request) -> Response:
        after = apispec.ROOMS_AFTER.read(request.query_params)
        limit = apispec.ROOMS_LIMIT.read(request.query_params)
        return json_response(self.relay.rooms_page(after, limit))

    async def connection(self, request: Request) -> Response:
        sid = names.sid(request.path_params["sid"], "sid")
        return json_response(self.relay.connection(sid))

    async def disconnect(self, request: Request) -> Response:
        sid = names.sid(request.path_params["sid"], "sid")
        try:
            self.relay.end(sid)  # NotFound when it is not connected
        except Deferred as later:  # ended where it is connected (relay.core.deferred)
            await later.task
        else:
            if self.end_connection is not None:
                await self.end_connection(sid)
        return json_response({"ok": True, "sid": sid})

    async def batch(self, request: Request) -> Response:
        """Up to BATCH_MAX publishes and sends, each answered in order like its own request
        (an item refused does not stop the others). The batch costs as many API tokens as it
        has items beyond the first, so batching is no way around RELAY_API_RATE."""
        body = await self._json(request)
        items = apispec.BATCH_BODY.check(body)["items"]
        if not isinstance(items, list) or not 1 <= len(items) <= apispec.BATCH_MAX:
            raise BadRequest(f"'items' must be an array of 1 to {apispec.BATCH_MAX} items")
        self._throttle(request, len(items) - 1)
        # one at a time, in order: a room's items get its offsets in the batch's order
        results = [await self._batch_item(i, item) for i, item in enumerate(items)]
        return json_response({"results": results})

    async def _batch_item(self, index: int, item: Any) -> dict[str, Any]:
        try:
            try:
                fields = apispec.BATCH_ITEM.check(item, f"item {index}")
                event = fields.get("event") or names.DEFAULT_EVENT
                if "room" in fields:
                    room, data = fields["room"], fields["data"]
                    message = self.relay.publish(HTTP_SENDER, room, event, data)
                    return {"ok": True, "id": message.id, "offset": message.offset}
                message, delivered = self.relay.direct(
                    HTTP_SENDER,
                    to=fields.get("to"),
                    user=fields.get("user"),
                    event=event,
                    data=fields["data"],
                )
                return {"ok": True, "id": message.id, "delivered": delivered}
            except Deferred as later:  # a backend that answers later (relay.core.deferred)
                ack: dict[str, Any] = await later.task
                return {**ack, "ok": True}
        except RelayError as exc:
            return {"ok": False, "error": exc.to_dict()}

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")


#: envelopes per chunk of a streamed history page
HISTORY_CHUNK = 16


async def _read(relay: Relay, room: str, since: int, limit: int) -> list[tuple[int, str]]:
    """One chunk of ``room``'s history after ``since``: (offset, envelope JSON) pairs."""
    try:
        return relay.history_page(room, since, limit)
    except Deferred as later:  # a backend that answers later (relay.core.deferred)
        chunk: list[tuple[int, str]] = await later.task
        return chunk


async def _history_body(
    relay: Relay,
    room: str,
    epoch: str | None,
    chunk: list[tuple[int, str]],
    since: int,
    limit: int,
) -> AsyncIterator[bytes]:
    """A history page's JSON, a few envelopes at a time, read from history as it goes
    (``chunk`` is the first few, read before the answer starts: an error can still be one).

    The server's send waits for the client to read (uvicorn's flow control) between chunks,
    and nothing of the page is held in between, so a page of 1,000 large messages that is
    never read costs a chunk, not the page (nor keeps trimmed messages alive). Each envelope
    is the text cut from the message's packet (relay.core.envelope), never re-encoded.

    The page names the room's epoch (when the room is known) and holds only messages of it:
    if the room is forgotten and made again while the page is read, the page ends there.
    """
    # the room's epoch, its offsets' life (relay.core.history); none for a room not known
    head = b"" if epoch is None else b',"epoch":' + orjson.dumps(epoch)
    yield b'{"room":' + orjson.dumps(room) + head + b',"messages":['
    sent = 0
    while chunk:
        if relay.history_epoch(room) != epoch:
            break  # the room was forgotten (or made) meanwhile: what it has is another life
        text = ",".join(envelope for _, envelope in chunk)
        yield (text if sent == 0 else "," + text).encode()
        sent += len(chunk)
        since = chunk[-1][0]
        if sent >= limit:
            break
        chunk = await _read(relay, room, since, min(HISTORY_CHUNK, limit - sent))
    yield b"]}"
