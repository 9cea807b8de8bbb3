"""The chat page in a real browser, as issue 10 asks of it: the message box and Send/Stop in
view without scrolling on a laptop and a phone (with a conversation and a notice on screen),
the conversation drawer, Send/Stop that follow the stream, held credits in the header, New chat
instead of a trash button that only blanked the screen, delete with confirmation, and each
reply's cost line after a reload.

Replies come from the tiny random Gemma 3 of tests/ui/conftest.py with temperature 0: they run
to the requested length, so the tests choose how long a reply streams.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.ui.conftest import TEST_PASSWORD, TINY_MAX_NEW_TOKENS_CAP, Shots
from tests.ui.pages import (
    REPLY_TIMEOUT_MS,
    bot_messages,
    choose_model,
    field,
    send,
    set_sampling,
    sign_up_and_in,
    user_messages,
    wait_for_footer,
)

pytestmark = pytest.mark.browser

SHORT_REPLY_TOKENS = 24
# As long as the server allows: time to watch the reply stream and press Stop before it ends.
LONG_REPLY_TOKENS = TINY_MAX_NEW_TOKENS_CAP
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
COMPOSER = ("#chat-input textarea", "#send-button", "#stop-button")
DRAWER_OPEN = re.compile(r"\bopen\b")
DRAWER_WIDTH_PX = 280  # web.ui.chat_tab's gr.Sidebar width


def assert_in_view_without_scrolling(page: Page, viewport: dict[str, int], what: str) -> None:
    """Scrolled to the top, each composer control lies wholly inside the viewport."""
    page.evaluate("window.scrollTo(0, 0)")
    for selector in COMPOSER:
        box = page.locator(selector).bounding_box()
        assert box is not None, f"{selector} is not displayed ({what})"
        assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], (
            f"{selector} spans y={box['y']:.0f}..{box['y'] + box['height']:.0f}, "
            f"outside the {viewport['height']} px tall screen ({what})"
        )
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (
            f"{selector} spans x={box['x']:.0f}..{box['x'] + box['width']:.0f}, "
            f"outside the {viewport['width']} px wide screen ({what})"
        )


def in_view(locator: Locator, viewport: dict[str, int]) -> bool:
    box = locator.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]


def conversation_choices(page: Page) -> Locator:
    return page.locator("#conversation-list label")


class TestLayout:
    @pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
    def test_message_box_and_buttons_stay_in_view(
        self,
        page: Page,
        shots: Shots,
        unique_name: Callable[[str], str],
        viewport: dict[str, int],
    ) -> None:
        """At 1280x800 and 390x844 the message box, Send and Stop are on screen without
        scrolling: at first, after two replies, and with a notice shown."""
        page.set_viewport_size(viewport)
        sign_up_and_in(page, unique_name("fit"), TEST_PASSWORD)
        assert_in_view_without_scrolling(page, viewport, "signed in")
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        for number in range(2):
            send(page, f"Message number {number}")
            expect(bot_messages(page)).to_have_count(number + 1, timeout=REPLY_TIMEOUT_MS)
            wait_for_footer(page)
        shots(page, "two-replies")
        assert_in_view_without_scrolling(page, viewport, "after two replies")
        choose_model(page, "Tiny Gemma Premium")
        chosen = field(page, "model-select")
        expect(chosen).to_have_value("Tiny Gemma Premium")
        assert chosen.evaluate("input => input.scrollWidth <= input.clientWidth"), (
            "the model's name is cut off in the picker"
        )
        send(page, "Too expensive")
        expect(page.locator("#chat-notice")).to_contain_text("Not enough credits")
        shots(page, "with-notice")
        assert_in_view_without_scrolling(page, viewport, "with a notice")
        expect(page.locator("#chat-notice")).to_be_in_viewport()

    def test_account_tab_is_not_pushed_aside_by_the_chat_drawer(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """On a laptop the conversation drawer is open beside the chat; the Account tab, which
        has no drawer, starts at the page's left edge, not after a blank drawer-wide column, and
        the chat is beside the drawer again on the way back, even after a resize."""
        page.set_viewport_size(LAPTOP)
        sign_up_and_in(page, unique_name("wide"), TEST_PASSWORD)
        expect(page.locator("#lc-sidebar")).to_have_class(DRAWER_OPEN)
        beside_drawer = "() => document.querySelector('#lc-chat-main').getBoundingClientRect().x"
        page.wait_for_function(f"() => ({beside_drawer})() >= {DRAWER_WIDTH_PX}")
        page.get_by_role("tab", name="Account").click()
        expect(page.locator(".lc-cards")).to_be_visible()
        page.wait_for_function(
            "() => document.querySelector('.lc-cards').getBoundingClientRect().x"
            f" < {DRAWER_WIDTH_PX // 2}"
        )
        shots(page, "account-full-width")
        # A window resized while the drawer is hidden with its tab must not leave it covering
        # the chat afterwards.
        page.set_viewport_size({**LAPTOP, "width": LAPTOP["width"] - 40})
        page.set_viewport_size(LAPTOP)
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_function(f"() => ({beside_drawer})() >= {DRAWER_WIDTH_PX}")

    def test_conversation_list_is_a_drawer_on_a_phone(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """On a laptop the conversation list is open beside the chat; on a phone it starts
        closed, opens from its toggle, and closes again once a conversation is picked."""
        page.set_viewport_size(LAPTOP)
        sign_up_and_in(page, unique_name("drawer"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        send(page, "Remember this one")
        wait_for_footer(page)
        expect(conversation_choices(page)).to_have_count(1)
        assert in_view(page.locator("#conversation-list"), LAPTOP)
        page.set_viewport_size(PHONE)
        page.reload()
        expect(page.locator("#chat-input")).to_be_visible()
        expect(conversation_choices(page)).to_have_count(1)
        expect(page.locator("#lc-sidebar")).not_to_have_class(DRAWER_OPEN)
        assert not in_view(page.locator("#conversation-list"), PHONE)
        shots(page, "phone-drawer-closed")
        page.locator("#lc-sidebar .toggle-button").click()
        expect(page.locator("#lc-sidebar")).to_have_class(DRAWER_OPEN)
        conversation_choices(page).first.click()
        expect(user_messages(page).first).to_contain_text("Remember this one")
        expect(page.locator("#lc-sidebar")).not_to_have_class(DRAWER_OPEN)
        shots(page, "phone-conversation-opened")
        assert_in_view_without_scrolling(page, PHONE, "conversation opened from the drawer")


class TestStreamingControls:
    def test_send_is_disabled_while_a_reply_streams_and_stop_only_then(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """Send is disabled and Stop enabled only while a reply streams, and the header shows
        the credits held for it; both buttons and the header return to normal after Stop and
        after a reply that finishes."""
        sign_up_and_in(page, unique_name("buttons"), TEST_PASSWORD)
        send_button, stop_button = page.locator("#send-button"), page.locator("#stop-button")
        held = page.locator("#lc-balance .lc-held")
        expect(send_button).to_be_enabled()
        expect(stop_button).to_be_disabled()
        set_sampling(page, temperature=0, max_tokens=LONG_REPLY_TOKENS)
        send(page, "Write a very long story")
        expect(bot_messages(page).last).not_to_be_empty(timeout=60_000)
        expect(send_button).to_be_disabled()
        expect(stop_button).to_be_enabled()
        expect(held).to_contain_text("held")
        # Stop at once: a screenshot first (over a second on a loaded machine) gave the reply
        # time to finish, leaving nothing to stop.
        stop_button.click()
        shots(page, "stopping")
        wait_for_footer(page)
        expect(send_button).to_be_enabled()
        expect(stop_button).to_be_disabled()
        expect(held).to_have_count(0)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        send(page, "A short one")
        expect(bot_messages(page)).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
        wait_for_footer(page)
        expect(send_button).to_be_enabled()
        expect(stop_button).to_be_disabled()
        expect(held).to_have_count(0)
        shots(page, "finished")


class TestHonestControls:
    def test_new_chat_starts_a_new_conversation_and_there_is_no_fake_clear(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """The chat log has no trash button that only blanks the screen. New chat starts a
        new stored conversation: the same question is billed for the same prompt tokens as
        the first time (no old context), and a reload does not bring the old messages back."""
        sign_up_and_in(page, unique_name("newchat"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        send(page, "The same question")
        first = wait_for_footer(page)
        expect(page.locator('#chatbot button[aria-label="Clear"]')).to_be_hidden()
        page.locator("#new-chat").click()
        expect(bot_messages(page)).to_have_count(0)
        send(page, "The same question")
        expect(bot_messages(page)).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
        second = wait_for_footer(page)
        assert second["prompt"] == first["prompt"], (first, second)
        expect(conversation_choices(page)).to_have_count(2)
        shots(page, "second-conversation")
        page.locator("#new-chat").click()
        page.reload()
        expect(page.locator("#chat-input")).to_be_visible()
        expect(conversation_choices(page)).to_have_count(2)
        expect(bot_messages(page)).to_have_count(0)
        expect(user_messages(page)).to_have_count(0)

    def test_deleting_a_conversation_asks_for_confirmation(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """Delete asks first; Cancel keeps the conversation; Confirm delete removes it."""
        sign_up_and_in(page, unique_name("delete"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        send(page, "Keep me for now")
        wait_for_footer(page)
        expect(conversation_choices(page)).to_have_count(1)
        page.locator("#conversation-tools").get_by_text("Rename or delete").click()
        page.locator("#delete-button").click()
        expect(page.locator("#delete-confirm")).to_be_visible()
        expect(page.locator("#conversation-notice")).to_contain_text("cannot be undone")
        shots(page, "asked")
        expect(conversation_choices(page)).to_have_count(1)
        page.locator("#delete-cancel").click()
        expect(page.locator("#delete-confirm")).to_be_hidden()
        expect(conversation_choices(page)).to_have_count(1)
        expect(bot_messages(page)).to_have_count(1)
        page.locator("#delete-button").click()
        page.locator("#delete-confirm").click()
        expect(page.locator("#conversation-notice")).to_contain_text("deleted")
        expect(conversation_choices(page)).to_have_count(0)
        expect(bot_messages(page)).to_have_count(0)
        shots(page, "deleted")

    def test_a_reopened_conversation_shows_each_reply_cost(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """After a reload, the reopened conversation shows under each reply the cost line it
        had when it streamed."""
        sign_up_and_in(page, unique_name("footers"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        live = []
        for number in range(2):
            send(page, f"Question {number}")
            expect(bot_messages(page)).to_have_count(number + 1, timeout=REPLY_TIMEOUT_MS)
            live.append(wait_for_footer(page))
        page.reload()
        conversation_choices(page).first.click()
        replies = bot_messages(page)
        expect(replies).to_have_count(2)
        shots(page, "reopened")
        for reply, usage in zip([replies.nth(0), replies.nth(1)], live, strict=True):
            expect(reply).to_contain_text(
                f"{usage['cost']} credit"
                f"{'s' if usage['cost'] != 1 else ''} · {usage['prompt']} prompt + "
                f"{usage['completion']} reply tokens"
            )
        assert field(page, "chat-input").is_visible()
