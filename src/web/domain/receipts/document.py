"""A chat reply's receipt as a JSON document, and its offline check.

The document states what the reply was billed (request id, model, price version, tokens, finish
reason, the hold placed, captured, released and refunded) and carries the proof of it: the
account's events from the reply's hold up to a signed checkpoint (`ledger.proofs`). The check
recomputes every statement it can from those events: the hold is the first event and names the
request; its capture or release and any refunds are found in the segment by their links (so a
refund cannot be left out); the amounts and, for a capture, the model, price version and token
counts must equal what the ledger events say. `finish_reason` is the service's word only.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.domain import Event, EventType
from ledger.errors import InvalidArgument
from ledger.proofs import Proof, check_proof, checkpoint_from_json, event_from_json, event_to_json

RECEIPT_FORMAT = "ledgerchat-receipt/1"
MAX_RECEIPT_EVENTS = 10_000


def request_trail(segment: list[Event]) -> list[Event]:
    """The request's events in a segment that starts with its hold: the hold, the events of
    that hold (capture or release), and the refunds of any of them."""
    hold = segment[0]
    trail = [hold]
    ids = {hold.event_id}
    for event in segment[1:]:
        if event.hold_id == hold.event_id or event.refers_to in ids:
            trail.append(event)
            ids.add(event.event_id)
    return trail


def hold_summary(trail: list[Event]) -> dict[str, Any]:
    """placed, captured, released and refunded credits of a request's events."""
    summary: dict[str, Any] = {
        "hold_id": trail[0].event_id,
        "placed": trail[0].amount,
        "captured": 0,
        "released": 0,
        "refunded": 0,
    }
    for event in trail[1:]:
        if event.event_type is EventType.HOLD_CAPTURED:
            summary["captured"] += event.amount
            summary["released"] += event.released_amount
        elif event.event_type is EventType.HOLD_RELEASED:
            summary["released"] += event.amount
        elif event.event_type is EventType.REFUNDED:
            summary["refunded"] += event.amount
    return summary


def build_receipt(request_id: str, outcome: dict[str, Any], proof: Proof) -> dict[str, Any]:
    """The receipt document of a settled reply (`outcome`: its stored ChatCompleted)."""
    trail = request_trail(proof.segment)
    return {
        "format": RECEIPT_FORMAT,
        "request_id": request_id,
        "account_id": trail[0].account_id,
        "model": outcome["model_answered"],
        "model_requested": outcome["model_requested"],
        "price_version": outcome["price_version"],
        "prompt_tokens": outcome["prompt_tokens"],
        "completion_tokens": outcome["completion_tokens"],
        "finish_reason": outcome["finish_reason"],
        "settlement": outcome["settlement"],
        "hold": hold_summary(trail),
        "request_events": [e.sequence for e in trail],
        "events": [event_to_json(e) for e in proof.segment],
        "checkpoint": None if proof.checkpoint is None else proof.checkpoint.to_dict(),
        "public_key_url": "/api/ledger/public-key",
    }


def check_receipt(document: Any, public_key: Ed25519PublicKey) -> list[str]:
    """What is wrong with a receipt (empty: valid). InvalidArgument when it is not a receipt
    at all (unreadable: a missing field, a wrong type)."""
    if not isinstance(document, dict) or document.get("format") != RECEIPT_FORMAT:
        raise InvalidArgument(f"not a receipt (expected format {RECEIPT_FORMAT!r})")
    raw_events = document.get("events")
    if not isinstance(raw_events, list) or not 0 < len(raw_events) <= MAX_RECEIPT_EVENTS:
        raise InvalidArgument(f"events must be a list of 1 to {MAX_RECEIPT_EVENTS} events")
    segment = [event_from_json(body) for body in raw_events]
    raw_checkpoint = document.get("checkpoint")
    checkpoint = None if raw_checkpoint is None else checkpoint_from_json(raw_checkpoint)
    problems = check_proof(segment, checkpoint, public_key)
    hold = segment[0]
    if hold.event_type is not EventType.HOLD_PLACED or hold.reference != document.get("request_id"):
        problems.append(f"the first event is not the hold of request {document.get('request_id')}")
        return problems
    trail = request_trail(segment)
    if document.get("request_events") != [e.sequence for e in trail]:
        problems.append("request_events are not the request's events in the chain")
    stated = document.get("hold")
    for name, value in hold_summary(trail).items():
        if not isinstance(stated, dict) or stated.get(name) != value:
            shown = stated.get(name) if isinstance(stated, dict) else None
            problems.append(f"hold.{name} says {shown!r}, the ledger events say {value!r}")
    problems += _check_capture_terms(document, trail)
    return problems


def _check_capture_terms(document: dict[str, Any], trail: list[Event]) -> list[str]:
    """The model, price version and token counts the capture recorded, against the receipt's."""
    captures = [e for e in trail if e.event_type is EventType.HOLD_CAPTURED]
    if not captures:
        return []
    recorded = captures[0].metadata
    problems = []
    for field, key in (
        ("model", "model"),
        ("price_version", "price_version"),
        ("prompt_tokens", "prompt_tokens"),
        ("completion_tokens", "completion_tokens"),
    ):
        if key in recorded and document.get(field) != recorded[key]:
            problems.append(
                f"{field} says {document.get(field)!r}, the capture recorded {recorded[key]!r}"
            )
    return problems
