"""The ledger's domain: events and state, commands, rules, replay and invariants. Pure, no I/O.

`rules.decide` turns a command plus the account's current state into one event draft or raises
a typed refusal; `replay.apply` folds an event into a state; `replay.complete` makes a draft the
account's next event; `invariants` holds what every event and state must satisfy. Replay
(`apply` over an account's log) is how state is rebuilt, snapshots are checked and the audit
recomputes balances. Amounts are integers; available = posted - held is never negative.
The names below are the domain's public surface, importable from `ledger.domain`.
"""

from ledger.domain.budgets import (
    PERIODS,
    Budget,
    Period,
    budget_ids,
    check_budgets,
    period_window_us,
)
from ledger.domain.commands import (
    MAX_KEY_LENGTH,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LENGTH,
    MAX_TEXT_LENGTH,
    AddCredits,
    CaptureHold,
    Charge,
    Command,
    PlaceHold,
    Refund,
    ReleaseHold,
    check_amount,
    check_key,
    check_metadata,
    check_storable,
    check_text,
)
from ledger.domain.events import (
    GENESIS_HASH,
    AccountState,
    Event,
    EventDraft,
    EventType,
    Hold,
    Metadata,
    ReleaseReason,
    canonical_json,
    compact_json,
    event_id_of,
    from_us,
    hash_of,
    holds_from_record,
    parse_event_id,
    parse_sequence,
    to_us,
)
from ledger.domain.invariants import check_event, check_state, hold_id_of, refers_to_of
from ledger.domain.replay import ReplayError, apply, complete
from ledger.domain.rules import Limits, RefundTarget, decide

__all__ = [
    "GENESIS_HASH",
    "MAX_KEY_LENGTH",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_TEXT_LENGTH",
    "PERIODS",
    "AccountState",
    "AddCredits",
    "Budget",
    "CaptureHold",
    "Charge",
    "Command",
    "Event",
    "EventDraft",
    "EventType",
    "Hold",
    "Limits",
    "Metadata",
    "Period",
    "PlaceHold",
    "Refund",
    "RefundTarget",
    "ReleaseHold",
    "ReleaseReason",
    "ReplayError",
    "apply",
    "budget_ids",
    "canonical_json",
    "check_amount",
    "check_budgets",
    "check_event",
    "check_key",
    "check_metadata",
    "check_state",
    "check_storable",
    "check_text",
    "compact_json",
    "complete",
    "decide",
    "event_id_of",
    "from_us",
    "hash_of",
    "hold_id_of",
    "holds_from_record",
    "parse_event_id",
    "parse_sequence",
    "period_window_us",
    "refers_to_of",
    "to_us",
]
