"""Inputs at the ledger's edge, on both backends: event ids only in their canonical form,
text the databases cannot store, hold lifetimes, and settings that are not finite numbers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ledger import (
    HoldExpiryOutOfRange,
    HoldNotFound,
    InvalidArgument,
    Ledger,
    LedgerSettings,
    RefundExceedsTaken,
    RefundTargetInvalid,
)
from ledger.clock import ManualClock
from ledger.domain import event_id_of, parse_event_id

# Spellings of sequence 2 that str.isdigit() accepts but that are not its event id.
SEQUENCE_2_ALIASES = ["02", "002", "\uff12", "\u0662", "\u00b2", "+2", " 2"]


def test_only_the_canonical_event_id_parses() -> None:
    """parse_event_id accepts exactly what event_id_of writes."""
    assert parse_event_id(event_id_of("acct_x", 2)) == ("acct_x", 2)
    assert parse_event_id("acct_x:1234567890") == ("acct_x", 1234567890)
    for alias in [*SEQUENCE_2_ALIASES, "0", "", "2 ", "-2", "9" * 19]:
        assert parse_event_id(f"acct_x:{alias}") is None, alias


class TestEventIdAliases:
    async def test_a_charge_is_refunded_once_whatever_the_spelling(
        self, ledger: Ledger, funded: str
    ) -> None:
        """Aliases of a refunded charge's id ('acct:02', fullwidth digits) name no event: no
        second refund of the same credits, and the audit stays clean."""
        charge = await ledger.charge(funded, 100, idempotency_key="c")
        await ledger.refund(funded, charge.event_id, 100, reason="r", idempotency_key="r0")
        account, _, sequence = charge.event_id.rpartition(":")
        assert sequence == "2"
        for n, alias in enumerate(SEQUENCE_2_ALIASES):
            with pytest.raises(RefundTargetInvalid):
                await ledger.refund(
                    funded, f"{account}:{alias}", 100, reason="r", idempotency_key=f"r{n + 1}"
                )
        with pytest.raises(RefundExceedsTaken):
            await ledger.refund(funded, charge.event_id, 1, reason="r", idempotency_key="again")
        assert (await ledger.balance(funded)).posted == 1000
        assert (await ledger.audit()).clean

    async def test_refunds_in_one_batch_count_against_the_same_event(
        self, ledger: Ledger, funded: str
    ) -> None:
        """Two refunds decided in one writer batch still share the charge's limit."""
        import asyncio

        charge = await ledger.charge(funded, 100, idempotency_key="c")
        results = await asyncio.gather(
            *(
                ledger.refund(funded, charge.event_id, 60, reason="r", idempotency_key=f"r{n}")
                for n in range(2)
            ),
            return_exceptions=True,
        )
        assert sum(isinstance(r, RefundExceedsTaken) for r in results) == 1
        assert (await ledger.balance(funded)).posted == 960

    async def test_an_alias_of_an_active_hold_is_not_found(
        self, ledger: Ledger, funded: str
    ) -> None:
        """Capture or release by 'acct:03' is HoldNotFound (not HoldAlreadyResolved), and the
        hold itself can still be captured by its id."""
        await ledger.charge(funded, 1, idempotency_key="c")
        hold = await ledger.place_hold(
            funded, 50, ttl_s=60, purpose="p", reference="r", idempotency_key="h"
        )
        account, _, sequence = hold.hold.rpartition(":")
        assert sequence == "3"
        with pytest.raises(HoldNotFound):
            await ledger.capture_hold(funded, f"{account}:03", 10, idempotency_key="cap-alias")
        with pytest.raises(HoldNotFound):
            await ledger.release_hold(
                funded, f"{account}:\uff13", reason="aborted", idempotency_key="rel-alias"
            )
        # The refusal is recorded as HoldNotFound: its retry says the same.
        with pytest.raises(HoldNotFound):
            await ledger.capture_hold(funded, f"{account}:03", 10, idempotency_key="cap-alias")
        captured = await ledger.capture_hold(funded, hold.hold, 10, idempotency_key="cap")
        assert captured.amount == 10
        assert (await ledger.audit()).clean


