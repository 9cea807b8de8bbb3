"""The account and admin pages in a real browser against the live server: the history for
people (one row per reply with its net amount) next to the raw ledger events, the Amount column
on a phone, prices with the worked example, a revoked key's secret gone, notices next to the
button pressed, the admin form checked before anything is called, and the audit as tables.
Each step leaves a screenshot under artifacts/ui/<test>/.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.ui.conftest import (
    MISSING_MODEL,
    SIGNUP_GRANT_CREDITS,
    TEST_PASSWORD,
    TINY_MODEL,
    LiveServer,
    Shots,
)
from tests.ui.pages import (
    admin_signed_in,
    field,
    open_account,
    send,
    set_sampling,
    sign_up_and_in,
    wait_for_footer,
)
from web.domain.billing.prices import ModelPrice
from web.ui.audit_view import AUDIT_CHECKS
from web.ui.text import NOT_INSTALLED

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
REPLY_TOKENS = 24
# The tiny model's price in tests/ui/conftest.py's catalog.
TINY_PRICE = ModelPrice(1, 2, 20, version="test")
# Within this many pixels of the button pressed (below it) counts as "next to it".
NEXT_TO_PX = 160

# True when the element is fully inside the window and inside every scrolling or clipping
# ancestor (a table column hidden behind a horizontal scroll is not).
FULLY_SHOWN = """(element) => {
  const box = element.getBoundingClientRect();
  if (box.width === 0 || box.left < 0 || box.right > document.documentElement.clientWidth + 1)
    return false;
  for (let node = element.parentElement; node; node = node.parentElement) {
    const style = getComputedStyle(node);
    if (/(auto|scroll|hidden|clip)/.test(style.overflowX)) {
      const clip = node.getBoundingClientRect();
      if (box.left < clip.left - 1 || box.right > clip.right + 1) return false;
    }
  }
  return true;
}"""


def history_row(page: Page, text: str) -> Locator:
    return page.locator("#history-table").get_by_role("row").filter(has_text=text).first


def below(page: Page, button: str, notice: str) -> float:
    """How far the top of `notice` is below the bottom of `button`, in pixels."""
    pressed = page.locator(button).bounding_box()
    shown = page.locator(notice).bounding_box()
    assert pressed is not None and shown is not None
    return shown["y"] - (pressed["y"] + pressed["height"])


class TestHistory:
    def test_one_row_per_reply_and_all_ledger_events_on_request(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """A reply is one row with its model, tokens and net cost (its hold and the released
        rest folded in); "All ledger events" still lists hold_placed and hold_captured."""
        sign_up_and_in(page, unique_name("grouped"), TEST_PASSWORD)
        set_sampling(page, temperature=0, max_tokens=REPLY_TOKENS)
        send(page, "Count to three")
        usage = wait_for_footer(page)
        open_account(page)
        reply = history_row(page, "Reply")
        expect(reply).to_contain_text(
            f"Reply · {TINY_MODEL} · {usage['prompt']}+{usage['completion']} tokens"
        )
        expect(reply.get_by_role("gridcell", name=str(-usage["cost"]), exact=True)).to_have_count(1)
        expect(history_row(page, "Top-up")).to_contain_text(f"+{SIGNUP_GRANT_CREDITS}")
        expect(page.locator("#history-table").get_by_role("row")).to_have_count(3)  # + header
        expect(page.locator("#history-table")).not_to_contain_text("hold_")
        shots(page, "history")
        page.locator("#history-view").get_by_text("All ledger events").click()
        events = page.locator("#events-table")
        expect(events).to_be_visible()
        expect(page.locator("#history-table")).to_be_hidden()
        for kind in ("hold_captured", "hold_placed", "credits_added"):
            expect(events.get_by_role("row").filter(has_text=kind)).to_have_count(1)
        captured = events.get_by_role("row").filter(has_text="hold_captured")
        expect(
            captured.get_by_role("gridcell", name=str(-usage["cost"]), exact=True)
        ).to_have_count(1)
        shots(page, "all-events")
        page.locator("#history-view").get_by_text("Replies and top-ups").click()
        expect(history_row(page, "Reply")).to_be_visible()

    def test_amount_column_is_on_screen_on_a_phone(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """At 390x844 the history's Amount column and the first row's amount are shown
        without scrolling sideways."""
        page.set_viewport_size(PHONE)
        sign_up_and_in(page, unique_name("phone"), TEST_PASSWORD)
        open_account(page)
        table = page.locator("#history-table")
        grant = history_row(page, "Top-up")
        expect(grant).to_contain_text(f"+{SIGNUP_GRANT_CREDITS}")
        table.evaluate("(element) => element.scrollIntoView({block: 'start'})")
        header = table.get_by_role("columnheader", name="Amount")
        amount = grant.get_by_role("gridcell", name=f"+{SIGNUP_GRANT_CREDITS}", exact=True)
        shots(page, "phone-history")
        assert header.evaluate(FULLY_SHOWN), "the Amount header is off screen"
        assert amount.evaluate(FULLY_SHOWN), "the amount is off screen"
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"page is {overflow}px wider than the screen"


class TestPricesAndKeys:
    def test_prices_show_the_worked_example_and_hide_operator_detail(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        """Each model's price with the example billed by the charging formula; a model
        without weights reads "not installed on this server", not its path."""
        sign_up_and_in(page, unique_name("prices"), TEST_PASSWORD)
        open_account(page)
        prices = page.locator("#prices")
        tiny = prices.get_by_role("row").filter(has_text="Tiny Gemma").first
        example = TINY_PRICE.example_cost_credits()
        expect(tiny).to_contain_text(f"with a 100-token reply costs {example} credits")
        expect(tiny).to_contain_text("1 cr/message")
        missing = prices.get_by_role("row").filter(has_text=MISSING_MODEL)
        expect(missing).to_contain_text(NOT_INSTALLED, ignore_case=True)
        expect(missing).not_to_contain_text("not-there")
        expect(page.locator("#account-tab")).not_to_contain_text("1 credits")
        shots(page, "prices")

    def test_a_revoked_key_never_shows_its_secret_and_notices_sit_by_the_button(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str]
    ) -> None:
        sign_up_and_in(page, unique_name("revoke"), TEST_PASSWORD)
        open_account(page)
        field(page, "key-name").fill("phone")
        page.locator("#create-key").click()
        secret_box = field(page, "key-secret")
        expect(secret_box).not_to_have_value("")
        secret = secret_box.input_value()
        expect(page.locator("#key-create-notice")).to_contain_text("shown only this once")
        assert 0 <= below(page, "#create-key", "#key-create-notice") <= NEXT_TO_PX
        page.locator("#revoke-choice input").click()
        page.locator('[data-testid="dropdown-option"]', has_text="phone").first.click()
        page.locator("#revoke-key").click()
        expect(page.locator("#key-revoke-notice")).to_contain_text("revoked")
        assert 0 <= below(page, "#revoke-key", "#key-revoke-notice") <= NEXT_TO_PX
        expect(page.locator("#keys-table")).to_contain_text("revoked")
        expect(page.locator("#key-secret")).to_be_hidden()
        assert secret not in page.content()
        assert secret not in page.evaluate(
            "[...document.querySelectorAll('textarea, input')].map((e) => e.value).join(' ')"
        )
        expect(page.locator("#key-create-notice")).to_be_empty()
        shots(page, "key-revoked")


class TestAdmin:
    def test_the_top_up_form_as_it_first_appears_gives_one_clear_message(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str], live_server: LiveServer
    ) -> None:
        """Nothing chosen, nothing typed: one message under the button, the users table
        intact (no error badges), and no credits added."""
        name = unique_name("adminform")
        admin_signed_in(page, live_server, name)
        page.locator("#topup-button").click()
        notice = page.locator("#topup-notice")
        expect(notice).to_contain_text("Choose a user and enter the credits to add")
        assert 0 <= below(page, "#topup-button", "#topup-notice") <= NEXT_TO_PX
        expect(page.locator("#users-table")).to_contain_text(name)
        # Gradio's red "Error" badge lands on the outputs of a failed event: the users table
        # and the form. (The Models list may say "Error" legitimately: an admin sees why a
        # model failed to load, e.g. a SafetensorError, once another test tried it.)
        expect(page.locator("#users-table")).not_to_contain_text("Error")
        expect(notice).not_to_contain_text("Error")
        expect(page.locator(".toast-body")).to_have_count(0)
        shots(page, "empty-form")
        page.locator("#topup-user input").click()
        page.locator('[data-testid="dropdown-option"]', has_text=name).first.click()
        field(page, "topup-amount").fill("0")
        page.locator("#topup-button").click()
        expect(notice).to_contain_text("a whole number, 1 or more")
        expect(notice).not_to_contain_text("Choose a user")
        with httpx.Client(base_url=live_server.base_url, timeout=30) as api:
            token = api.post(
                "/api/auth/login", json={"username": name, "password": TEST_PASSWORD}
            ).json()["access_token"]
            raw = api.get("/api/transactions", headers={"Authorization": f"Bearer {token}"})
        assert "admin top-up" not in raw.text, "a refused form added credits"
        field(page, "topup-amount").fill("25")
        page.locator("#topup-button").click()
        expect(notice).to_contain_text("Added 25 credits")
        shots(page, "topped-up")

    def test_the_audit_is_tables_with_a_row_per_check(
        self, page: Page, shots: Shots, unique_name: Callable[[str], str], live_server: LiveServer
    ) -> None:
        admin_signed_in(page, live_server, unique_name("auditor"))
        expect(page.locator("#admin-models")).to_contain_text("unavailable", ignore_case=True)
        expect(page.locator("#admin-models")).to_contain_text("not-there")
        page.locator("#audit-button").click()
        report = page.locator("#audit-report")
        expect(report).to_contain_text("Audit clean")
        checks = report.locator("table.lc-audit-checks tbody tr")
        expect(checks).to_have_count(len(AUDIT_CHECKS))
        expect(report.locator("tr.lc-audit-ok")).to_have_count(len(AUDIT_CHECKS))
        expect(report.locator("table.lc-audit-totals")).to_contain_text("Issued")
        expect(report.locator("table.lc-audit-accounts tbody tr").first).to_be_visible()
        expect(report).not_to_contain_text("{'")
        shots(page, "audit")
