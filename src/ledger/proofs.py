"""Proofs over the hash chain: the events of one request chained to a signed checkpoint, their
JSON form, and the offline check of such a proof (no database, only a public key).

A proof is a contiguous segment of one account's events, from the first event of the request
(its hold) up to a checkpointed head, plus that checkpoint. Checking it recomputes every
event's hash from its fields (`Event.compute_hash`: SHA-256 of the compact JSON array of the
fields in declaration order, metadata as sorted [key, value] pairs), checks each `prev_hash`
is the hash before it, that the last hash is the checkpoint's head hash at its sequence, and
the checkpoint's Ed25519 signature. Editing any field of any event breaks its hash; editing the
hash too breaks the link to the next event or the signed head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.checkpoints import Checkpoint, Signer, verify_signature
from ledger.clock import Clock
from ledger.domain import Event, EventType, to_us
from ledger.errors import InvalidArgument
from ledger.storage import EventStore, proof_reads
from ledger.storage.database import Engines

MAX_SEGMENT_EVENTS = 10_000
"""Longest chain segment a proof carries; the periodic checkpoints keep real ones short."""

_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(Event))
_INT_FIELDS = frozenset(
    {"sequence", "amount", "released_amount", "posted_after", "held_after", "recorded_at_us"}
)


@dataclass(frozen=True, slots=True)
class Proof:
    """`trail`: the request's own events; `segment`: every event from the first of them to
    the checkpoint's sequence (a superset of `trail`)."""

    trail: list[Event]
    segment: list[Event]
    checkpoint: Checkpoint | None


def event_to_json(event: Event) -> dict[str, Any]:
    """Every field of the event, `hash` included, as JSON-safe values."""
    body = {name: getattr(event, name) for name in _EVENT_FIELDS}
    body["event_type"] = str(event.event_type)
    body["metadata"] = dict(event.metadata)
    return body


def event_from_json(body: Any) -> Event:
    """The event a JSON object describes (exactly the Event's fields); InvalidArgument else."""
    if not isinstance(body, dict) or set(body) != set(_EVENT_FIELDS):
        raise InvalidArgument(f"an event needs exactly the fields {list(_EVENT_FIELDS)}")
    for name in _INT_FIELDS:
        if type(body[name]) is not int:
            raise InvalidArgument(f"event field {name} must be an integer")
    if not isinstance(body["metadata"], dict):
        raise InvalidArgument("event field metadata must be an object")
    try:
        event_type = EventType(body["event_type"])
    except ValueError:
        raise InvalidArgument(f"unknown event type {body['event_type']!r}") from None
    return Event(**{**body, "event_type": event_type})


def checkpoint_from_json(body: Any) -> Checkpoint:
    names = [f.name for f in dataclasses.fields(Checkpoint)]
    if not isinstance(body, dict) or set(body) != set(names):
        raise InvalidArgument(f"a checkpoint needs exactly the fields {names}")
    if type(body["sequence"]) is not int or type(body["signed_at_us"]) is not int:
        raise InvalidArgument("checkpoint sequence and signed_at_us must be integers")
    if not all(isinstance(body[n], str) for n in names if n not in ("sequence", "signed_at_us")):
        raise InvalidArgument("checkpoint text fields must be strings")
    return Checkpoint(**body)


