"""The account and admin pages' actions and text against the real services (no browser): the
history for people with a pending reply, prices as users and operators read them, a revoked
key's secret cleared, the top-up form checked before any service call, and the audit tables."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import AVAILABLE_MODEL, GONE_MODEL
from web.domain.billing.history import HistoryItem
from web.services import Services
from web.ui.account import AccountActions
from web.ui.account_text import (
    EVENTS_VIEW,
    SUMMARY_VIEW,
    history_amount,
    history_details,
    prices_html,
)
from web.ui.admin import AdminActions
from web.ui.audit_view import AUDIT_CHECKS, audit_html
from web.ui.session import UISession
from web.ui.session import identity as session_identity
from web.ui.text import NOT_INSTALLED, balance_html

PASSWORD = "correct-horse-42"
NOW = dt.datetime(2026, 11, 30, 19, 4, tzinfo=dt.UTC)
LEDGER_DIR = Path(__file__).resolve().parents[2] / "src" / "ledger"
# Where the audit's violations are made: the replay, and the checkpoints' check.
LEDGER_AUDIT_SOURCES = (LEDGER_DIR / "audit.py", LEDGER_DIR / "queries.py")


def item(**fields: Any) -> HistoryItem:
    base: dict[str, Any] = {
        "kind": "reply",
        "status": "billed",
        "occurred_at": NOW,
        "amount": 0,
        "held": 0,
        "released": 0,
        "balance_after": 97,
        "available_after": 97,
        "event_id": "e",
    }
    return HistoryItem(**{**base, **fields})


async def signed_in(services: Services, username: str) -> UISession:
    await services.accounts.register(username, f"{username}@example.com", PASSWORD)
    tokens = await services.accounts.login(username, PASSWORD, "127.0.0.1")
    session = UISession()
    session.start(tokens, await services.accounts.identity_from_access_token(tokens.access_token))
    return session


class TestHistoryText:
    def test_a_billed_reply_reads_as_one_line_with_its_net_cost(self) -> None:
        reply = item(amount=-3, released=9, model="gemma-3-270m", prompt_tokens=19)
        reply.completion_tokens = 64
        assert history_details(reply) == "Reply · gemma-3-270m · 19+64 tokens"
        assert history_amount(reply) == "-3"

    def test_pending_not_billed_and_top_up(self) -> None:
        pending = item(status="pending", held=12)
        assert history_details(pending) == "Reply · pending, 12 credits held"
        assert history_amount(pending) == "(12 held)"
        one = item(status="pending", held=1)
        assert "1 credit held" in history_details(one)
        failed = item(status="not_billed", released=5, reason="failed")
        assert history_details(failed) == "Reply · not billed (failed)"
        assert history_amount(failed) == "0"
        grant = item(kind="top_up", status="posted", amount=1000, note="signup grant")
        assert history_details(grant) == "Top-up · signup grant"
        assert history_amount(grant) == "+1,000"

    def test_the_balance_badge_says_1_credit(self) -> None:
        assert "</span> credit</div>" in balance_html(1, 0)
        assert "</span> credits</div>" in balance_html(2, 0)


class TestAccountActions:
    async def test_an_open_hold_is_one_pending_row_then_one_billed_row(
        self, services: Services
    ) -> None:
        session = await signed_in(services, "pat")
        assert session.tokens is not None
        caller = await services.accounts.identity_from_access_token(session.tokens.access_token)
        ledger = services.ledger
        hold = await ledger.place_hold(
            caller.account_id, 7, ttl_s=600, purpose="chat", reference="r", idempotency_key="h"
        )
        actions = AccountActions(services)
        outputs = await actions.overview(session, SUMMARY_VIEW)
        summary, events = outputs[2], outputs[3]
        assert summary["visible"] is True and events["visible"] is False
        rows = summary["value"]
        assert rows[0][1:] == ["Reply · pending, 7 credits held", "(7 held)"]
        assert sum("Reply" in row[1] for row in rows) == 1
        await ledger.capture_hold(
            caller.account_id,
            hold.hold,
            3,
            idempotency_key="c",
            metadata={"model": AVAILABLE_MODEL, "prompt_tokens": 19, "completion_tokens": 64},
        )
        summary, events, label, _ = await actions.turn_page(session, "Page 1", SUMMARY_VIEW, 0)
        assert summary["value"][0][1:] == [f"Reply · {AVAILABLE_MODEL} · 19+64 tokens", "-3"]
        assert sum("Reply" in row[1] for row in summary["value"]) == 1
        assert label == "Page 1 (last)"
        summary, events, _, _ = await actions.turn_page(session, "Page 1", EVENTS_VIEW, 0)
        assert summary["visible"] is False
        assert [row[1] for row in events["value"]][:2] == ["hold_captured", "hold_placed"]

    async def test_revoking_the_shown_key_clears_its_secret(self, services: Services) -> None:
        session = await signed_in(services, "kim")
        actions = AccountActions(services)
        first = await actions.create_key(session, "first")
        second = await actions.create_key(session, "second")
        secret, shown_id = second[0], second[1]
        assert secret["visible"] is True and secret["value"]
        # Revoking another key leaves the shown secret alone.
        kept = await actions.revoke_key(session, first[1], shown_id)
        assert kept[1] == shown_id and "value" not in kept[0]
        cleared = await actions.revoke_key(session, shown_id, shown_id)
        assert cleared[0] == {"__type__": "update", "value": "", "visible": False}
        assert cleared[1] is None

    async def test_key_budget_at_creation_and_own_cap(self, services: Services) -> None:
        """The account page creates a key with a monthly budget and sets (then clears) the
        person's own monthly cap; both show in their budgets."""
        session = await signed_in(services, "lou")
        actions = AccountActions(services)
        created = await actions.create_key(session, "capped", 25)
        assert "created" in created[-1]
        assert "30 credits a month" in await actions.set_cap(session, 30)
        caller = await session_identity(session, services.accounts)
        views = (await services.budgets.views(caller, with_keys=True)).budgets
        assert {(v.limit, v.limit_credits, v.period) for v in views} == {
            ("key_period", 25, "month"),
            ("self_cap", 30, "month"),
        }
        assert "cleared" in await actions.set_cap(session, None)
        views = (await services.budgets.views(caller, with_keys=True)).budgets
        assert [v.limit for v in views] == ["key_period"]


