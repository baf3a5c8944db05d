"""The chat page at ``GET /``, driven in Chromium like a person would, through its test ids.

Each person is a separate browser context (own storage, own socket). A real relay serves the
page and the socket on a free port; the offline test sends with the real ``relay send``. A
second relay runs with ``RELAY_SECRET`` (and the API key a secret requires) for the token
tests; relays with tight limits are started by the tests that need them.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import socketio
from playwright.sync_api import Browser, BrowserContext, Route, expect, sync_playwright

from relay.cli.render import sender_text
from relay.core.auth import issue_token
from relay.limits import OFF, Rate
from relay.settings import Settings
from tests.conftest import LiveRelay, free_port, serve_in_thread, start_relay_process
from tests.e2e.chat_page import (
    DESKTOP,
    PHONE,
    ChatPage,
    chat_page,
    chromium_path,
    launch,
    screenshot,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (tests/run.sh)"),
]

XSS = "<img src=x onerror=alert(1)>"
SECRET = "chat-page-test-secret-0123456789abcdef"
API_KEY = "chat-page-test-api-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def secured_relay() -> Iterator[LiveRelay]:
    """A relay with RELAY_SECRET (every connection needs a token) and RELAY_API_KEY."""
    settings = Settings(secret=SECRET, api_key=API_KEY, publish_rate=OFF, join_rate=OFF)
    with serve_in_thread(settings) as live:
        yield live


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def relay_send(url: str, room: str, data: str) -> None:
    """``relay send --room ROOM --url URL DATA``, the installed command line."""
    exe = Path(sys.executable).with_name("relay")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "relay"]
    done = subprocess.run(
        [*cmd, "send", "--room", room, "--url", url, data],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def room_members(url: str, room: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{url}/api/v1/rooms/{room}/members", timeout=10)
    answer.raise_for_status()
    members: list[dict[str, object]] = answer.json()["members"]
    return members


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` with a deadline (the sync twin of conftest's ``wait_for``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def test_page_and_its_socket_client_are_served_by_relay(live_relay: LiveRelay) -> None:
    page = httpx.get(live_relay.url + "/")
    assert page.status_code == 200
    assert 'data-testid="messages"' in page.text
    client = httpx.get(live_relay.url + "/static/vendor/socket.io/socket.io.esm.min.js")
    assert client.status_code == 200
    assert "Socket.IO v4." in client.text[:200]
    licence = httpx.get(live_relay.url + "/static/vendor/socket.io/LICENSE")
    assert licence.status_code == 200
    assert "Permission is hereby granted" in licence.text


def test_two_people_chat_both_ways_and_see_each_other(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    with chat_page(browser, live_relay.url) as alice, chat_page(browser, live_relay.url) as bob:
        alice.join("alice", room)
        bob.join("bob", room)
        for person in (alice, bob):
            expect(person.members).to_have_count(2)
            expect(person.members.filter(has_text="alice")).to_have_count(1)
            expect(person.members.filter(has_text="bob")).to_have_count(1)

        alice.send("hello bob")
        bob.expect_texts(["hello bob"])
        bob.by("message-input").fill("hi alice")
        bob.by("send").click()  # the button, where alice pressed Enter
        # Shift+Enter is a new line, Enter sends.
        box = alice.by("message-input")
        box.fill("two")
        box.press("Shift+Enter")
        box.press_sequentially("lines")
        box.press("Enter")
        for person in (alice, bob):
            person.expect_texts(["hello bob", "hi alice", "two\nlines"])
        # Senders are named and our own messages are marked as ours.
        expect(alice.messages.first).to_have_attribute("data-from", "alice")
        expect(alice.messages.first).to_have_class("msg msg--own")
        expect(bob.messages.first).not_to_have_class("msg msg--own")
        expect(bob.messages.nth(1)).to_have_class("msg msg--own")
        expect(alice.messages.first.locator("time")).to_have_count(1)

        screenshot(alice, "chat-desktop")
        # Bob leaves: alice's member list follows.
        bob.page.close()
        expect(alice.members).to_have_count(1)
        alice.expect_clean()
        bob.expect_clean()


def test_typing_shows_and_clears(browser: Browser, live_relay: LiveRelay, room: str) -> None:
    with chat_page(browser, live_relay.url) as alice, chat_page(browser, live_relay.url) as bob:
        alice.join("alice", room)
        bob.join("bob", room)
        expect(alice.members).to_have_count(2)
        bob.by("message-input").press_sequentially("wait for it")
        expect(alice.by("typing")).to_have_text("bob is typing…")
        expect(bob.by("typing")).to_have_text("")  # not told about our own typing
        bob.by("message-input").press("Enter")
        alice.expect_texts(["wait for it"])
        expect(alice.by("typing")).to_have_text("")
        alice.expect_clean()
        bob.expect_clean()


def test_direct_message_reaches_only_its_target(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    url = live_relay.url
    with (
        chat_page(browser, url) as alice,
        chat_page(browser, url) as bob,
        chat_page(browser, url) as carol,
    ):
        alice.join("alice", room)
        bob.join("bob", room)
        carol.join("carol", room)
        expect(alice.members).to_have_count(3)

        alice.members.filter(has_text="bob").get_by_role("button").click()
        expect(alice.page.locator("#conversation-title")).to_have_text("@ bob")
        alice.send("psst, bob")
        alice.expect_texts(["psst, bob"])

        tab = bob.by("direct-tab").filter(has_text="alice")
        expect(tab.get_by_test_id("unread")).to_have_text("1")
        tab.get_by_role("button").first.click()
        bob.expect_texts(["psst, bob"])
        expect(tab.get_by_test_id("unread")).to_have_count(0)
        bob.send("got it")
        alice.expect_texts(["psst, bob", "got it"])

        # A room message from alice after the direct one: once carol has it, she would have
        # had the direct message too, had it reached her.
        alice.by("room-tab").filter(has_text=room).get_by_role("button").first.click()
        alice.send("back in the room")
        carol.expect_texts(["back in the room"])
        expect(carol.by("direct-tab")).to_have_count(0)
        expect(carol.page.get_by_text("psst, bob")).to_have_count(0)
        expect(carol.page.get_by_text("got it")).to_have_count(0)
        for person in (alice, bob, carol):
            person.expect_clean()


def test_reload_shows_history_once(browser: Browser, live_relay: LiveRelay, room: str) -> None:
    with chat_page(browser, live_relay.url) as alice, chat_page(browser, live_relay.url) as bob:
        alice.join("alice", room)
        bob.join("bob", room)
        alice.send("one")
        bob.send("two")
        alice.send("three")
        alice.expect_texts(["one", "two", "three"])

        alice.page.reload()
        # Nickname, room and history come back by themselves.
        expect(alice.by("nickname")).to_have_value("alice")
        alice.wait_joined("alice")
        alice.expect_texts(["one", "two", "three"])
        expect(alice.messages.first).to_have_class("msg msg--own")
        bob.send("four")
        alice.expect_texts(["one", "two", "three", "four"])
        alice.expect_clean()


def test_markup_in_a_message_is_shown_as_text(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    with chat_page(browser, live_relay.url) as alice, chat_page(browser, live_relay.url) as bob:
        alice.join("alice", room)
        bob.join("bob", room)
        alice.send(XSS)
        for person in (alice, bob):
            person.expect_texts([XSS])
            expect(person.page.locator("[data-testid=messages] img")).to_have_count(0)
        # Give a would-be onerror handler the same chance as a real message round trip.
        bob.send("after")
        alice.expect_texts([XSS, "after"])
        alice.expect_clean()
        bob.expect_clean()
        assert alice.dialogs == [] and bob.dialogs == []


def test_offline_then_back_shows_missed_messages_once_in_order(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    with chat_page(browser, live_relay.url) as alice:
        alice.join("alice", room)
        relay_send(live_relay.url, room, "before")
        alice.expect_texts(["before"])

        alice.page.context.set_offline(True)
        expect(alice.status).to_have_text("offline")
        # The page lets go of its connection at once (an emulated-offline WebSocket would
        # otherwise linger until the ping timeout), so what comes next reaches it only
        # through the rejoin with `since`.
        wait_until(lambda: room_members(live_relay.url, room) == [])
        missed = [f"missed {i}" for i in range(1, 4)]
        for text in missed:
            relay_send(live_relay.url, room, text)
        alice.expect_texts(["before"])
        # What alice writes meanwhile waits, marked as sending, and goes out once back.
        alice.send("written offline")
        expect(alice.messages.last).to_contain_text("sending…")
        screenshot(alice, "chat-offline")

        alice.page.context.set_offline(False)
        expect(alice.status).to_have_text("connected")
        alice.expect_texts(["before", *missed, "written offline"])
        expect(alice.messages.last).not_to_contain_text("sending…")
        # Anything replayed twice would land before a message sent after the reconnect.
        relay_send(live_relay.url, room, "after")
        alice.expect_texts(["before", *missed, "written offline", "after"])
        offsets = [
            int(o) for o in alice.messages.evaluate_all("ns => ns.map(n => n.dataset.offset)")
        ]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        alice.expect_clean()


def test_a_restarted_relay_s_new_messages_are_shown_not_taken_for_old_ones(
    browser: Browser, room: str
) -> None:
    """The relay restarts on the same port and its room passes the page's old offsets (3 > 2)
    before the page is back: the join's epoch tells the page the room started again, so the
    three are shown as new, after what it showed before, each once."""
    port = free_port()
    server = start_relay_process(port=port)
    try:
        with chat_page(browser, server.url) as alice:
            alice.join("alice", room)
            for text in ("old-1", "old-2"):
                relay_send(server.url, room, text)
            alice.expect_texts(["old-1", "old-2"])

            # Offline while the relay restarts, so the page is not back before the three are.
            alice.page.context.set_offline(True)
            expect(alice.status).to_have_text("offline")
            wait_until(lambda: room_members(server.url, room) == [])
            assert server.stop() == 0
            server = start_relay_process(port=port)
            new = ["new-1", "new-2", "new-3"]
            for text in new:
                relay_send(server.url, room, text)

            alice.page.context.set_offline(False)
            expect(alice.status).to_have_text("connected")
            alice.expect_texts(["old-1", "old-2", *new])
            relay_send(server.url, room, "after")
            alice.expect_texts(["old-1", "old-2", *new, "after"])
            offsets = alice.messages.evaluate_all("ns => ns.map(n => Number(n.dataset.offset))")
            assert offsets == [1, 2, 1, 2, 3, 4]
            alice.expect_clean()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_unread_counts_on_rooms_not_shown(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    other = room + "-b"
    with chat_page(browser, live_relay.url) as alice, chat_page(browser, live_relay.url) as bob:
        alice.join("alice", room)
        alice.join("alice", other)  # now showing `other`
        bob.join("bob", room)
        bob.send("one")
        bob.send("two")
        tab = alice.by("room-tab").filter(has_text=room).first
        expect(tab.get_by_test_id("unread")).to_have_text("2")
        alice.expect_texts([])
        tab.get_by_role("button").first.click()
        alice.expect_texts(["one", "two"])
        expect(tab.get_by_test_id("unread")).to_have_count(0)
        alice.expect_clean()


def test_bad_nickname_gets_a_hint_not_a_connection(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    with chat_page(browser, live_relay.url) as page:
        page.by("nickname").fill("not ok!")
        page.by("room-input").fill(room)
        page.by("join").click()
        expect(page.page.locator("#nickname-hint")).to_contain_text(
            "letters, digits", ignore_case=True
        )
        expect(page.by("nickname")).to_have_attribute("aria-invalid", "true")
        expect(page.status).to_have_text("offline")
        expect(page.by("room-tab")).to_have_count(0)
        page.by("nickname").fill("ok")
        page.by("join").click()
        page.wait_joined("ok")
        page.expect_clean()


def test_phone_layout(browser: Browser, live_relay: LiveRelay, room: str) -> None:
    with (
        chat_page(browser, live_relay.url, PHONE) as phone,
        chat_page(browser, live_relay.url, DESKTOP) as desk,
    ):
        # With no room yet the rooms panel is open; joining closes it onto the chat.
        expect(phone.by("nickname")).to_be_visible()
        screenshot(phone, "chat-phone-start")
        phone.by("nickname").fill("pat")
        phone.by("room-input").fill(room)
        phone.by("join").click()
        expect(phone.status).to_have_text("connected")
        expect(phone.by("nickname")).not_to_be_visible()
        desk.join("dana", room)
        desk.send("hi from a big screen with a long line that has to wrap on a phone")
        phone.send("hi from a phone")
        phone.expect_texts(
            ["hi from a big screen with a long line that has to wrap on a phone", "hi from a phone"]
        )
        expect(phone.by("message-input")).to_be_visible()
        expect(phone.by("send")).to_be_visible()
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(phone, "chat-phone")

        phone.page.get_by_role("button", name="Members").click()
        expect(phone.members).to_have_count(2)
        expect(phone.members.filter(has_text="dana")).to_be_visible()
        screenshot(phone, "chat-phone-members")
        phone.page.keyboard.press("Escape")
        expect(phone.members.first).not_to_be_visible()

        phone.page.get_by_role("button", name="Rooms and settings").click()
        expect(phone.by("room-input")).to_be_visible()
        screenshot(phone, "chat-phone-rooms")
        screenshot(desk, "chat-desktop-2")
        phone.expect_clean()
        desk.expect_clean()


# ---- tokens ------------------------------------------------------------------------------------


def token_for(user: str, ttl_s: float | None = 3600, secret: str = SECRET) -> str:
    return issue_token(secret, user, ttl_s=ttl_s)


def api_publish(url: str, room: str, text: str, key: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.post(
        f"{url}/api/v1/rooms/{room}/events", json={"data": {"text": text}}, headers=headers
    )
    assert answer.status_code == 200, answer.text


def test_secured_relay_asks_for_a_token_and_lets_a_valid_one_in(
    browser: Browser, secured_relay: LiveRelay, room: str
) -> None:
    url = secured_relay.url
    with chat_page(browser, url) as alice, chat_page(browser, url) as bob:
        # The page knows at once that this relay wants a token: a token field with a word on
        # where to get one, not a nickname the server would refuse.
        expect(alice.by("token-input")).to_be_visible()
        expect(alice.by("token-input")).to_be_focused()
        expect(alice.by("token-form")).to_contain_text("access token")
        expect(alice.by("token-form")).to_contain_text("relay token")
        expect(alice.by("nickname")).not_to_be_visible()
        expect(alice.status).to_have_text("offline")
        screenshot(alice, "chat-token-prompt")

        # Not a token at all: said so before anything is sent.
        alice.by("token-input").fill("hello")
        alice.by("token-input").press("Enter")
        expect(alice.by("token-hint")).to_contain_text("not a token")
        # A token signed with another secret: the server's reason, and the field stays.
        alice.by("token-input").fill(token_for("alice", secret="not-the-server-secret"))
        alice.by("token-input").press("Enter")
        expect(alice.by("token-hint")).to_contain_text("refused the token")
        expect(alice.by("token-hint")).to_contain_text("signature")
        expect(alice.by("token-input")).to_be_visible()
        expect(alice.by("token-input")).to_have_attribute("aria-invalid", "true")

        alice.sign_in(token_for("alice"), "alice")
        expect(alice.by("token-input")).not_to_be_visible()
        alice.join_room(room, "alice")
        bob.sign_in(token_for("bob"), "bob")
        bob.join_room(room, "bob")
        alice.send("hi bob, with a token")
        bob.send("hi alice")
        for person in (alice, bob):
            person.expect_texts(["hi bob, with a token", "hi alice"])
        expect(bob.messages.first).to_have_attribute("data-from", "alice")
        # The token is this tab's, for this session: not in localStorage, not in the address.
        assert alice.page.evaluate("localStorage.getItem('relay.token')") is None
        assert alice.page.evaluate("sessionStorage.getItem('relay.token')")
        screenshot(alice, "chat-token-desktop")

        # Signing out forgets the token and asks for one again. What was waiting to be sent
        # is not sent later as whoever signs in next: it is marked failed, to retry or discard.
        alice.page.context.set_offline(True)
        expect(alice.status).to_have_text("offline")
        alice.send("not sent yet")
        expect(alice.messages.last).to_contain_text("sending…")
        alice.by("sign-out").click()
        expect(alice.by("token-input")).to_be_visible()
        expect(alice.status).to_have_text("offline")
        assert alice.page.evaluate("sessionStorage.getItem('relay.token')") is None
        expect(alice.messages.last.get_by_test_id("failed")).to_have_text(
            "Not sent: you signed out."
        )
        alice.page.context.set_offline(False)
        alice.expect_clean()
        bob.expect_clean()


def test_token_prompt_on_a_phone(browser: Browser, secured_relay: LiveRelay, room: str) -> None:
    with chat_page(browser, secured_relay.url, PHONE) as phone:
        expect(phone.by("token-input")).to_be_visible()
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(phone, "chat-phone-token")
        phone.sign_in(token_for("pat"), "pat")
        phone.join_room(room, "pat")
        phone.send("from a phone, with a token")
        phone.expect_texts(["from a phone, with a token"])
        screenshot(phone, "chat-phone-token-joined")
        phone.expect_clean()


def test_a_page_that_thinks_relay_is_open_asks_for_a_token_when_refused(
    browser: Browser, secured_relay: LiveRelay, room: str
) -> None:
    """A copy of the page that does not know (served without relay's hint) learns it from the
    refused connect: `connect_error` with `data.code` `unauthorized`."""

    def as_if_open(context: BrowserContext) -> None:
        def serve(route: Route) -> None:
            answer = route.fetch()
            body = answer.text()
            assert '<meta name="relay-auth" content="token">' in body
            body = body.replace('content="token"', 'content="open"')
            route.fulfill(response=answer, body=body)

        context.route(secured_relay.url + "/", serve)

    with chat_page(browser, secured_relay.url, prepare=as_if_open) as alice:
        expect(alice.by("token-input")).not_to_be_visible()
        alice.by("nickname").fill("alice")
        alice.by("room-input").fill(room)
        alice.by("join").click()
        expect(alice.by("token-input")).to_be_visible()
        expect(alice.by("token-input")).to_be_focused()
        expect(alice.by("token-hint")).to_contain_text("needs an access token")
        expect(alice.page.locator("#banner")).to_contain_text("access token")
        # The banner's button leads back to the field (on a phone it opens the drawer).
        alice.by("room-input").focus()
        alice.by("banner-action").click()
        expect(alice.by("token-input")).to_be_focused()
        # The room asked for is kept and joined once the token is in.
        alice.sign_in(token_for("alice"), "alice")
        alice.wait_joined("alice")
        expect(alice.page.locator("#banner")).to_be_hidden()
        alice.send("in at last")
        alice.expect_texts(["in at last"])
        alice.expect_clean()


def test_token_in_the_link_is_used_then_removed_from_the_address_bar(
    browser: Browser, secured_relay: LiveRelay, room: str
) -> None:
    token = token_for("carol")
    with chat_page(browser, secured_relay.url, path=f"/#token={token}") as carol:
        expect(carol.by("token-user")).to_have_text("carol")
        expect(carol.status).to_have_text("connected")
        assert carol.page.url == secured_relay.url + "/"
        assert token not in carol.page.evaluate("location.href + history.state")
        carol.join_room(room, "carol")
        # Kept for the tab's session: a reload is still carol, with her room.
        carol.page.reload()
        expect(carol.by("token-user")).to_have_text("carol")
        carol.wait_joined("carol")
        assert carol.page.evaluate("localStorage.getItem('relay.token')") is None
        carol.expect_clean()
    # Other parameters of the fragment stay; the token goes.
    with chat_page(browser, secured_relay.url, path=f"/#token={token}&keep=1") as again:
        expect(again.by("token-user")).to_have_text("carol")
        assert again.page.url == secured_relay.url + "/#keep=1"


def test_an_expired_token_brings_the_prompt_back_and_a_new_one_resumes(
    browser: Browser, secured_relay: LiveRelay, room: str
) -> None:
    url = secured_relay.url
    with chat_page(browser, url) as dora, chat_page(browser, url) as eve:
        eve.sign_in(token_for("eve"), "eve")
        eve.join_room(room, "eve")
        # exp 2-3 s away: relay ends the connection once exp and its 5 s leeway have passed.
        dora.sign_in(token_for("dora", ttl_s=3), "dora")
        dora.join_room(room, "dora")
        eve.send("before")
        dora.expect_texts(["before"])

        expect(dora.by("token-input")).to_be_visible(timeout=25_000)
        expect(dora.by("token-hint")).to_contain_text("expired")
        expect(dora.page.locator("#banner")).to_contain_text("expired")
        expect(dora.status).to_have_text("offline")
        expect(eve.members.filter(has_text="dora")).to_have_count(0)
        opened = dora.sockets_opened
        screenshot(dora, "chat-token-expired")

        # Written while signed out: kept, and sent once a new token is in.
        dora.send("written while signed out")
        expect(dora.messages.last).to_contain_text("sending…")
        api_publish(url, room, "missed", key=API_KEY)
        eve.expect_texts(["before", "missed"])
        # No connection was attempted meanwhile (nothing silently retries the dead token).
        expect(dora.status).to_have_text("offline")
        assert dora.sockets_opened == opened

        dora.sign_in(token_for("dora"), "dora")
        dora.wait_joined("dora")
        dora.expect_texts(["before", "missed", "written while signed out"])
        eve.expect_texts(["before", "missed", "written while signed out"])
        expect(dora.messages.last).not_to_contain_text("sending…")
        dora.expect_clean()
        eve.expect_clean()


# ---- names -------------------------------------------------------------------------------------


def test_api_sender_shows_as_api_like_listen(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    with chat_page(browser, live_relay.url) as alice:
        alice.join("alice", room)
        api_publish(live_relay.url, room, "from the HTTP API")
        alice.expect_texts(["from the HTTP API"])
        shown = sender_text({"sid": None, "user": None})
        assert shown == "api"
        expect(alice.messages.first).to_have_attribute("data-from", shown)
        expect(alice.messages.first.locator(".msg__from")).to_have_text(shown)
        alice.expect_clean()


def test_anonymous_sender_is_named_as_listen_names_it(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    with chat_page(browser, live_relay.url) as alice, socketio.SimpleClient() as anon:
        alice.join("alice", room)
        anon.connect(live_relay.url)  # (long-polling: no websocket-client package here)
        assert anon.call("join", {"room": room})["ok"]
        assert anon.call("publish", {"room": room, "data": "no name"})["ok"]
        shown = sender_text({"sid": anon.sid, "user": None})
        assert shown.startswith("anon-")
        alice.expect_texts(["no name"])
        expect(alice.messages.first).to_have_attribute("data-from", shown)
        expect(alice.messages.first.locator(".msg__from")).to_have_text(shown)
        expect(alice.members.filter(has_text=shown)).to_have_count(1)
        alice.expect_clean()


# ---- sending: failures, retries, rate limits ---------------------------------------------------


def published_texts(chat: ChatPage, text: str) -> int:
    return sum(text in frame for frame in chat.sent_events("publish"))


def test_a_refused_send_can_be_retried_or_discarded_from_the_keyboard(
    browser: Browser, room: str
) -> None:
    big = "x" * 300  # over this relay's 200-byte RELAY_MAX_PAYLOAD: answered too_large
    with (
        serve_in_thread(Settings(max_payload=200, publish_rate=OFF, join_rate=OFF)) as live,
        chat_page(browser, live.url) as alice,
        chat_page(browser, live.url) as bob,
    ):
        alice.join("alice", room)
        bob.join("bob", room)
        alice.send(big)
        failed = alice.messages.filter(has_text=big)
        expect(failed.get_by_test_id("failed")).to_contain_text("Not sent")
        expect(failed).to_have_class("msg msg--own msg--failed")
        retry = failed.get_by_role("button", name="Retry")
        expect(retry).to_be_visible()
        expect(failed.get_by_role("button", name="Discard")).to_be_visible()
        screenshot(alice, "chat-send-failed")

        alice.send("after")
        bob.expect_texts(["after"])
        # Shown in the order of sending: the failed one waits below what went out since.
        alice.expect_texts(["after", big])

        # Keyboard: from the message box, Shift+Tab reaches Discard, then Retry; Enter retries.
        alice.by("message-input").focus()
        alice.page.keyboard.press("Shift+Tab")
        alice.page.keyboard.press("Shift+Tab")
        expect(retry).to_be_focused()
        assert published_texts(alice, big) == 1
        alice.page.keyboard.press("Enter")
        # Sent again (and refused again, as it is still too large), after "after".
        expect(failed.get_by_test_id("failed")).to_contain_text("Not sent")
        assert published_texts(alice, big) == 2
        order = [f for f in alice.sent_events("publish") if big in f or '"after"' in f]
        assert [big in f for f in order] == [True, False, True]
        expect(alice.by("message-input")).to_be_focused()
        # At 360 px the note and its actions wrap below the bubble, inside the screen.
        alice.page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        expect(retry).to_be_in_viewport()
        assert alice.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(alice, "chat-phone-send-failed")
        alice.page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]

        # Discard, from the keyboard too.
        alice.page.keyboard.press("Shift+Tab")
        expect(failed.get_by_role("button", name="Discard")).to_be_focused()
        alice.page.keyboard.press("Enter")
        expect(failed).to_have_count(0)
        alice.expect_texts(["after"])
        bob.expect_texts(["after"])
        alice.expect_clean()
        bob.expect_clean()


def test_a_direct_message_not_delivered_can_be_retried_once_they_are_back(
    browser: Browser, live_relay: LiveRelay, room: str
) -> None:
    url = live_relay.url
    with chat_page(browser, url) as alice, chat_page(browser, url, PHONE) as phone:
        alice.join("alice", room)
        with chat_page(browser, url) as bob:
            bob.join("bob", room)
            expect(alice.members).to_have_count(2)
            alice.members.filter(has_text="bob").get_by_role("button").click()
            expect(alice.page.locator("#conversation-title")).to_have_text("@ bob")
        wait_until(lambda: len(room_members(url, room)) == 1)  # bob is gone
        alice.send("are you there?")
        expect(alice.messages.last.get_by_test_id("failed")).to_contain_text("Not delivered")
        # Bob is back (on his phone).
        phone.join("bob", room)
        wait_until(lambda: len(room_members(url, room)) == 2)
        alice.messages.last.get_by_role("button", name="Retry").click()
        tab = phone.by("direct-tab").filter(has_text="alice")
        expect(tab.get_by_test_id("unread")).to_have_text("1")
        expect(alice.messages).to_have_count(1)
        expect(alice.messages.last.get_by_test_id("failed")).to_have_count(0)
        expect(alice.messages.last).not_to_contain_text("sending…")
        alice.expect_clean()
        phone.expect_clean()


def test_rate_limits_are_waited_out_in_order(browser: Browser, room: str) -> None:
    """`rate_limited` with `retry_after_ms` is not a failure: the page sends again after it, and
    keeps later sends behind (publish: 2/s, bursts of 1; join and presence: 1 every 2 s after
    a burst of 2)."""
    other = room + "-b"
    settings = Settings(publish_rate=Rate(2.0, 1.0), join_rate=Rate(0.5, 2.0))
    with (
        serve_in_thread(settings) as live,
        chat_page(browser, live.url) as alice,
        socketio.SimpleClient() as listener,
    ):
        listener.connect(live.url)
        assert listener.call("join", {"room": other})["ok"]
        alice.join("alice", room)  # a join and a presence: the burst is spent
        alice.join("alice", other)  # waited out, twice (join, then presence)
        expect(alice.page.locator("#banner")).to_be_hidden()
        limited_joins = live.relay.stats["rate_limited"]
        assert limited_joins >= 1

        texts = ["one", "two", "three", "four"]
        for text in texts:
            alice.send(text)
        alice.expect_texts(texts)
        expect(alice.page.get_by_text("sending…")).to_have_count(0, timeout=15_000)
        expect(alice.page.get_by_test_id("failed")).to_have_count(0)
        assert live.relay.stats["rate_limited"] > limited_joins
        got: list[str] = []
        while len(got) < len(texts):
            event, env = listener.receive(timeout=10)
            if event == "message":  # (not presence, nor typing notices)
                got.append(env["data"]["text"])
        assert got == texts
        alice.expect_clean()
