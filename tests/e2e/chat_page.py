"""Drive the chat page (relay/static) in Debian's Chromium through Playwright's sync API.

Only the page's ``data-testid`` hooks are used, the same ones an outside check would use.
Waiting is Playwright's auto-waiting ``expect`` (polls with a deadline), never a sleep.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    Playwright,
    WebSocket,
    expect,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}
TIMEOUT_MS = 10_000


def chromium_path() -> str | None:
    """Debian's chromium, never a browser Playwright downloads."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return shutil.which("chromium")


def launch(pw: Playwright) -> Browser:
    path = chromium_path()
    assert path, "chromium is missing: apt-get install -y chromium (tests/run.sh does it)"
    return pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)


@dataclass
class ChatPage:
    """One person's tab: a page in its own browser context (own storage, own socket)."""

    page: Page
    base_url: str
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    #: text frames the page sent on its websockets, in order (Socket.IO packets: ``42…``)
    sent_frames: list[str] = field(default_factory=list)
    #: websockets the page opened
    sockets_opened: int = 0

    def __post_init__(self) -> None:
        host = urlsplit(self.base_url).netloc
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", self._on_dialog)
        self.page.on("request", lambda req: self._on_request(req.url, host))
        self.page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws: WebSocket) -> None:
        self.sockets_opened += 1
        ws.on("framesent", lambda payload: self._on_frame(payload))

    def _on_frame(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            self.sent_frames.append(payload)

    def sent_events(self, event: str) -> list[str]:
        """The frames that emitted ``event`` (``42<ack id>["event",…]``), in order."""
        head = f'["{event}",'
        return [f for f in self.sent_frames if f.startswith("42") and head in f[:40]]

    def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_request(self, url: str, host: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob"):
            return
        if parts.netloc != host:
            self.foreign_requests.append(url)

    # -- the test ids --------------------------------------------------------------------------

    def by(self, test_id: str) -> Locator:
        return self.page.get_by_test_id(test_id)

    @property
    def status(self) -> Locator:
        return self.page.get_by_test_id("status")

    @property
    def messages(self) -> Locator:
        return self.page.get_by_test_id("messages").get_by_test_id("message")

    @property
    def members(self) -> Locator:
        return self.page.get_by_test_id("members").get_by_test_id("member")

    def message_texts(self) -> list[str]:
        return self.page.get_by_test_id("message-text").all_text_contents()

    # -- actions -------------------------------------------------------------------------------

    def open(self, path: str = "/") -> None:
        self.page.goto(self.base_url + path)
        expect(self.page.locator("html[data-ready=true]")).to_have_count(1)

    def sign_in(self, token: str, user: str) -> None:
        """Paste ``token`` into the token field, press Enter, and wait until connected as it."""
        field = self.by("token-input")
        field.fill(token)
        field.press("Enter")
        expect(self.by("token-user")).to_have_text(user)
        expect(self.status).to_have_text("connected")

    def join_room(self, room: str, user: str) -> None:
        """Join ``room`` as whoever the page is (its token names ``user``)."""
        self.page.get_by_test_id("room-input").fill(room)
        self.page.get_by_test_id("join").click()
        self.wait_joined(user)

    def join(self, nickname: str, room: str) -> None:
        """Type a nickname and a room, press join, and wait until we are in it."""
        self.page.get_by_test_id("nickname").fill(nickname)
        self.page.get_by_test_id("room-input").fill(room)
        self.page.get_by_test_id("join").click()
        self.wait_joined(nickname)

    def wait_joined(self, nickname: str) -> None:
        # The member list is filled from the `presence` answer, which comes after the
        # `join` answer: once we see ourselves there, the join is done.
        expect(self.status).to_have_text("connected")
        expect(self.members.filter(has_text=nickname)).to_have_count(1)

    def send(self, text: str) -> None:
        box = self.page.get_by_test_id("message-input")
        box.fill(text)
        box.press("Enter")
        expect(box).to_have_value("")

    def expect_texts(self, texts: list[str]) -> None:
        expect(self.page.get_by_test_id("message-text")).to_have_text(texts)

    def expect_clean(self) -> None:
        """No script errors, no dialogs, nothing fetched from anywhere but relay."""
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs
        assert self.foreign_requests == [], self.foreign_requests


@contextmanager
def chat_page(
    browser: Browser,
    base_url: str,
    viewport: dict[str, int] | None = None,
    path: str = "/",
    prepare: Callable[[BrowserContext], None] | None = None,
) -> Iterator[ChatPage]:
    """A tab on ``base_url + path``; ``prepare`` sees the context first (to route requests)."""
    context: BrowserContext = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    try:
        if prepare is not None:
            prepare(context)
        chat = ChatPage(context.new_page(), base_url)
        chat.open(path)
        yield chat
    finally:
        context.close()


def screenshot(chat: ChatPage, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    chat.page.screenshot(path=str(path), animations="disabled")
    return path
