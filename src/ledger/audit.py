"""The audit: replay every account's log and report what does not add up.

Checks, per account: sequence continuity, the hash chain (each event's hash over its canonical
encoding and its link to the previous one), stored balances after each event against replay,
available never negative, every hold resolved at most once and never above its amount, no
capture after expiry, refunds within what the referenced charge/capture took, idempotency keys
unique and never both applied and refused, snapshots equal to replay at their sequence, the
account head and the hold-expiry index equal to the end of replay, and expired holds the
sweeper has not released within the grace period. Totals come from the replay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ledger.domain import (
    GENESIS_HASH,
    AccountState,
    Event,
    EventType,
    ReplayError,
    apply,
    from_us,
    holds_from_record,
)
from ledger.errors import AccountNotFound, StorageError
from ledger.storage.persistence import (
    AccountHead,
    AuditReads,
    EventStore,
    MalformedRow,
    Snapshot,
)


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    account_id: str | None
    sequence: int | None
    detail: str


@dataclass(slots=True)
class AccountAudit:
    account_id: str
    owner_id: str
    events: int
    posted: int
    held: int
    available: int
    snapshots_checked: int
    violations: int


@dataclass(slots=True)
class AuditTotals:
    issued: int = 0
    captured: int = 0
    charged: int = 0
    refunded: int = 0
    released: int = 0
    outstanding_holds: int = 0
    posted: int = 0
    available: int = 0


@dataclass(slots=True)
class AuditReport:
    """Serialisable with `to_dict()` (JSON-safe types only)."""

    checked_at: str
    accounts_checked: int = 0
    events_checked: int = 0
    violations: list[Violation] = field(default_factory=list)
    accounts: list[AccountAudit] = field(default_factory=list)
    totals: AuditTotals = field(default_factory=AuditTotals)

    @property
    def clean(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["clean"] = self.clean
        return data


class _AccountReplay:
    """Replays one account's events and collects violations."""

    def __init__(
        self,
        head: AccountHead,
        snapshots: list[Snapshot | MalformedRow],
        report: AuditReport,
        now_us: int,
        grace_us: int,
    ) -> None:
        self.head = head
        self.state = AccountState(head.account_id, head.owner_id)
        self.report = report
        self.violations = 0
        self.snapshots: dict[int, Snapshot] = {}
        for snapshot in snapshots:
            if isinstance(snapshot, MalformedRow):
                self.flag("malformed_row", snapshot.sequence, snapshot.detail)
            else:
                self.snapshots[snapshot.sequence] = snapshot
        self.now_us = now_us
        self.grace_us = grace_us
        self.keys: set[str] = set()
        self.taken: dict[str, tuple[EventType, int]] = {}
        self.refunded: dict[str, int] = {}
        self.placed_holds: dict[str, int] = {}  # hold id -> expires_at_us
        self.events = 0
        self.snapshots_checked = 0
        self._check_snapshot(0)

    def flag(self, kind: str, sequence: int | None, detail: str) -> None:
        self.violations += 1
        self.report.violations.append(Violation(kind, self.head.account_id, sequence, detail))

    def skip(self, row: MalformedRow) -> None:
        """Report an event row that does not decode and step over it: the chain and sequence
        continue from it, so one damaged row is one finding, not a cascade."""
        self.events += 1
        self.flag("malformed_row", row.sequence, row.detail)
        if row.sequence is not None and row.sequence > self.state.sequence:
            self.state.sequence = row.sequence
            if row.hash is not None:
                self.state.head_hash = row.hash

    def feed(self, event: Event) -> None:
        state = self.state
        self.events += 1
        seq = event.sequence
        if seq != state.sequence + 1:
            self.flag("sequence_gap", seq, f"event {seq} follows {state.sequence}")
            state.sequence = seq - 1
        if event.prev_hash != state.head_hash:
            self.flag("chain_broken", seq, "prev_hash does not match the previous event's hash")
        if event.compute_hash() != event.hash:
            self.flag("hash_mismatch", seq, "stored hash does not match the event's contents")
        self._check_rules(event)
        try:
            apply(state, event)
        except ReplayError as exc:
            self.flag("invalid_event", seq, str(exc))
            state.sequence, state.head_hash = seq, event.hash
        if (event.posted_after, event.held_after) != (state.posted, state.held):
            self.flag(
                "balance_mismatch",
                seq,
                f"stored posted/held {event.posted_after}/{event.held_after}, "
                f"replay {state.posted}/{state.held}",
            )
        if state.available < 0:
            self.flag("negative_available", seq, f"available {state.available}")
        self._tally(event)
        self._check_snapshot(seq)

    def _check_rules(self, event: Event) -> None:
        seq = event.sequence
        if event.idempotency_key in self.keys:
            self.flag("duplicate_idempotency_key", seq, f"key {event.idempotency_key!r} reused")
        self.keys.add(event.idempotency_key)
        if event.amount < 0 or event.released_amount < 0:
            self.flag("invalid_event", seq, "negative amount")
        kind = event.event_type
        if kind is EventType.HOLD_PLACED and event.hold_id and event.expires_at_us is not None:
            self.placed_holds[event.hold_id] = event.expires_at_us
        if kind is EventType.HOLD_CAPTURED:
            expires_at_us = self.placed_holds.get(event.hold_id or "")
            if expires_at_us is not None and event.recorded_at_us >= expires_at_us:
                self.flag("capture_after_expiry", seq, f"hold {event.hold_id} had expired")
        if kind in (EventType.CHARGED, EventType.HOLD_CAPTURED):
            self.taken[event.event_id] = (kind, event.amount)
        if kind is EventType.REFUNDED:
            target = self.taken.get(event.refers_to or "")
            if target is None:
                self.flag("refund_target_invalid", seq, f"refers to {event.refers_to!r}")
                return
            total = self.refunded.get(event.refers_to or "", 0) + event.amount
            self.refunded[event.refers_to or ""] = total
            if total > target[1]:
                self.flag(
                    "refund_exceeds_taken",
                    seq,
                    f"refunds {total} of {event.refers_to} which took {target[1]}",
                )

    def _tally(self, event: Event) -> None:
        totals = self.report.totals
        kind = event.event_type
        if kind is EventType.CREDITS_ADDED:
            totals.issued += event.amount
        elif kind is EventType.HOLD_CAPTURED:
            totals.captured += event.amount
            totals.released += event.released_amount
        elif kind is EventType.HOLD_RELEASED:
            totals.released += event.amount
        elif kind is EventType.CHARGED:
            totals.charged += event.amount
        elif kind is EventType.REFUNDED:
            totals.refunded += event.amount

    def _check_snapshot(self, sequence: int) -> None:
        snapshot = self.snapshots.pop(sequence, None)
        if snapshot is None:
            return
        self.snapshots_checked += 1
        state = self.state
        replay = (state.posted, state.held, state.head_hash, state.holds)
        stored = (
            snapshot.posted,
            snapshot.held,
            snapshot.head_hash,
            holds_from_record(snapshot.holds_record),
        )
        if replay != stored:
            self.flag(
                "snapshot_mismatch",
                sequence,
                f"snapshot posted/held {snapshot.posted}/{snapshot.held}, "
                f"replay {state.posted}/{state.held} (or holds/hash differ)",
            )

    def finish(self, hold_index: dict[str, tuple[str, int, int]]) -> AccountAudit:
        state = self.state
        for sequence in sorted(self.snapshots):
            self.flag(
                "snapshot_beyond_log", sequence, "snapshot of an event that is not in the log"
            )
        if (state.sequence, state.head_hash) != (self.head.sequence, self.head.head_hash):
            self.flag(
                "head_mismatch",
                state.sequence,
                f"account head at {self.head.sequence}, log ends at {state.sequence}",
            )
        if state.sequence == 0 and self.head.head_hash != GENESIS_HASH:
            self.flag("head_mismatch", 0, "empty log but a non-genesis head hash")
        indexed = {h: v for h, v in hold_index.items() if v[0] == state.account_id}
        replayed = {
            h.hold_id: (state.account_id, h.amount, h.expires_at_us) for h in state.holds.values()
        }
        if indexed != replayed:
            self.flag(
                "hold_index_mismatch",
                None,
                f"expiry index lists {sorted(indexed)}, replay has {sorted(replayed)}",
            )
        for hold in state.holds.values():
            if hold.expires_at_us + self.grace_us < self.now_us:
                self.flag(
                    "expired_hold_unreleased",
                    None,
                    f"hold {hold.hold_id} expired at {from_us(hold.expires_at_us).isoformat()}",
                )
        totals = self.report.totals
        totals.outstanding_holds += state.held
        totals.posted += state.posted
        totals.available += state.available
        return AccountAudit(
            account_id=state.account_id,
            owner_id=self.head.owner_id,
            events=self.events,
            posted=state.posted,
            held=state.held,
            available=state.available,
            snapshots_checked=self.snapshots_checked,
            violations=self.violations,
        )


