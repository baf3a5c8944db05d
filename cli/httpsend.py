"""``relay send`` over the HTTP API (with ``--api-key`` or ``RELAY_API_KEY``): what a backend
does, with no Socket.IO connection.

One message is one request (``POST /api/v1/rooms/{room}/events``, ``.../users/{user}/events``
or ``.../connections/{sid}/events``), all over one keep-alive connection, one at a time and in
order, so a streamed stdin keeps the socket path's promises: the first refused line stops the
stream, and the error names exactly the lines published. A ``429`` is waited out as its
``Retry-After`` says and the line sent again (a bounded number of times).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx

from relay.cli.client import error_from
from relay.cli.stream import Item, Outcome, Unsendable
from relay.errors import RateLimited, RelayError, Unavailable

#: times one line is sent again after 429 before the stream stops
MAX_RETRIES = 20
#: longest wait for one Retry-After (seconds)
MAX_RETRY_WAIT = 30.0


def endpoint(payload: dict[str, Any]) -> str:
    """The API path a socket-style payload (``room``, ``to`` or ``user``) goes to."""
    if "room" in payload:
        return f"/api/v1/rooms/{quote(payload['room'], safe=':@')}/events"
    if "to" in payload:
        return f"/api/v1/connections/{quote(payload['to'], safe='')}/events"
    return f"/api/v1/users/{quote(payload['user'], safe=':@')}/events"


def http_base(url: str) -> str:
    """``ws(s)://`` -> ``http(s)://``: the API is on the same port as the socket."""
    if url.startswith("ws://"):
        return "http://" + url[5:]
    if url.startswith("wss://"):
        return "https://" + url[6:]
    return url


async def send_over_http(
    url: str,
    api_key: str,
    messages: AsyncIterator[Item],
    report: Callable[[dict[str, Any]], None],
    timeout: float,
) -> Outcome:
    outcome = Outcome()
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=http_base(url), headers=headers, timeout=timeout) as http:
        async for item in messages:
            if isinstance(item, Unsendable):
                outcome.error = item.error
                break
            number, payload = item
            outcome.sent.append(number)
            try:
                ack = await _post(http, payload, f"line {number}")
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                outcome.unconfirmed.append(number)
                outcome.error = Unavailable(f"line {number}: no answer from {url} ({exc!r})")
                break
            except RelayError as exc:
                outcome.error = exc
                break
            outcome.published.add(number)
            report(ack)
    return outcome


async def _post(http: httpx.AsyncClient, payload: dict[str, Any], what: str) -> dict[str, Any]:
    body = {k: payload[k] for k in ("event", "data") if k in payload}
    path = endpoint(payload)
    for _ in range(MAX_RETRIES + 1):
        response = await http.post(path, json=body)
        answer = _json(response)
        if response.status_code == 200 and isinstance(answer, dict):
            return {"ok": True, **answer}
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            error = {"code": "internal", "message": f"HTTP {response.status_code}"}
        if response.status_code == 401:
            error = {**error, "message": f"{error.get('message')} (check --api-key)"}
        exc = error_from(error, what)
        if not isinstance(exc, RateLimited):
            raise exc
        wait = _retry_after(response)
        await asyncio.sleep(wait)  # (as the relay asked: Retry-After)
    raise exc


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.05), MAX_RETRY_WAIT)
    except ValueError:
        return 1.0
