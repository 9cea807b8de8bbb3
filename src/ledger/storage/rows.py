"""The one mapping between the `Event` dataclass and the `ledger_events` table's columns.

Derived, not written out: the columns are the event's fields in declaration order (`metadata`
is stored as `metadata_json`), and how each value is encoded and decoded follows from the
field's declared type. Import fails if the table and the dataclass ever disagree, so a field
added to one and not the other cannot be silently dropped. `event_tuple` is the writer's hot
path; `event_from_row` decodes without judging (the audit needs the raw values), the stores
check invariants after it.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable
from typing import Any

from sqlalchemy import BigInteger, Column, Row

from ledger.domain import Event, EventType, canonical_json
from ledger.storage.schema import events

# Fields stored under another column name.
_COLUMN_OF_FIELD = {"metadata": "metadata_json"}

EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Event))
EVENT_COLUMN_NAMES: tuple[str, ...] = tuple(_COLUMN_OF_FIELD.get(n, n) for n in EVENT_FIELDS)

_missing = set(EVENT_COLUMN_NAMES) ^ ({c.name for c in events.c} - {"position"})
if _missing:
    raise ImportError(f"Event fields and ledger_events columns disagree on {sorted(_missing)}")

EVENT_COLUMNS: tuple[Column[Any], ...] = tuple(events.c[name] for name in EVENT_COLUMN_NAMES)
# (name, is 64-bit integer) per column, for backends that bind whole columns as typed arrays.
EVENT_COLUMN_TYPES: tuple[tuple[str, bool], ...] = tuple(
    (c.name, isinstance(c.type, BigInteger)) for c in EVENT_COLUMNS
)

# The field's declared type (a string under `from __future__ import annotations`).
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(Event)}
TEXT_FIELDS = tuple(n for n, t in _FIELD_TYPES.items() if t == "str")
OPTIONAL_TEXT_FIELDS = tuple(n for n, t in _FIELD_TYPES.items() if t == "str | None")


def _metadata_json(metadata: dict[str, Any]) -> str:
    return canonical_json(metadata) if metadata else "{}"


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _identity(value: Any) -> Any:
    return value


_ENCODERS: dict[str, Callable[[Any], Any]] = {"EventType": str, "Metadata": _metadata_json}
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "EventType": EventType,
    "Metadata": json.loads,
    "int": int,
    "int | None": _int_or_none,
}
_ENCODED = tuple(
    (index, _ENCODERS[_FIELD_TYPES[name]])
    for index, name in enumerate(EVENT_FIELDS)
    if _FIELD_TYPES[name] in _ENCODERS
)
_DECODING = tuple(
    (name, column, _DECODERS.get(_FIELD_TYPES[name], _identity))
    for name, column in zip(EVENT_FIELDS, EVENT_COLUMN_NAMES, strict=True)
)
_FIELD_VALUES = operator.attrgetter(*EVENT_FIELDS)


def event_tuple(event: Event) -> tuple[Any, ...]:
    """The event's column values in EVENT_COLUMN_NAMES order (the writer's hot path)."""
    values = list(_FIELD_VALUES(event))
    for index, encode in _ENCODED:
        values[index] = encode(values[index])
    return tuple(values)


def event_to_row(event: Event) -> dict[str, Any]:
    """The event as {column name: stored value}."""
    return dict(zip(EVENT_COLUMN_NAMES, event_tuple(event), strict=True))


def event_from_row(row: Row[Any]) -> Event:
    """The event a row stores, decoded but not checked (raises on undecodable values)."""
    m = row._mapping
    return Event(**{name: decode(m[column]) for name, column, decode in _DECODING})
