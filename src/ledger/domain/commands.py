"""The ledger's commands and the checks on their inputs.

A command is what a caller asks for (add credits, place, capture or release a hold, charge,
refund), already checked for shape: lengths, types, storable text, metadata limits. Its
`fingerprint` is what a retry with the same idempotency key must match. Whether the account can
do it is for `rules.decide`. Pure code, no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger.domain.budgets import Budget
from ledger.domain.events import Metadata, ReleaseReason, compact_json
from ledger.errors import InvalidAmount, InvalidArgument

# Explicit limits on free-form inputs: they end up in every row and in the hash chain.
MAX_TEXT_LENGTH = 256
MAX_KEY_LENGTH = 200
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_LENGTH = 64


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
            if isinstance(value, dict):
                value = sorted(value.items())
            elif isinstance(value, tuple) and value and isinstance(value[0], Budget):
                value = [[b.budget_id, b.limit, b.period] for b in value]
            row.append(value)
        return hashlib.sha256(compact_json(row).encode()).hexdigest()


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
    # Checked in the same transaction as the balance; fingerprinted as (id, limit, period).
    budgets: tuple[Budget, ...] = ()


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