def check_proof(
    segment: list[Event], checkpoint: Checkpoint | None, public_key: Ed25519PublicKey
) -> list[str]:
    """What is wrong with a proof (empty: it holds). Pure: needs no database."""
    if not segment:
        return ["the receipt carries no ledger events"]
    problems: list[str] = []
    account_id = segment[0].account_id
    previous: Event | None = None
    for event in segment:
        if event.account_id != account_id:
            problems.append(f"event {event.event_id} belongs to another account")
        if event.compute_hash() != event.hash:
            problems.append(f"event {event.event_id}: its fields do not hash to {event.hash}")
        if previous is not None:
            if event.sequence != previous.sequence + 1:
                problems.append(f"event {event.event_id} does not follow {previous.event_id}")
            elif event.prev_hash != previous.hash:
                problems.append(f"event {event.event_id} does not chain to {previous.event_id}")
        previous = event
    last = segment[-1]
    if checkpoint is None:
        problems.append("no signed checkpoint covers these events")
        return problems
    if checkpoint.account_id != account_id or checkpoint.sequence != last.sequence:
        problems.append(
            f"the checkpoint signs {checkpoint.account_id}:{checkpoint.sequence}, "
            f"but the events end at {last.event_id}"
        )
    elif checkpoint.head_hash != last.hash:
        problems.append(f"the checkpoint's head hash is not the hash of {last.event_id}")
    if not verify_signature(public_key, checkpoint):
        problems.append("the checkpoint's signature is not valid for this public key")
    return problems


class LedgerProofs:
    """Checkpoint and proof operations of `ledger.Ledger` (which sets the store and clock)."""

    _store: EventStore
    _clock: Clock

    async def sign_heads(self, signer: Signer, account_id: str | None = None) -> list[Checkpoint]:
        """Sign the head of every account (or one) that moved since its last checkpoint."""
        return await proof_reads.sign_heads(
            self._store.engines, signer, to_us(self._clock()), account_id
        )

    async def checkpoints(self, account_id: str | None = None) -> list[Checkpoint]:
        return await proof_reads.all_checkpoints(self._store.engines, account_id)

    async def proof(self, account_id: str, idempotency_key: str) -> Proof | None:
        """The events stored under the key (and of its hold, and their refunds) chained to the
        earliest checkpoint at or after the last of them; None if no event has that key."""
        engines = self._store.engines
        trail = await proof_reads.trail(engines, account_id, idempotency_key)
        if not trail:
            return None
        checkpoint = await proof_reads.covering_checkpoint(engines, account_id, trail[-1].sequence)
        last = trail[-1].sequence if checkpoint is None else checkpoint.sequence
        if last - trail[0].sequence >= MAX_SEGMENT_EVENTS:
            raise InvalidArgument(
                f"the chain from {trail[0].event_id} to its checkpoint is longer than "
                f"{MAX_SEGMENT_EVENTS} events"
            )
        segment = await proof_reads.segment(engines, account_id, trail[0].sequence, last)
        return Proof(trail=trail, segment=segment, checkpoint=checkpoint)

    async def check_checkpoints(self, public_key: Ed25519PublicKey | None) -> list[str]:
        """Problems with the stored checkpoints: a signature this key did not make (skipped
        without a key), or a head hash that is not the stored event's hash at that sequence."""
        return [p.detail for p in await check_stored_checkpoints(self._store.engines, public_key)]


@dataclass(frozen=True, slots=True)
class CheckpointProblem:
    """What is wrong with one stored checkpoint (the audit reports it as a violation)."""

    account_id: str
    sequence: int
    detail: str


async def check_stored_checkpoints(
    engines: Engines, public_key: Ed25519PublicKey | None, account_id: str | None = None
) -> list[CheckpointProblem]:
    stored = await proof_reads.all_checkpoints(engines, account_id)
    hashes = await proof_reads.event_hashes_at(
        engines, [(c.account_id, c.sequence) for c in stored]
    )
    problems: list[CheckpointProblem] = []
    for c in stored:
        details = []
        if public_key is not None and not verify_signature(public_key, c):
            details.append("the signature is not valid for the service's public key")
        actual = hashes.get((c.account_id, c.sequence))
        if actual is None:
            details.append("the account has no event at that sequence")
        elif actual != c.head_hash:
            details.append("the signed head hash is not the chain's hash there")
        name = f"checkpoint {c.account_id}:{c.sequence}"
        problems += [CheckpointProblem(c.account_id, c.sequence, f"{name}: {d}") for d in details]
    return problems
