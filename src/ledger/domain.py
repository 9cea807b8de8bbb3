"""The ledger's domain model: events, commands, account state and the rules between them.

Pure code, no I/O. `decide` turns a command plus the account's current state into one event
draft or raises a typed refusal; `apply` folds an event into a state. Replay (`apply` over an
account's log) is how state is rebuilt, snapshots are checked and the audit recomputes balances.
Amounts are integers; available = posted - held and is never negative after any event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ledger.errors import (
    CaptureExceedsHold,
    HoldAlreadyResolved,
    HoldExpired,
    HoldExpiryOutOfRange,
    HoldNotFound,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    RefundExceedsTaken,
    RefundTargetInvalid,
    TooManyActiveHolds,
)

# Explicit limits on free-form inputs: they end up in every row and in the hash chain.
MAX_TEXT_LENGTH = 256
MAX_KEY_LENGTH = 200
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_LENGTH = 64
GENESIS_HASH = "0" * 64

Metadata = dict[str, str | int]


class EventType(StrEnum):
    CREDITS_ADDED = "credits_added"
    HOLD_PLACED = "hold_placed"
    HOLD_CAPTURED = "hold_captured"
    HOLD_RELEASED = "hold_released"
    CHARGED = "charged"
    REFUNDED = "refunded"


class ReleaseReason(StrEnum):
    ABORTED = "aborted"
    FAILED = "failed"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch: the integer time stored and hashed."""
    if moment.tzinfo is None:
        raise InvalidArgument("times must be timezone-aware")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(microseconds: int) -> datetime:
    return datetime.fromtimestamp(microseconds / 1_000_000, tz=UTC)


def event_id_of(account_id: str, sequence: int) -> str:
    """An event is named by its account and sequence; a hold by the event that placed it."""
    return f"{account_id}:{sequence}"


# A sequence as `event_id_of` writes it: ASCII digits, no sign, no leading zero.
_SEQUENCE = re.compile(r"[1-9][0-9]{0,17}")


def parse_sequence(text: str) -> int | None:
    """A sequence number written as the ledger writes it (ASCII digits, no sign, no leading
    zero, within 64 bits), else None."""
    return int(text) if _SEQUENCE.fullmatch(text) else None


def parse_event_id(event_id: str) -> tuple[str, int] | None:
    """(account_id, sequence) of an event id in its one canonical form, else None.

    Only the spelling `event_id_of` produces names an event: `str.isdigit` would also accept
    ':02', fullwidth or Arabic-Indic digits, and each such alias of one event would be a new
    key for what was already refunded or resolved.
    """
    account_id, _, text = event_id.rpartition(":")
    sequence = parse_sequence(text)
    if not account_id or sequence is None:
        return None
    return account_id, sequence


# Built once: json.dumps with options builds a new encoder per call, a hot-path cost.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text."""
    return _CANONICAL.encode(value)


# ---------------------------------------------------------------------------------------------
# Input checks


def check_amount(amount: object, *, max_amount: int, allow_zero: bool = False) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(amount, "amounts are integers")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidAmount(
            amount, "must be positive" if not allow_zero else "must not be negative"
        )
    if amount > max_amount:
        raise InvalidAmount(amount, f"exceeds the per-command limit {max_amount}")
    return amount


