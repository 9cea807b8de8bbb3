"""Billing in a real browser against a live `ledgerchat serve`: the receipt link under a
reply's cost line downloads a receipt that `ledgerchat verify` accepts, a crossed low-balance
threshold shows its notice at the top of the chat, right under the header and its balance,
until dismissed (it stays dismissed after a reload), and the admin page shows usage per API
key with its CSV."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import TEST_PASSWORD, LiveServer, Shots
from tests.ui.pages import (
    admin_signed_in,
    available_balance,
    bot_messages,
    field,
    fill_number,
    open_account,
    send,
    set_sampling,
    sign_up_and_in,
    wait_for_footer,
)
from web.domain.admin.usage_keys import NO_KEY_LABEL

pytestmark = pytest.mark.browser
REPLY_TOKENS = 8
# The notice sits under the header: its top no further below the balance badge than this.
NOTICE_NEAR_HEADER_PX = 120


class TestReceiptInThePage:
    def test_the_receipt_link_downloads_a_receipt_that_verifies(
        self,
        page: Page,
        shots: Shots,
        unique_name: Callable[[str], str],
        live_server: LiveServer,
        tmp_path: Path,
    ) -> None:
        """Click "receipt" under the cost line: the browser downloads receipt-<id>.json with
        no bearer token, it states the reply's cost, and `ledgerchat verify` says valid."""
        sign_up_and_in(page, unique_name("receipt"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=REPLY_TOKENS)
        send(page, "Hello receipts")
        usage = wait_for_footer(page)
        link = bot_messages(page).last.get_by_role("link", name="receipt")
        expect(link).to_be_visible()
        shots(page, "reply-with-receipt-link")
        with page.context.expect_event("download") as downloaded:
            link.click()
        download = downloaded.value
        assert download.suggested_filename.startswith("receipt-")
        path = tmp_path / "receipt.json"
        download.save_as(path)
        key = Path(live_server.env["LEDGERCHAT_DATA_DIR"]) / "ledger-signing-key.pub"
        verified = live_server.cli("verify", str(path), "--public-key", str(key))
        assert verified.returncode == 0, verified.stderr
        assert f"captured {usage['cost']}" in verified.stdout


class TestAlertNotice:
    def test_a_crossed_threshold_shows_under_the_header_until_dismissed(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """With the low-balance alert just below the balance, one reply crosses it: the
        notice appears at the top of the chat near the balance; Dismiss hides it, and a
        reload does not bring it back."""
        sign_up_and_in(page, unique_name("alerted"), TEST_PASSWORD)
        threshold = available_balance(page) - 1
        open_account(page)
        fill_number(page, "alert-low-balance", threshold)
        page.locator("#save-alerts").click()
        expect(page.locator("#alerts-notice")).to_contain_text(f"falls to {threshold} credits")
        page.get_by_role("tab", name="Chat").click()
        notice = page.locator("#lc-alert-notice")
        expect(notice).to_be_hidden()
        set_sampling(page, temperature=0, max_tokens=REPLY_TOKENS)
        send(page, "Spend a little")
        wait_for_footer(page)
        expect(notice).to_contain_text(f"at or below your alert threshold of {threshold}")
        shots(page, "alert-notice")
        badge = page.locator("#lc-balance").bounding_box()
        shown = notice.bounding_box()
        chat_log = page.locator("#chatbot").bounding_box()
        assert badge is not None and shown is not None and chat_log is not None
        assert 0 <= shown["y"] - (badge["y"] + badge["height"]) < NOTICE_NEAR_HEADER_PX
        assert shown["y"] < chat_log["y"]
        expect(page.locator("#chat-input")).to_be_in_viewport()

        page.locator("#lc-alert-dismiss").click()
        expect(notice).to_be_hidden()
        expect(page.locator("#lc-alert-dismiss")).to_be_hidden()
        page.reload()
        expect(field(page, "chat-input")).to_be_visible()
        expect(page.locator("#lc-balance [data-available]")).to_be_visible()
        expect(notice).to_be_hidden()
        shots(page, "dismissed")


class TestAdminUsagePerKey:
    def test_usage_switches_to_one_line_per_api_key(
        self,
        page: Page,
        shots: Shots,
        unique_name: Callable[[str], str],
        live_server: LiveServer,
    ) -> None:
        """On the admin page, "One line per: API key" shows the per-key columns with the
        admin's own reply as a signed-in (keyless) line, and its CSV downloads."""
        name = unique_name("keyadmin")
        admin_signed_in(page, live_server, name)
        page.get_by_role("tab", name="Chat").click()
        set_sampling(page, temperature=0, max_tokens=REPLY_TOKENS)
        send(page, "Count me")
        wait_for_footer(page)
        page.get_by_role("tab", name="Admin").click()
        field(page, "usage-user").fill(name)
        page.locator("#usage-by").get_by_text("API key").click()
        page.locator("#usage-button").click()
        table = page.locator("#usage-table")
        expect(table).to_contain_text("key_name")
        expect(table).to_contain_text(NO_KEY_LABEL)
        expect(table).to_contain_text("total")
        shots(page, "usage-per-key")
        page.locator("#usage-csv-button").click()
        with page.expect_download() as downloaded:
            page.locator("#usage-file a").first.click()
        csv_text = Path(downloaded.value.path()).read_text(encoding="utf-8")
        assert csv_text.startswith("day,key_id,key_name,")
        assert NO_KEY_LABEL in csv_text and name in csv_text
