"""The chat page at ``GET /``, driven in Chromium like a person would, through its test ids.

Each person is a separate browser context (own storage, own socket). A real relay serves the
page and the socket on a free port; the offline test sends with the real ``relay send``.
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
from playwright.sync_api import Browser, expect, sync_playwright

from tests.conftest import LiveRelay
from tests.e2e.chat_page import (
    DESKTOP,
    PHONE,
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def relay_send(url: str, room: str, data: str) -> None:
    """``relay send --room ROOM --url URL DATA``, the installed command line."""
    exe = Path(sys.executable).with_name("relay")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cli.main"]
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
