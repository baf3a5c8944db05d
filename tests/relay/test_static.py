"""The chat page's files are served by relay itself and revalidated on every load."""

from __future__ import annotations

import httpx

from tests.conftest import LiveRelay


async def test_static_files_are_revalidated(live_relay: LiveRelay) -> None:
    async with httpx.AsyncClient(base_url=live_relay.url, timeout=10) as http:
        r = await http.get("/static/js/main.js")
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-cache"
        etag = r.headers["etag"]
        again = await http.get("/static/js/main.js", headers={"If-None-Match": etag})
        assert again.status_code == 304
        vendored = await http.get("/static/vendor/socket.io/socket.io.esm.min.js")
        assert vendored.status_code == 200 and b"Socket" in vendored.content
