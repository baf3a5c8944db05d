"""``GET /``: the chat page says whether this relay wants a token, and nothing more."""

from __future__ import annotations

from pathlib import Path

import httpx

from relay.page import OPEN_TAG, TOKEN_TAG, IndexPage
from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread

SECRET = "page-test-secret-0123456789abcdef"
API_KEY = "page-test-api-key"


def test_an_open_relay_serves_the_page_saying_open(live_relay: LiveRelay) -> None:
    page = httpx.get(live_relay.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert OPEN_TAG in page.text and TOKEN_TAG not in page.text


def test_a_relay_with_a_secret_says_token_and_gives_nothing_away() -> None:
    with serve_in_thread(Settings(secret=SECRET, api_key=API_KEY)) as live:
        page = httpx.get(live.url + "/", timeout=10)
    assert page.status_code == 200
    assert TOKEN_TAG in page.text and OPEN_TAG not in page.text
    assert SECRET not in page.text and API_KEY not in page.text
    assert 'data-testid="token-input"' in page.text


def test_the_page_is_revalidated_cheaply(live_relay: LiveRelay) -> None:
    first = httpx.get(live_relay.url + "/", timeout=10)
    etag = first.headers["etag"]
    again = httpx.get(live_relay.url + "/", headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    other = httpx.get(live_relay.url + "/", headers={"If-None-Match": '"stale"'}, timeout=10)
    assert other.status_code == 200 and OPEN_TAG in other.text


def test_open_and_secured_pages_differ_in_their_tag_and_etag_only(tmp_path: Path) -> None:
    html = tmp_path / "index.html"
    html.write_text(f"<head>{OPEN_TAG}</head><p>{OPEN_TAG}</p>", encoding="utf-8")
    open_page = IndexPage(html, Settings())
    secured = IndexPage(html, Settings(secret=SECRET, api_key=API_KEY))
    assert open_page.body == html.read_bytes()
    # (only the first: the page's own tag, not text that happens to look like it)
    assert secured.body == f"<head>{TOKEN_TAG}</head><p>{OPEN_TAG}</p>".encode()
    assert open_page.etag != secured.etag
