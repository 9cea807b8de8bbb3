"""Settings (defaults, env overrides, bad values), the default database URL, and the
`credit_transaction` log event of every ledger command."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import LogCapture, capture_logs

from ledger import InsufficientCredits, Ledger, LedgerSettings, default_database_url


class TestSettings:
    def test_env_overrides_defaults(self) -> None:
        """LEDGERCHAT_LEDGER_<FIELD> overrides the field; others keep their defaults."""
        settings = LedgerSettings.from_env(
            {
                "LEDGERCHAT_LEDGER_SNAPSHOT_EVERY": "7",
                "LEDGERCHAT_LEDGER_HOLD_TTL_DEFAULT_S": "12.5",
            }
        )
        assert (settings.snapshot_every, settings.hold_ttl_default_s) == (7, 12.5)
        assert settings.batch_size == LedgerSettings().batch_size

    @pytest.mark.parametrize(
        "environ",
        [
            {"LEDGERCHAT_LEDGER_BATCH_SIZE": "many"},
            {"LEDGERCHAT_LEDGER_BATCH_SIZE": "0"},
            {"LEDGERCHAT_LEDGER_HISTORY_PAGE_DEFAULT": "500"},
        ],
    )
    def test_bad_values_are_clear_errors(self, environ: dict[str, str]) -> None:
        """Malformed or out-of-range values raise ValueError naming the setting."""
        with pytest.raises(ValueError, match=r"(BATCH_SIZE|batch_size|history_page)"):
            LedgerSettings.from_env(environ)

    def test_default_database_url(self) -> None:
        """LEDGERCHAT_DATABASE_URL wins; else ledgerchat.db in ./data (the web service derives
        the URL from LEDGERCHAT_DATA_DIR and hands it over; the ledger does not read it)."""
        assert default_database_url({"LEDGERCHAT_DATABASE_URL": "postgresql://x/y"}) == (
            "postgresql://x/y"
        )
        assert default_database_url({"LEDGERCHAT_DATA_DIR": "/srv/lc"}) == (
            "sqlite+aiosqlite:///data/ledgerchat.db"
        )
        assert default_database_url({}) == "sqlite+aiosqlite:///data/ledgerchat.db"


class TestLogging:
    async def test_every_command_logs_a_credit_transaction(
        self, ledger: Ledger, funded: str
    ) -> None:
        """Applied, replayed and refused commands each log credit_transaction with the
        account, owner, amount, type and model."""
        with capture_logs() as logs:
            hold = await ledger.place_hold(
                funded, 5, purpose="p", reference="r", idempotency_key="h"
            )
            await ledger.capture_hold(
                funded, hold.hold, 3, idempotency_key="c", metadata={"model": "gemma-3-270m"}
            )
            await ledger.capture_hold(
                funded, hold.hold, 3, idempotency_key="c", metadata={"model": "gemma-3-270m"}
            )
            with pytest.raises(InsufficientCredits):
                await ledger.charge(funded, 10**6, idempotency_key="big")
        transactions = [entry for entry in logs if entry["event"] == "credit_transaction"]
        assert [t["outcome"] for t in transactions] == ["applied", "applied", "replayed", "refused"]
        capture = transactions[1]
        assert capture["account_id"] == funded and capture["owner_id"] == "alice"
        assert (capture["type"], capture["amount"], capture["model"]) == (
            "hold_captured",
            3,
            "gemma-3-270m",
        )
        assert transactions[3]["error"] == "insufficient_credits"
        assert transactions[3]["owner_id"] == "alice"

    async def test_log_lines_carry_the_callers_context(self, ledger: Ledger, funded: str) -> None:
        """The writer task logs each outcome inside the context of the caller that submitted
        it, so a request id bound by the web layer appears on that request's ledger lines
        even when two callers share one batch."""
        captured = LogCapture()
        structlog.configure(processors=[structlog.contextvars.merge_contextvars, captured])

        async def charge_as(request_id: str, key: str) -> tuple[str, str]:
            structlog.contextvars.bind_contextvars(request_id=request_id)
            receipt = await ledger.charge(funded, 1, idempotency_key=key)
            return receipt.event_id, request_id

        # Each task runs in a copy of the current context: the bindings stay apart.
        expected = dict(await asyncio.gather(charge_as("req-a", "a"), charge_as("req-b", "b")))
        logged = {
            entry["event_id"]: entry.get("request_id")
            for entry in captured.entries
            if entry["event"] == "credit_transaction"
        }
        assert logged == expected
