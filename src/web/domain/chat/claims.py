"""Idempotency claims of chat requests: one `ChatRequestRow` per (user, Idempotency-Key).

A new key is claimed by inserting its row; an existing row means a retry, answered by
replaying the stored outcome, a conflict (another request under the same key), or 409 while
the first attempt runs. A claim whose attempt never stored its outcome (its process died) is
settled from the ledger, never from its age alone. The settled outcome is stored here too."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import Ledger
from ledger.models import HistoryEntry
from web.domain.accounts.schemas import Identity
from web.domain.chat.holds import ChatHolds
from web.domain.chat.inputs import ChatInput
from web.domain.chat.schemas import ChatCompleted, ChatDelta, ChatEvent, ChatStarted
from web.errors import IdempotencyKeyReused, RequestInProgress
from web.logging import get_logger
from web.tables import ChatRequestRow, ModelInteractionRow, utc_now

log = get_logger(__name__)

STATUS_STARTED = "started"
STATUS_DONE = "done"
CLAIM_ATTEMPTS = 2
SLOW_PREPARE_FRACTION = 0.25
"""A prepare that took longer than this share of the hold TTL before its hold was placed marks
its claim (updated_at), so a retry cannot take the claim for abandoned while the hold runs."""
CLOCK_SLACK_S = 5.0
"""Tolerance between the web and ledger clocks when searching the ledger for a claim's hold."""
TRACE_PAGES_MAX = 50
_FINISH_OF_RELEASE = {"failed": "error", "timeout": "timeout"}
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _LedgerTrace:
    hold: HistoryEntry | None
    resolution: HistoryEntry | None
    """The capture or release of `hold`, if any."""


def replay_events(stored: dict[str, Any]) -> list[ChatEvent]:
    """The events of a stored outcome, marked as replayed."""
    done = msgspec.convert(stored["done"], ChatCompleted)
    done = msgspec.structs.replace(done, replayed=True)
    events: list[ChatEvent] = [
        ChatStarted(
            request_id=done.request_id,
            conversation_id=done.conversation_id,
            model=done.model_requested,
            hold_credits=done.hold_credits,
            replayed=True,
        )
    ]
    if stored.get("text"):
        events.append(ChatDelta(text=str(stored["text"])))
    events.append(done)
    return events