class TestPrices:
    def test_users_read_not_installed_and_operators_the_reason(self, services: Services) -> None:
        models = services.chat.models()
        gone = next(model for model in models if model.id == GONE_MODEL)
        assert gone.unavailable_reason
        for_users = prices_html(models, operator_detail=False)
        for_operators = prices_html(models, operator_detail=True)
        assert NOT_INSTALLED in for_users.lower()
        assert str(Path(gone.unavailable_reason).name) not in for_users
        assert gone.unavailable_reason.split()[0] in for_operators
        here = next(model for model in models if model.id == AVAILABLE_MODEL)
        example = here.price.example_cost_credits()
        assert f"costs {example} credit{'s' if example != 1 else ''} (rounded up once" in (
            for_users
        )
        assert "1 credits" not in for_users


class TestAdminForm:
    async def test_the_empty_form_is_refused_before_any_service_call(
        self, services: Services
    ) -> None:
        """A signed-out session would answer "Please sign in" if a service were asked."""
        admin = AdminActions(services)
        table, notice, key = await admin.top_up(UISession(), None, None, "admin top-up", "k-1")
        assert not isinstance(table, list)
        assert "Choose a user and enter the credits to add" in notice
        assert key == "k-1"
        _, notice, _ = await admin.top_up(UISession(), 3, 2.5, "", "k-1")
        assert "whole number, 1 or more" in notice and "Choose a user" not in notice
        _, notice = await admin.disable(UISession(), None)
        assert "Choose a user" in notice


class TestAuditTables:
    def test_every_violation_kind_of_the_ledger_audit_has_a_check(self) -> None:
        source = "".join(path.read_text(encoding="utf-8") for path in LEDGER_AUDIT_SOURCES)
        kinds = set(re.findall(r'(?:flag\(|Violation\()\s*"([a-z_]+)"', source))
        assert len(kinds) >= 10
        covered = {kind for _, check_kinds in AUDIT_CHECKS for kind in check_kinds}
        assert kinds <= covered, kinds - covered

    def test_violations_are_highlighted_rows_and_escaped(self) -> None:
        report = {
            "checked_at": "2026-11-30T19:04:00+00:00",
            "accounts_checked": 2,
            "events_checked": 9,
            "violations": [
                {
                    "kind": "balance_mismatch",
                    "account_id": "acct_1",
                    "sequence": 4,
                    "detail": "<script>x</script>",
                }
            ],
            "accounts": [
                {"account_id": "acct_0", "owner_id": "user:2", "events": 3, "violations": 0},
                {"account_id": "acct_1", "owner_id": "user:1", "events": 6, "violations": 1},
            ],
            "totals": {"issued": 200, "captured": 3},
            "clean": False,
        }
        page = audit_html(report)
        assert "1 violation(s) found" in page
        assert page.count('class="lc-audit-fail"') == 1
        assert "<td>Stored balances equal the replay</td><td>1 violation(s)</td>" in page
        assert page.count('class="lc-audit-ok"') == len(AUDIT_CHECKS) - 1
        assert "<script>" not in page and "&lt;script&gt;" in page
        # Accounts with violations first, highlighted.
        assert page.index("acct_1</td>") < page.index("acct_0</td>")
        assert "{'" not in page

    @pytest.mark.parametrize("clean_report", [{"violations": [], "accounts": [], "totals": {}}])
    def test_a_clean_report(self, clean_report: dict[str, Any]) -> None:
        page = audit_html(clean_report)
        assert "Audit clean" in page
        assert page.count('class="lc-audit-ok"') == len(AUDIT_CHECKS)