def _group(
    snapshots: Iterable[Snapshot | MalformedRow],
) -> dict[str | None, list[Snapshot | MalformedRow]]:
    grouped: dict[str | None, list[Snapshot | MalformedRow]] = {}
    for snapshot in snapshots:
        grouped.setdefault(snapshot.account_id, []).append(snapshot)
    return grouped


def _malformed(row: MalformedRow) -> Violation:
    return Violation("malformed_row", row.account_id, row.sequence, row.detail)


async def run_audit(
    store: EventStore, *, account_id: str | None, now_us: int, grace_s: float
) -> AuditReport:
    """Audit in one read transaction (one consistent moment even while writers commit).

    Raises AccountNotFound for an unknown `account_id` and StorageError when the database
    cannot be read (a missing table, say); a row that does not decode is a `malformed_row`
    violation and the audit goes on."""
    try:
        async with store.audit_reads(account_id) as reads:
            return await _audit(reads, account_id, now_us, grace_s)
    except SQLAlchemyError as exc:
        detail = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        first_line = (detail.strip().splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"cannot read the ledger for the audit: {first_line}") from exc


async def _audit(
    reads: AuditReads, account_id: str | None, now_us: int, grace_s: float
) -> AuditReport:
    report = AuditReport(checked_at=from_us(now_us).isoformat())
    heads: dict[str, AccountHead] = {}
    unreadable: set[str | None] = set()  # accounts whose own row is malformed
    for stored_head in await reads.heads():
        if isinstance(stored_head, MalformedRow):
            report.violations.append(_malformed(stored_head))
            unreadable.add(stored_head.account_id)
        else:
            heads[stored_head.account_id] = stored_head
    if account_id is not None and not heads and account_id not in unreadable:
        raise AccountNotFound(account_id)
    snapshots = _group(await reads.snapshots())
    hold_index: dict[str, tuple[str, int, int]] = {}
    for entry in await reads.hold_index():
        if isinstance(entry, MalformedRow):
            report.violations.append(_malformed(entry))
        else:
            hold_index[entry[0]] = entry[1]
    grace_us = round(grace_s * 1_000_000)
    replays: dict[str, _AccountReplay] = {}
    current: _AccountReplay | None = None
    current_id: str | None = None
    async for item in reads.events():
        report.events_checked += 1
        if item.account_id != current_id or current_id is None:
            current_id = item.account_id
            head = heads.get(item.account_id or "")
            if head is None:
                current = None
                if item.account_id not in unreadable:
                    report.violations.append(
                        Violation(
                            "unknown_account", item.account_id, item.sequence, "no account row"
                        )
                    )
            else:
                current = _AccountReplay(
                    head, snapshots.get(head.account_id, []), report, now_us, grace_us
                )
                replays[head.account_id] = current
        if isinstance(item, MalformedRow):
            if current is None:
                report.violations.append(_malformed(item))
            else:
                current.skip(item)
            continue
        if current is None:
            continue
        try:
            current.feed(item)
        except Exception as exc:  # a row that decodes but cannot be replayed is a finding too
            current.flag("malformed_row", item.sequence, f"cannot replay: {exc!r}")
    refusals: dict[str, list[tuple[str, str]]] = {}
    for refused_account, refused_key, code in await reads.refusals():
        refusals.setdefault(refused_account, []).append((refused_key, code))
    for key, head in heads.items():
        replay = replays.get(key) or _AccountReplay(
            head, snapshots.get(key, []), report, now_us, grace_us
        )
        report.accounts.append(replay.finish(hold_index))
        for refused_key, code in refusals.get(key, []):
            if refused_key in replay.keys:
                report.violations.append(
                    Violation(
                        "conflicting_idempotency_key",
                        key,
                        None,
                        f"key {refused_key!r} is both applied and refused ({code})",
                    )
                )
    report.accounts_checked = len(heads) + len(unreadable)
    return report
