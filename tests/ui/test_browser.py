"""The UI in a real browser against a live `ledgerchat serve`: sign-in, a streamed and billed
reply, Stop, the insufficient-credits notice, markup shown as text, models, conversations and
the account page. Each step leaves a screenshot under artifacts/ui/<test>/.

Replies come from a tiny random Gemma 3 with temperature 0: greedy decoding of random weights
rarely emits the end token, so a reply runs to its token limit and its length is under the
test's control.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import (
    BROKEN_MODEL,
    MISSING_MODEL,
    PREMIUM_MODEL,
    PREMIUM_PER_MESSAGE_CREDITS,
    SIGNUP_GRANT_CREDITS,
    TEST_PASSWORD,
    TINY_MAX_NEW_TOKENS_CAP,
    TINY_MODEL,
    LiveServer,
    Shots,
)
from tests.ui.pages import (
    available_balance,
    bot_messages,
    choose_model,
    field,
    login,
    open_account,
    open_home,
    register,
    reply_lengths_while_streaming,
    send,
    set_sampling,
    sign_up_and_in,
    user_messages,
    wait_for_footer,
    watch_reply,
)
from web.settings import AuthSettings
from web.ui.account import HISTORY_PAGE_SIZE

pytestmark = pytest.mark.browser

SHORT_REPLY_TOKENS = 40
STREAMED_REPLY_TOKENS = 160
# The live server keeps the default lockout settings.
LOCKOUT_FAILURES = AuthSettings().lockout_failures
NARROW_VIEWPORT = {"width": 390, "height": 844}


class TestSignIn:
    def test_register_shows_field_errors_then_signs_in(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """Bad fields get a message next to them; a good form creates the account, and
        signing in shows the chat with the signup grant as balance."""
        username = unique_name("reg")
        open_home(page)
        shots(page, "sign-in-screen")
        register(page, username, f"{username}@example.com", "short", "short")
        expect(page.locator("#register-password-error")).to_contain_text("characters")
        shots(page, "password-too-short")
        register(page, username, f"{username}@example.com", TEST_PASSWORD, TEST_PASSWORD + "x")
        expect(page.locator("#register-confirm-error")).to_contain_text("differ")
        expect(page.locator("#register-password-error")).to_be_empty()
        register(page, username, "not-an-email", TEST_PASSWORD, TEST_PASSWORD)
        expect(page.locator("#register-email-error")).to_contain_text("email")
        shots(page, "bad-email")
        register(page, username, f"{username}@example.com", TEST_PASSWORD, TEST_PASSWORD)
        expect(page.locator("#login-notice")).to_contain_text("Account created")
        expect(field(page, "login-username")).to_have_value(username)
        shots(page, "registered")
        field(page, "login-password").fill("wrong password 1")
        page.locator("#login-button").click()
        expect(page.locator("#login-notice")).to_contain_text("Wrong username or password")
        login(page, username, TEST_PASSWORD)
        assert available_balance(page) == SIGNUP_GRANT_CREDITS
        expect(page.locator("#lc-user")).to_contain_text(username)
        shots(page, "signed-in")

    def test_repeated_wrong_passwords_lock_sign_in_with_a_retry_time(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """After the service's failure limit the form says when to retry, even for the right
        password."""
        username = unique_name("locked")
        open_home(page)
        register(page, username, f"{username}@example.com", TEST_PASSWORD, TEST_PASSWORD)
        expect(page.locator("#login-notice")).to_contain_text("Account created")
        for _ in range(LOCKOUT_FAILURES):
            field(page, "login-password").fill("wrong password 1")
            page.locator("#login-button").click()
            # The handler empties the password box when it answers.
            expect(field(page, "login-password")).to_have_value("")
            expect(page.locator("#login-notice")).to_contain_text("Wrong username or password")
        field(page, "login-password").fill(TEST_PASSWORD)
        page.locator("#login-button").click()
        expect(page.locator("#login-notice")).to_contain_text(
            re.compile(r"Too many failed sign-ins\. Try again in \d+ seconds")
        )
        expect(page.locator("#chat-input")).to_have_count(0)
        shots(page, "locked")

    def test_reload_keeps_the_session_and_sign_out_ends_it(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """A reload stays signed in; after signing out a reload shows the sign-in screen."""
        sign_up_and_in(page, unique_name("reload"), TEST_PASSWORD)
        page.reload()
        expect(page.locator("#chat-input")).to_be_visible()
        shots(page, "reloaded-still-signed-in")
        page.locator("#logout-button").click()
        expect(page.locator("#signin-notice")).to_contain_text("signed out")
        page.reload()
        expect(page.locator("#login-button")).to_be_visible()
        expect(page.locator("#chat-input")).to_have_count(0)
        shots(page, "signed-out-after-reload")

    def test_revoked_session_returns_to_sign_in_with_a_message(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str], live_server: LiveServer
    ) -> None:
        """When every session of the user is revoked elsewhere (the API's logout without a
        refresh token), the reloaded tab lands on the sign-in screen saying why."""
        username = unique_name("revoked")
        sign_up_and_in(page, username, TEST_PASSWORD)
        with httpx.Client(base_url=live_server.base_url, timeout=30) as api:
            login_answer = api.post(
                "/api/auth/login", json={"username": username, "password": TEST_PASSWORD}
            )
            assert login_answer.status_code == 200, login_answer.text
            access_token = login_answer.json()["access_token"]
            revoked = api.post(
                "/api/auth/logout", headers={"Authorization": f"Bearer {access_token}"}
            )
            assert revoked.status_code in (200, 201, 204), revoked.text
        page.reload()
        expect(page.locator("#login-button")).to_be_visible()
        expect(page.locator("#signin-notice")).to_contain_text("session has ended")
        shots(page, "back-to-sign-in-with-reason")


class TestChat:
    def test_reply_streams_is_billed_as_shown_and_appears_in_history(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """The reply grows on screen while it streams; the balance drops by exactly the cost
        under the reply; the charge shows in the transaction history."""
        sign_up_and_in(page, unique_name("chat"), TEST_PASSWORD)
        balance_before = available_balance(page)
        set_sampling(page, temperature=0, max_tokens=STREAMED_REPLY_TOKENS)
        watch_reply(page)
        send(page, "Tell me a long story")
        expect(user_messages(page).last).to_contain_text("Tell me a long story")
        lengths = reply_lengths_while_streaming(page, timeout_s=120)
        shots(page, "streaming")
        usage = wait_for_footer(page)
        shots(page, "reply-with-cost")
        growing = [length for length in lengths if length > 0]
        assert len(set(growing)) >= 2, f"the reply did not stream: lengths {lengths}"
        assert usage["completion"] == STREAMED_REPLY_TOKENS
        assert usage["cost"] > 0
        expect(page.locator("#lc-balance [data-available]")).to_have_attribute(
            "data-available", str(balance_before - usage["cost"])
        )
        open_account(page)
        # The Dataframe's accessible grid, not its hidden measuring table, shows the rows.
        charge = page.locator("#history-table").get_by_role("row", name=re.compile(r"Reply")).first
        expect(charge).to_contain_text(TINY_MODEL)
        shots(page, "account")
        expect(charge.get_by_role("gridcell", name=str(-usage["cost"]), exact=True)).to_have_count(
            1
        )
        expect(page.locator("#balance-cards .lc-available [data-value]")).to_have_attribute(
            "data-value", str(balance_before - usage["cost"])
        )
        expect(page.locator("#credits-plot").locator("canvas, svg").first).to_be_visible()
        page.locator("#history-csv").click()
        with page.expect_download() as download:
            page.locator("#csv-file a").first.click()
        csv_text = Path(download.value.path()).read_text(encoding="utf-8")
        assert csv_text.splitlines()[0].startswith("event_id,")
        captured = [line for line in csv_text.splitlines() if ",hold_captured," in line]
        assert len(captured) == 1 and f",{-usage['cost']}," in captured[0], csv_text

    def test_stop_keeps_the_partial_reply_and_bills_only_it(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """Stop ends generation early; the reply keeps its text and costs what was generated."""
        sign_up_and_in(page, unique_name("stop"), TEST_PASSWORD)
        balance_before = available_balance(page)
        set_sampling(page, temperature=0, max_tokens=TINY_MAX_NEW_TOKENS_CAP)
        send(page, "Write a poem about ledgers")
        expect(bot_messages(page).last).not_to_be_empty(timeout=60_000)
        page.locator("#stop-button").click()
        usage = wait_for_footer(page)
        shots(page, "stopped")
        # The notice follows the footer in a later update of the page (after the reply's alert
        # check, up to 3 s): a generous deadline, not the 5 s default, on a loaded machine.
        expect(page.locator("#chat-notice")).to_contain_text("Stopped", timeout=60_000)
        expect(bot_messages(page).last).to_contain_text(
            "stopped: billed for the tokens generated", timeout=60_000
        )
        assert 0 < usage["completion"] < TINY_MAX_NEW_TOKENS_CAP
        expect(page.locator("#lc-balance [data-available]")).to_have_attribute(
            "data-available", str(balance_before - usage["cost"])
        )

    def test_insufficient_credits_notice_and_nothing_charged(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """A model whose price exceeds the balance gets a notice; no reply, no charge."""
        sign_up_and_in(page, unique_name("poor"), TEST_PASSWORD)
        balance_before = available_balance(page)
        choose_model(page, "Tiny Gemma Premium")
        send(page, "Hello there")
        notice = page.locator("#chat-notice")
        expect(notice).to_contain_text("Not enough credits")
        shots(page, "insufficient-credits")
        expect(bot_messages(page)).to_have_count(0)
        expect(field(page, "chat-input")).to_have_value("Hello there")
        assert available_balance(page) == balance_before
        assert PREMIUM_MODEL  # the catalog's premium model is the one chosen above

    def test_markup_in_a_message_is_shown_as_text(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """`<script>` and `<img onerror>` in a message are displayed, never executed."""
        sign_up_and_in(page, unique_name("xss"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        payload = (
            "<script>window.__injected = 'script'</script> "
            "<img src=x onerror=\"window.__injected = 'img'\">"
        )
        send(page, payload)
        wait_for_footer(page)
        shots(page, "markup-as-text")
        shown = user_messages(page).last.inner_text()
        assert "<script>window.__injected = 'script'</script>" in shown
        assert "<img src=x onerror=" in shown
        assert page.locator("#chatbot img[src='x']").count() == 0
        assert page.locator("#chatbot script").count() == 0
        assert page.evaluate("window.__injected") is None
        # Reloaded from storage, the conversation is escaped the same way.
        page.reload()
        page.locator("#conversation-list label").first.click()
        expect(user_messages(page).last).to_contain_text("<img src=x onerror=")
        assert page.evaluate("window.__injected") is None

    def test_unavailable_model_is_listed_with_its_reason_and_disabled(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """Every catalog model is listed; the chosen one's price is on the line under the
        message box; an unavailable one says it is not installed and is greyed out and not
        clickable."""
        sign_up_and_in(page, unique_name("models"), TEST_PASSWORD)
        expect(page.locator("#model-price")).to_contain_text("Tiny Gemma: 1 cr/message")
        page.locator("#model-select input").click()
        options = page.locator('[data-testid="dropdown-option"]')
        expect(options.filter(has_text="Tiny Gemma Missing")).to_contain_text(
            "unavailable: not installed on this server"
        )
        missing = options.filter(has_text="Tiny Gemma Missing")
        expect(missing).to_have_attribute("aria-disabled", "true")
        assert missing.evaluate("option => getComputedStyle(option).pointerEvents") == "none"
        expect(options.filter(has_text="Tiny Gemma Premium")).not_to_have_attribute(
            "aria-disabled", "true"
        )
        shots(page, "model-list")
        options.filter(has_text="Tiny Gemma Premium").first.click()
        expect(page.locator("#model-price")).to_contain_text(
            f"Tiny Gemma Premium: {PREMIUM_PER_MESSAGE_CREDITS} cr/message"
        )
        assert MISSING_MODEL

    def test_a_fallback_answer_says_which_model_answered(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """A model that fails to load hands the request to its fallback; the page says so."""
        sign_up_and_in(page, unique_name("fallback"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        choose_model(page, "Tiny Gemma Broken")
        send(page, "Hello fallback")
        wait_for_footer(page)
        shots(page, "fallback")
        expect(bot_messages(page).last).to_contain_text(f"fallback: {BROKEN_MODEL} was unavailable")
        expect(page.locator("#chat-notice")).to_contain_text(
            f"{BROKEN_MODEL} was unavailable, so {TINY_MODEL} answered"
        )

    def test_conversations_survive_reload_and_can_be_renamed_and_deleted(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """A conversation is listed after a reload with its messages; rename and delete work."""
        sign_up_and_in(page, unique_name("conv"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        send(page, "First conversation")
        wait_for_footer(page)
        page.locator("#new-chat").click()
        expect(bot_messages(page)).to_have_count(0)
        send(page, "Second conversation")
        wait_for_footer(page)
        page.reload()
        conversations = page.locator("#conversation-list label")
        expect(conversations).to_have_count(2)
        conversations.filter(has_text="First conversation").click()
        expect(user_messages(page).first).to_contain_text("First conversation")
        expect(bot_messages(page)).to_have_count(1)
        shots(page, "reopened-after-reload")
        page.locator("#conversation-tools").get_by_text("Rename or delete").click()
        field(page, "rename-title").fill("Renamed chat")
        page.locator("#rename-button").click()
        expect(page.locator("#conversation-list")).to_contain_text("Renamed chat")
        page.locator("#delete-button").click()
        page.locator("#delete-confirm").click()
        expect(page.locator("#conversation-notice")).to_contain_text("deleted")
        expect(page.locator("#conversation-list label")).to_have_count(1)
        shots(page, "after-delete")

    def test_bad_sampling_values_are_refused_before_anything_is_charged(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """Out-of-range settings get a notice naming the field; no reply starts."""
        sign_up_and_in(page, unique_name("sampling"), TEST_PASSWORD)
        balance_before = available_balance(page)
        set_sampling(page, temperature=5, max_tokens=SHORT_REPLY_TOKENS)
        send(page, "Hello")
        expect(page.locator("#chat-notice")).to_contain_text("temperature must be between")
        set_sampling(page, temperature=0.5, max_tokens=10**7)
        send(page, "Hello")
        expect(page.locator("#chat-notice")).to_contain_text("max new tokens must be between")
        shots(page, "bad-sampling")
        expect(bot_messages(page)).to_have_count(0)
        assert available_balance(page) == balance_before


class TestAccountAndAdmin:
    def test_api_key_is_shown_once_and_can_be_revoked(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """A created key's secret is shown once; the table lists it; revoking marks it."""
        sign_up_and_in(page, unique_name("keys"), TEST_PASSWORD)
        open_account(page)
        field(page, "key-name").fill("laptop")
        page.locator("#create-key").click()
        secret = field(page, "key-secret")
        expect(secret).not_to_have_value("")
        expect(page.locator("#keys-table")).to_contain_text("laptop")
        shots(page, "key-created")
        page.locator("#revoke-choice input").click()
        page.locator('[data-testid="dropdown-option"]', has_text="laptop").first.click()
        page.locator("#revoke-key").click()
        expect(page.locator("#key-revoke-notice")).to_contain_text("revoked")
        expect(page.locator("#keys-table")).to_contain_text("revoked")
        shots(page, "key-revoked")

    def test_admin_tops_up_a_user_and_sees_a_clean_audit(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str], live_server: LiveServer
    ) -> None:
        """The admin tab lists users with balances, adds credits, and runs the audit."""
        admin_name = unique_name("admin")
        created = live_server.cli(
            "user",
            "create",
            admin_name,
            "--email",
            f"{admin_name}@example.com",
            "--admin",
            "--password-stdin",
            stdin=TEST_PASSWORD + "\n",
        )
        assert created.returncode == 0, created.stderr
        # Enough API top-ups that the history needs a second page.
        with httpx.Client(base_url=live_server.base_url, timeout=30) as api:
            token = api.post(
                "/api/auth/login", json={"username": admin_name, "password": TEST_PASSWORD}
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            admin_id = api.get("/api/me", headers=headers).json()["id"]
            for number in range(HISTORY_PAGE_SIZE):
                added = api.post(
                    f"/api/admin/users/{admin_id}/credits",
                    json={"amount": 1},
                    headers={**headers, "Idempotency-Key": f"{admin_name}-{number}"},
                )
                assert added.status_code == 200, added.text
        open_home(page)
        login(page, admin_name, TEST_PASSWORD)
        open_account(page)
        history = page.locator("#history-table").get_by_role("row")
        expect(page.locator("#history-page textarea, #history-page input").first).to_have_value(
            "Page 1"
        )
        expect(history).to_have_count(HISTORY_PAGE_SIZE + 1)  # plus the header row
        page.locator("#history-next").click()
        expect(page.locator("#history-page textarea, #history-page input").first).to_have_value(
            "Page 2 (last)"
        )
        expect(page.locator("#history-table")).to_contain_text("signup grant")
        shots(page, "history-page-2")
        page.locator("#history-prev").click()
        expect(page.locator("#history-page textarea, #history-page input").first).to_have_value(
            "Page 1"
        )
        page.get_by_role("tab", name="Admin").click()
        expect(page.locator("#users-table")).to_contain_text(admin_name)
        page.locator("#topup-user input").click()
        page.locator('[data-testid="dropdown-option"]', has_text=admin_name).first.click()
        field(page, "topup-amount").fill("250")
        page.locator("#topup-button").click()
        expect(page.locator("#topup-notice")).to_contain_text("Added 250 credits")
        shots(page, "topped-up")
        page.locator("#audit-button").click()
        expect(page.locator("#audit-report")).to_contain_text("Audit clean")
        shots(page, "audit")


class TestLayout:
    def test_narrow_screen_keeps_the_chat_usable(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """On a phone-sized viewport the page does not scroll sideways and the balance,
        message box and Send button are on screen."""
        page.set_viewport_size(NARROW_VIEWPORT)
        sign_up_and_in(page, unique_name("narrow"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=SHORT_REPLY_TOKENS)
        send(page, "Hello from a small screen")
        wait_for_footer(page)
        shots(page, "narrow-chat")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"page is {overflow}px wider than the screen"
        for control in (".lc-balance", "#lc-user p", "#chat-input", "#send-button", "#stop-button"):
            box = page.locator(control).bounding_box()
            assert box is not None, control
            assert box["x"] >= 0 and box["x"] + box["width"] <= NARROW_VIEWPORT["width"] + 1
        # The signed-in line reads across, not one letter per line.
        user_line = page.locator("#lc-user p").bounding_box()
        assert user_line is not None and user_line["height"] < 3 * 24