# NUL (PostgreSQL text cannot hold it; SQLite would) and lone surrogates (not encodable as
# UTF-8, so no database can store them): refused wherever text enters the ledger, so both
# backends accept exactly the same strings.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_storable(name: str, value: str) -> str:
    """`value` unless it holds a character no backend stores (NUL, a lone surrogate)."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "NUL" if found.group() == "\x00" else "a lone surrogate (not valid UTF-8)"
        raise InvalidArgument(f"{name} contains {what} at position {found.start()}")
    return value


def check_text(name: str, value: object, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string")
    if required and not value:
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidArgument(f"{name} is longer than {MAX_TEXT_LENGTH} characters")
    return check_storable(name, value)


def check_key(idempotency_key: object) -> str:
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise InvalidArgument("idempotency_key must be a non-empty string")
    if len(idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"idempotency_key is longer than {MAX_KEY_LENGTH} characters")
    return check_storable("idempotency_key", idempotency_key)


def check_metadata(metadata: Mapping[str, str | int] | None) -> Metadata:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidArgument("metadata must be a mapping of str to str or int")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"metadata has more than {MAX_METADATA_ENTRIES} entries")
    clean: Metadata = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY_LENGTH:
            raise InvalidArgument(f"metadata key {key!r} must be 1..64 characters")
        check_storable("metadata key", key)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidArgument(f"metadata value of {key!r} must be str or int")
        if isinstance(value, str):
            if len(value) > MAX_TEXT_LENGTH:
                raise InvalidArgument(f"metadata value of {key!r} is too long")
            check_storable(f"metadata value of {key!r}", value)
        if isinstance(value, int) and abs(value) >= 2**63:
            raise InvalidArgument(f"metadata value of {key!r} does not fit 64 bits")
        clean[key] = value
    return clean


# ---------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True, slots=True)
class Command:
    account_id: str
    idempotency_key: str

    def parameters(self) -> dict[str, Any]:
        # Shallow on purpose: fields are scalars or a flat metadata dict (asdict is slow).
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.pop("idempotency_key")
        values["command"] = type(self).__name__
        return values

    def fingerprint(self) -> str:
        """Hash of everything the caller asked for except the key: a retry must match it.

        Encoded as a JSON array (command name, then the fields in declaration order, metadata
        as sorted pairs): canonical without sorting a dict per command.
        """
        row: list[Any] = [type(self).__name__]
        for name in _fingerprinted_fields(self):
            value = getattr(self, name)
            row.append(sorted(value.items()) if isinstance(value, dict) else value)
        return hashlib.sha256(_COMPACT.encode(row).encode()).hexdigest()


# Per command class: its field names but the key, in declaration order. Looked up once per
# class, since `dataclasses.fields` on every command was a measurable part of its cost.
_FINGERPRINTED_FIELDS: dict[type, tuple[str, ...]] = {}


def _fingerprinted_fields(command: Command) -> tuple[str, ...]:
    names = _FINGERPRINTED_FIELDS.get(type(command))
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(command) if f.name != "idempotency_key")
        _FINGERPRINTED_FIELDS[type(command)] = names
    return names


@dataclass(frozen=True, slots=True)
class AddCredits(Command):
    amount: int
    source: str
    note: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlaceHold(Command):
    amount: int
    purpose: str
    reference: str
    # Exactly one of the two: a ttl is fingerprinted as given so a retry later matches.
    ttl_s: float | None
    expires_at_us: int | None
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CaptureHold(Command):
    hold_id: str
    amount: int
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReleaseHold(Command):
    hold_id: str
    reason: ReleaseReason


@dataclass(frozen=True, slots=True)
class Charge(Command):
    amount: int
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refund(Command):
    event_id: str
    amount: int
    reason: str
    metadata: Metadata = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Events and state


@dataclass(frozen=True, slots=True)
class Event:
    """One immutable row of an account's log. `hash` chains it to `prev_hash`."""

    account_id: str
    sequence: int
    event_type: EventType
    amount: int
    released_amount: int
    hold_id: str | None
    refers_to: str | None
    expires_at_us: int | None
    purpose: str | None
    reference: str | None
    reason: str | None
    source: str | None
    note: str | None
    posted_after: int
    held_after: int
    idempotency_key: str
    fingerprint: str
    recorded_at_us: int
    metadata: Metadata
    prev_hash: str
    hash: str

    @property
    def event_id(self) -> str:
        return event_id_of(self.account_id, self.sequence)

    def hashed_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _HASHED_FIELDS}

    def compute_hash(self) -> str:
        return _hash_of(self.hashed_fields())


def _hash_of(hashed_fields: dict[str, Any]) -> str:
    """SHA-256 of the event's canonical encoding: a JSON array of every field but the hash, in
    declaration order (enums as their string), metadata as its sorted [key, value] pairs."""
    row = [hashed_fields[name] for name in _HASHED_FIELDS]
    row[_METADATA_INDEX] = sorted(hashed_fields["metadata"].items())
    return hashlib.sha256(_COMPACT.encode(row).encode()).hexdigest()


_HASHED_FIELDS = tuple(f.name for f in dataclasses.fields(Event) if f.name != "hash")
_METADATA_INDEX = _HASHED_FIELDS.index("metadata")


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    amount: int
    expires_at_us: int


