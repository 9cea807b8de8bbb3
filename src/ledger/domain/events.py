"""The ledger's events and account state: what is stored, hashed and replayed.

`Event` is one immutable row of an account's log, chained to the previous one by `hash`;
`AccountState` is what the rules need to know about an account after a given event;
`EventDraft` is what `decide` chose before the writer numbers, balances and hashes it. Also the
canonical encodings (JSON, event ids, microsecond times) that every stored row and hash uses.
Pure code, no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ledger.errors import InvalidArgument

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
    # A remote inference engine refused or was unreachable, ran out of time, or failed.
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_TIMEOUT = "engine_timeout"
    ENGINE_ERROR = "engine_error"


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


def compact_json(value: Any) -> str:
    """JSON without spaces in the given order: the encoding of hashes and fingerprints."""
    return _COMPACT.encode(value)


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
        return hash_of(self.hashed_fields())


def hash_of(hashed_fields: dict[str, Any]) -> str:
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