class ChatClaims:
    """Claims of one database; `holds` reads the ledger for claims left behind."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        holds: ChatHolds,
        hold_ttl_s: float,
        default_model: str,
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._holds = holds
        self._hold_ttl_s = hold_ttl_s
        self._default_model = default_model

    async def claim(
        self,
        identity: Identity,
        chat_input: ChatInput,
        key: str,
        read: Callable[[AsyncSession], Awaitable[T]],
    ) -> tuple[str, T] | list[ChatEvent]:
        """The new request's id with what `read` read in the claim's own transaction (the
        chat's budgets: one session and commit instead of two), or the replayed events of an
        earlier attempt with this key. Raises IdempotencyKeyReused or RequestInProgress."""
        fingerprint = chat_input.fingerprint()
        for attempts_left in range(CLAIM_ATTEMPTS, 0, -1):
            request_id = str(uuid.uuid4())
            inserted, existing = await self._insert_or_read(
                identity, key, fingerprint, request_id, read
            )
            if inserted is not None:
                return request_id, inserted[0]
            if existing is None:
                # Deleted between our insert and read: an earlier attempt was refused (402...).
                if attempts_left > 1:
                    continue
                raise RequestInProgress("a request with this Idempotency-Key is being retried")
            if existing.fingerprint != fingerprint:
                raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
            if existing.status == STATUS_DONE and existing.outcome_json is not None:
                return replay_events(msgspec.json.decode(existing.outcome_json))
            if attempts_left > 1:
                resolved = await self._resolve_stale(identity, chat_input, existing)
                if isinstance(resolved, list):
                    return resolved
                if resolved:
                    continue
            raise RequestInProgress("a request with this Idempotency-Key is still running")
        raise RequestInProgress("a request with this Idempotency-Key is still running")

    async def _insert_or_read(
        self,
        identity: Identity,
        key: str,
        fingerprint: str,
        request_id: str,
        read: Callable[[AsyncSession], Awaitable[T]],
    ) -> tuple[tuple[T] | None, ChatRequestRow | None]:
        """((what `read` read,), None) when the row was inserted (and `read` ran in the same
        transaction, after the insert); else (None, the existing row or None if it vanished
        meanwhile)."""
        async with self._sessions() as session:
            session.add(
                ChatRequestRow(
                    id=request_id,
                    user_id=identity.user_id,
                    idempotency_key=key,
                    fingerprint=fingerprint,
                    status=STATUS_STARTED,
                )
            )
            try:
                # The INSERT first: a duplicate key fails here, before anything is read.
                await session.flush()
                value = await read(session)
                await session.commit()
                return (value,), None
            except IntegrityError:
                await session.rollback()
            existing = await session.scalar(
                select(ChatRequestRow).where(
                    ChatRequestRow.user_id == identity.user_id,
                    ChatRequestRow.idempotency_key == key,
                )
            )
        return None, existing

    async def _resolve_stale(
        self, identity: Identity, chat_input: ChatInput, claim: ChatRequestRow
    ) -> bool | list[ChatEvent]:
        """Settle the key of a request that never stored its outcome (its process died, or
        storing failed after the ledger moved credit).

        The ledger decides, never the claim's age alone: if the attempt's hold was captured or
        released by the service, that outcome is stored and replayed (a retry never charges
        twice); if its hold is still live, the attempt may still be running (409); only when
        its hold expired unresolved, or none was ever placed, is the key freed (returns True)
        for a retry to run as a new request.
        """
        now = utc_now()
        # updated_at is the claim's creation, or (after a slow prepare) when its hold was
        # placed: either way no hold of this claim is older than it.
        if claim.status != STATUS_STARTED:
            return False
        if (now - claim.updated_at).total_seconds() <= self._hold_ttl_s:
            return False
        trace = await self._ledger_trace(identity, claim)
        if trace.hold is not None and trace.resolution is None:
            expires_at = trace.hold.expires_at
            if expires_at is None or expires_at > now:
                return False  # the hold is live: its generation may still be streaming
        resolution = trace.resolution
        if trace.hold is not None and resolution is not None and resolution.reason != "expired":
            return await self._recover(identity, chat_input, claim, trace)
        # No credit moved: no hold, or one that expired unresolved (the sweeper releases it).
        # The updated_at guard loses to a slow prepare that marked the claim meanwhile.
        async with self._sessions() as session:
            freed = await session.execute(
                delete(ChatRequestRow).where(
                    ChatRequestRow.id == claim.id,
                    ChatRequestRow.status == STATUS_STARTED,
                    ChatRequestRow.updated_at <= claim.updated_at,
                )
            )
            await session.commit()
        age_s = (now - claim.created_at).total_seconds()
        log.warning("chat_claim_abandoned", request_id=claim.id, age_s=round(age_s, 1))
        return bool(getattr(freed, "rowcount", 0))

    async def _recover(
        self, identity: Identity, chat_input: ChatInput, claim: ChatRequestRow, trace: _LedgerTrace
    ) -> bool | list[ChatEvent]:
        """Store the outcome the ledger recorded for a lost attempt, and replay it."""
        done = await self._outcome_from_ledger(identity, chat_input, claim, trace)
        outcome = msgspec.json.encode({"done": done, "text": ""}).decode()
        async with self._sessions() as session:
            stored = await session.execute(
                update(ChatRequestRow)
                .where(ChatRequestRow.id == claim.id, ChatRequestRow.status == STATUS_STARTED)
                .values(status=STATUS_DONE, outcome_json=outcome, updated_at=utc_now())
            )
            await session.commit()
        log.warning(
            "chat_claim_recovered",
            request_id=claim.id,
            settlement=done.settlement,
            cost_credits=done.cost_credits,
        )
        if not getattr(stored, "rowcount", 0):
            return False  # the attempt stored its own outcome meanwhile; read it again
        return replay_events({"done": msgspec.to_builtins(done), "text": ""})

    async def _ledger_trace(self, identity: Identity, claim: ChatRequestRow) -> _LedgerTrace:
        """The claim's hold and how it was resolved, read from the account's ledger history in
        the only window where they can lie: the hold is placed at most a slow-prepare share of
        the TTL after the claim (else the claim is marked), and resolved before it expires."""
        ttl = dt.timedelta(seconds=self._hold_ttl_s)
        slack = dt.timedelta(seconds=CLOCK_SLACK_S)
        placed_by = max(claim.updated_at, claim.created_at + ttl * SLOW_PREPARE_FRACTION)
        entries: list[HistoryEntry] = []
        cursor: str | None = None
        for _ in range(TRACE_PAGES_MAX):
            page = await self._ledger.history(
                identity.account_id,
                cursor=cursor,
                limit=self._ledger.settings.history_page_max,
                types=["hold_placed", "hold_captured", "hold_released"],
                since=claim.created_at - slack,
                until=placed_by + ttl + slack,
            )
            entries += page.entries
            cursor = page.next_cursor
            if cursor is None:
                break
        hold = next(
            (
                e
                for e in entries
                if e.event_type == "hold_placed" and e.purpose == "chat" and e.reference == claim.id
            ),
            None,
        )
        resolution = None
        if hold is not None:
            resolution = next(
                (e for e in entries if e.event_type != "hold_placed" and e.hold_id == hold.hold_id),
                None,
            )
        return _LedgerTrace(hold=hold, resolution=resolution)

    async def _outcome_from_ledger(
        self, identity: Identity, chat_input: ChatInput, claim: ChatRequestRow, trace: _LedgerTrace
    ) -> ChatCompleted:
        """The outcome of an attempt whose record was lost, from its ledger events (the answer
        text is gone; the tokens, cost and price are the ledger's)."""
        assert trace.hold is not None and trace.resolution is not None
        resolution = trace.resolution
        metadata = resolution.metadata
        model_requested = chat_input.model_id or self._default_model
        captured = resolution.event_type == "hold_captured"
        release_reason = None if captured else resolution.reason
        return ChatCompleted(
            request_id=claim.id,
            conversation_id=chat_input.conversation_id,
            model_requested=model_requested,
            model_answered=str(metadata.get("model", model_requested)),
            prompt_tokens=int(metadata.get("prompt_tokens", 0)),
            completion_tokens=int(metadata.get("completion_tokens", 0)),
            cost_credits=abs(resolution.amount) if captured else 0,
            hold_credits=abs(trace.hold.amount),
            price_version=str(metadata.get("price_version", "")),
            finish_reason="unknown"
            if captured
            else _FINISH_OF_RELEASE.get(release_reason or "", "cancelled"),
            settlement="captured" if captured else "released",
            balance=await self._holds.balance(identity),
            release_reason=release_reason,
        )

    async def unclaim(self, request_id: str) -> None:
        """Forget a request refused before any credit moved, so the key can be retried."""
        async with self._sessions() as session:
            await session.execute(delete(ChatRequestRow).where(ChatRequestRow.id == request_id))
            await session.commit()

    async def mark_hold_placed(self, request_id: str) -> None:
        """After a slow prepare, stamp the claim with the hold's start, so a retry judges it by
        this hold; if a retry already freed the claim as abandoned, give the hold back."""
        async with self._sessions() as session:
            marked = await session.execute(
                update(ChatRequestRow)
                .where(ChatRequestRow.id == request_id, ChatRequestRow.status == STATUS_STARTED)
                .values(updated_at=utc_now())
            )
            await session.commit()
        if not getattr(marked, "rowcount", 0):
            raise RequestInProgress("a retry with this Idempotency-Key took over this request")

    async def store_outcome(
        self,
        request_id: str,
        interaction: ModelInteractionRow,
        done: ChatCompleted,
        text: str,
        exchange: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> Exception | None:
        """Record the interaction and the claim's outcome (what a retry replays), at once, and
        with them what `exchange` writes (the conversation's messages), in one transaction.

        Credit has moved by now, so the outcome is stored whatever happens to the exchange:
        when `exchange` raises (the conversation was deleted mid-stream: NotFound), its writes
        are rolled back, the outcome is stored on its own, and that error is returned. A
        failure to store the outcome itself is raised."""
        outcome = msgspec.json.encode({"done": done, "text": text}).decode()
        exchange_error: Exception | None = None
        if exchange is not None:
            try:
                async with self._sessions() as session:
                    try:
                        await exchange(session)
                    except Exception as exc:
                        exchange_error = exc
                        raise
                    await self._add_outcome(session, request_id, interaction, outcome)
                    await session.commit()
                    return None
            except Exception:
                if exchange_error is None:
                    raise
        async with self._sessions() as session:
            await self._add_outcome(session, request_id, interaction, outcome)
            await session.commit()
        return exchange_error

    @staticmethod
    async def _add_outcome(
        session: AsyncSession, request_id: str, interaction: ModelInteractionRow, outcome: str
    ) -> None:
        session.add(interaction)
        await session.execute(
            update(ChatRequestRow)
            .where(ChatRequestRow.id == request_id)
            .values(status=STATUS_DONE, outcome_json=outcome, updated_at=utc_now())
        )
