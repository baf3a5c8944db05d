"""The chat page's HTML (``GET /``), telling the page whether this relay wants a token.

With ``RELAY_SECRET`` set, a connection needs ``auth: {token}``. The page cannot ask before it
connects, and a page that offers a nickname only to have the server refuse it is a dead end, so
relay says so in the page itself: ``<meta name="relay-auth" content="token">`` (``open``
otherwise). The page then shows a token field at once; without the tag (a copy served from
elsewhere) it learns the same from its first refused connect. Only that one fact is written
in: no secret, key or token ever is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from relay.settings import Settings

#: the tag as index.html ships it; :class:`IndexPage` rewrites it for a relay with a secret
OPEN_TAG = '<meta name="relay-auth" content="open">'
TOKEN_TAG = '<meta name="relay-auth" content="token">'


class IndexPage:
    """``index.html``, read once and fitted to ``settings``, with an ETag (answers 304)."""

    def __init__(self, path: Path, settings: Settings) -> None:
        html = path.read_text(encoding="utf-8")
        if settings.secret is not None:
            html = html.replace(OPEN_TAG, TOKEN_TAG, 1)
        self.body = html.encode()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    def response(self, request: Request) -> Response:
        # no-cache: revalidated on every load, so an upgraded relay never pairs an old page
        # with new JS modules (or a page that says "open" with a relay that now wants tokens)
        headers = {"Cache-Control": "no-cache", "ETag": self.etag}
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return HTMLResponse(self.body, headers=headers)