class TestUnstorableText:
    @pytest.mark.parametrize("bad", ["a\x00b", "k\ud800", "\udc80"], ids=["nul", "hi", "lo"])
    async def test_nul_and_lone_surrogates_are_invalid_arguments(
        self, ledger: Ledger, funded: str, bad: str
    ) -> None:
        """Everywhere text enters the ledger: the same InvalidArgument on both backends, and
        nothing written."""
        attempts = [
            ledger.charge(funded, 1, idempotency_key=bad),
            ledger.charge(funded, 1, idempotency_key="m1", metadata={"model": bad}),
            ledger.charge(funded, 1, idempotency_key="m2", metadata={bad: "x"}),
            ledger.add_credits(funded, 1, source="s", note=bad, idempotency_key="n"),
            ledger.add_credits(funded, 1, source=bad, idempotency_key="s"),
            ledger.place_hold(funded, 1, purpose="p", reference=bad, idempotency_key="h"),
            ledger.refund(funded, f"{funded}:1", 1, reason=bad, idempotency_key="r"),
            ledger.capture_hold(funded, bad, 1, idempotency_key="c"),
            ledger.open_account(bad),
            ledger.create_account(bad),
            ledger.accounts_of(bad),
            ledger.balance(bad),
            ledger.history(bad),
            ledger.totals(bad),
        ]
        for attempt in attempts:
            with pytest.raises(InvalidArgument):
                await attempt
        assert (await ledger.balance(funded)).posted == 1000
        assert (await ledger.history(funded)).entries[0].sequence == 1


class TestHoldLifetime:
    @pytest.mark.parametrize("ttl_s", [float("inf"), float("nan"), -1.0, 0, 86_400.5])
    async def test_ttl_outside_the_limits_is_an_invalid_argument(
        self, ledger: Ledger, funded: str, ttl_s: float
    ) -> None:
        """Non-finite or too long ttl_s is refused before the writer (no StorageError)."""
        with pytest.raises(InvalidArgument) as refused:
            await ledger.place_hold(
                funded, 1, ttl_s=ttl_s, purpose="p", reference="r", idempotency_key="h"
            )
        assert type(refused.value) is InvalidArgument
        hold = await ledger.place_hold(
            funded, 1, ttl_s=86_400, purpose="p", reference="r", idempotency_key="h"
        )
        assert not hold.replayed

    async def test_expiry_beyond_the_limit_stays_refused_on_retry(
        self, ledger: Ledger, funded: str, clock: ManualClock, settings: LedgerSettings
    ) -> None:
        """expires_at beyond hold_ttl_max_s depends on the clock, so it is a recorded refusal:
        the same retry later gets the same refusal, not a hold."""
        expires_at = clock() + timedelta(seconds=settings.hold_ttl_max_s + 60)
        with pytest.raises(HoldExpiryOutOfRange) as first:
            await ledger.place_hold(
                funded, 5, expires_at=expires_at, purpose="p", reference="r", idempotency_key="h"
            )
        assert isinstance(first.value, InvalidArgument)
        clock.advance(120)  # now the expiry is within the limit
        with pytest.raises(HoldExpiryOutOfRange) as again:
            await ledger.place_hold(
                funded, 5, expires_at=expires_at, purpose="p", reference="r", idempotency_key="h"
            )
        assert again.value.details == first.value.details
        assert (await ledger.balance(funded)).held == 0
        hold = await ledger.place_hold(
            funded, 5, expires_at=expires_at, purpose="p", reference="r", idempotency_key="h2"
        )
        assert hold.balance.held == 5


@pytest.mark.parametrize(
    "name", ["hold_ttl_default_s", "hold_ttl_max_s", "command_timeout_s", "sweep_interval_s"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_settings_must_be_finite(name: str, value: float) -> None:
    """NaN and infinity are ValueErrors naming the setting, directly or from the env."""
    with pytest.raises(ValueError, match=name):
        LedgerSettings(**{name: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        LedgerSettings.from_env({f"LEDGERCHAT_LEDGER_{name.upper()}": str(value)})