@dataclass(slots=True)
class AccountState:
    """What the rules need to know about an account after its event number `sequence`."""

    account_id: str
    owner_id: str
    sequence: int = 0
    head_hash: str = GENESIS_HASH
    posted: int = 0
    held: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)

    @property
    def available(self) -> int:
        return self.posted - self.held

    def copy(self) -> AccountState:
        return AccountState(
            self.account_id,
            self.owner_id,
            self.sequence,
            self.head_hash,
            self.posted,
            self.held,
            dict(self.holds),
        )

    def holds_record(self) -> list[list[Any]]:
        return [[h.hold_id, h.amount, h.expires_at_us] for h in self.holds.values()]


def holds_from_record(record: list[list[Any]]) -> dict[str, Hold]:
    return {str(h[0]): Hold(str(h[0]), int(h[1]), int(h[2])) for h in record}


class ReplayError(Exception):
    """An event cannot follow the state it is applied to (only a corrupted log does this)."""


def apply(state: AccountState, event: Event) -> None:
    """Fold one event into the state; raises ReplayError if the log is inconsistent."""
    if event.sequence != state.sequence + 1:
        raise ReplayError(f"sequence {event.sequence} follows {state.sequence}")
    kind = event.event_type
    if kind is EventType.CREDITS_ADDED:
        state.posted += event.amount
    elif kind is EventType.HOLD_PLACED:
        assert event.hold_id is not None and event.expires_at_us is not None
        state.holds[event.hold_id] = Hold(event.hold_id, event.amount, event.expires_at_us)
        state.held += event.amount
    elif kind in (EventType.HOLD_CAPTURED, EventType.HOLD_RELEASED):
        hold = state.holds.pop(event.hold_id or "", None)
        if hold is None:
            raise ReplayError(f"event {event.event_id} resolves unknown hold {event.hold_id}")
        if event.amount + event.released_amount != hold.amount:
            raise ReplayError(f"event {event.event_id} resolves {hold.amount} wrongly")
        state.held -= hold.amount
        if kind is EventType.HOLD_CAPTURED:
            state.posted -= event.amount
    elif kind is EventType.CHARGED:
        state.posted -= event.amount
    elif kind is EventType.REFUNDED:
        state.posted += event.amount
    state.sequence = event.sequence
    state.head_hash = event.hash


@dataclass(frozen=True, slots=True)
class EventDraft:
    """What `decide` chose; the writer completes it into an Event (sequence, balances, hash)."""

    event_type: EventType
    amount: int
    released_amount: int = 0
    hold_id: str | None = None
    refers_to: str | None = None
    expires_at_us: int | None = None
    purpose: str | None = None
    reference: str | None = None
    reason: str | None = None
    source: str | None = None
    note: str | None = None
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundTarget:
    """What a refund needs to know about the event it refers to."""

    event_id: str
    event_type: EventType
    taken: int
    refunded: int


@dataclass(slots=True)
class Limits:
    max_amount: int
    max_balance: int
    max_active_holds: int
    hold_ttl_default_s: float
    hold_ttl_max_s: float


def complete(
    state: AccountState,
    draft: EventDraft,
    *,
    idempotency_key: str,
    fingerprint: str,
    recorded_at_us: int,
) -> Event:
    """Turn a decided draft into the next event of the account and fold it into `state`."""
    posted, held = state.posted, state.held
    if draft.event_type is EventType.CREDITS_ADDED or draft.event_type is EventType.REFUNDED:
        posted += draft.amount
    elif draft.event_type is EventType.CHARGED:
        posted -= draft.amount
    elif draft.event_type is EventType.HOLD_PLACED:
        held += draft.amount
    elif draft.event_type is EventType.HOLD_CAPTURED:
        posted -= draft.amount
        held -= draft.amount + draft.released_amount
    elif draft.event_type is EventType.HOLD_RELEASED:
        held -= draft.amount
    hold_id = draft.hold_id
    if draft.event_type is EventType.HOLD_PLACED:
        hold_id = event_id_of(state.account_id, state.sequence + 1)
    values: dict[str, Any] = {
        "account_id": state.account_id,
        "sequence": state.sequence + 1,
        "event_type": draft.event_type,
        "amount": draft.amount,
        "released_amount": draft.released_amount,
        "hold_id": hold_id,
        "refers_to": draft.refers_to,
        "expires_at_us": draft.expires_at_us,
        "purpose": draft.purpose,
        "reference": draft.reference,
        "reason": draft.reason,
        "source": draft.source,
        "note": draft.note,
        "posted_after": posted,
        "held_after": held,
        "idempotency_key": idempotency_key,
        "fingerprint": fingerprint,
        "recorded_at_us": recorded_at_us,
        "metadata": draft.metadata,
        "prev_hash": state.head_hash,
    }
    event = Event(**values, hash=_hash_of(values))
    apply(state, event)
    # Both sides of storage: a decided event can never leave available negative.
    assert state.available >= 0, f"rules let {event.event_id} make available negative"
    return event


def _require_available(state: AccountState, amount: int) -> None:
    if state.available < amount:
        raise InsufficientCredits(state.posted, state.available, amount)


def _active_hold(state: AccountState, hold_id: str, resolved_before: bool) -> Hold:
    hold = state.holds.get(hold_id)
    if hold is not None:
        return hold
    if resolved_before:
        raise HoldAlreadyResolved(hold_id)
    raise HoldNotFound(hold_id)


def decide(
    state: AccountState,
    command: Command,
    *,
    now_us: int,
    limits: Limits,
    hold_was_placed: bool = False,
    refund_target: RefundTarget | None = None,
) -> EventDraft:
    """Check the command's rules against the state; return the event to write or raise.

    `hold_was_placed` tells whether a hold id that is not active was ever placed on this
    account (then it was resolved); `refund_target` describes the refunded event, None if it
    does not exist in this account.
    """
    if isinstance(command, AddCredits):
        if state.posted + command.amount > limits.max_balance:
            raise InvalidAmount(command.amount, f"balance would exceed {limits.max_balance}")
        return EventDraft(
            EventType.CREDITS_ADDED,
            command.amount,
            source=command.source,
            note=command.note,
            metadata=command.metadata,
        )
    if isinstance(command, PlaceHold):
        if len(state.holds) >= limits.max_active_holds:
            raise TooManyActiveHolds(state.account_id, limits.max_active_holds)
        _require_available(state, command.amount)
        if command.expires_at_us is not None:
            expires_at_us = command.expires_at_us
        else:
            ttl_s = limits.hold_ttl_default_s if command.ttl_s is None else command.ttl_s
            expires_at_us = now_us + round(ttl_s * 1_000_000)
        if not now_us < expires_at_us <= now_us + round(limits.hold_ttl_max_s * 1_000_000):
            # Depends on the clock, so recorded: a retry must not succeed later.
            raise HoldExpiryOutOfRange(from_us(expires_at_us).isoformat(), limits.hold_ttl_max_s)
        return EventDraft(
            EventType.HOLD_PLACED,
            command.amount,
            expires_at_us=expires_at_us,
            purpose=command.purpose,
            reference=command.reference,
            metadata=command.metadata,
        )
    if isinstance(command, CaptureHold):
        hold = _active_hold(state, command.hold_id, hold_was_placed)
        if now_us >= hold.expires_at_us:
            raise HoldExpired(hold.hold_id, from_us(hold.expires_at_us).isoformat())
        if command.amount > hold.amount:
            raise CaptureExceedsHold(hold.hold_id, hold.amount, command.amount)
        return EventDraft(
            EventType.HOLD_CAPTURED,
            command.amount,
            released_amount=hold.amount - command.amount,
            hold_id=hold.hold_id,
            metadata=command.metadata,
        )
    if isinstance(command, ReleaseHold):
        hold = _active_hold(state, command.hold_id, hold_was_placed)
        return EventDraft(
            EventType.HOLD_RELEASED, hold.amount, hold_id=hold.hold_id, reason=command.reason
        )
    if isinstance(command, Charge):
        _require_available(state, command.amount)
        return EventDraft(EventType.CHARGED, command.amount, metadata=command.metadata)
    if isinstance(command, Refund):
        target = refund_target
        if target is None:
            raise RefundTargetInvalid(command.event_id, "no such event in this account")
        if target.event_type not in (EventType.CHARGED, EventType.HOLD_CAPTURED):
            raise RefundTargetInvalid(command.event_id, "only charges and captures are refunded")
        if target.refunded + command.amount > target.taken:
            raise RefundExceedsTaken(target.event_id, target.taken, target.refunded, command.amount)
        if state.posted + command.amount > limits.max_balance:
            raise InvalidAmount(command.amount, f"balance would exceed {limits.max_balance}")
        return EventDraft(
            EventType.REFUNDED,
            command.amount,
            refers_to=target.event_id,
            reason=command.reason,
            metadata=command.metadata,
        )
    raise AssertionError(f"unknown command {command!r}")
