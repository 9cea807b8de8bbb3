"""Per-user conversations and their messages: list, read, rename, delete, and the append used
by the chat service when an answer is settled."""

from __future__ import annotations

import builtins
import uuid

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.accounts.schemas import Identity
from web.domain.chat.schemas import (
    MAX_TITLE_CHARS,
    ConversationDetail,
    ConversationView,
    MessageUsage,
    MessageView,
)
from web.errors import NotFound, ValidationFailed
from web.tables import ConversationRow, MessageRow, utc_now

TITLE_CHARS = 60
MAX_MESSAGES_PER_READ = 1000


def conversation_view(row: ConversationRow) -> ConversationView:
    return ConversationView(
        id=row.id, title=row.title, created_at=row.created_at, updated_at=row.updated_at
    )


# Longer release reasons (error texts) are cut to the column's size.
RELEASE_REASON_CHARS = 64


def message_view(row: MessageRow) -> MessageView:
    return MessageView(
        id=row.id,
        role=row.role,
        content=row.content,
        model=row.model_id,
        created_at=row.created_at,
        usage=message_usage(row),
    )


def message_usage(row: MessageRow) -> MessageUsage | None:
    """The stored cost of a reply; None for user messages and replies stored before costs
    were kept (all their usage columns are NULL)."""
    if (
        row.request_id is None
        or row.cost_credits is None
        or row.prompt_tokens is None
        or row.completion_tokens is None
        or row.settlement is None
    ):
        return None
    return MessageUsage(
        request_id=row.request_id,
        cost_credits=row.cost_credits,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        model_requested=row.model_requested or row.model_id or "",
        settlement=row.settlement,
        release_reason=row.release_reason,
    )


def title_from(message: str) -> str:
    first_line = " ".join(message.split())
    return first_line[:TITLE_CHARS] or "New conversation"


class ConversationsService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], page_size: int) -> None:
        self._sessions = sessions
        self.page_size = page_size

    async def list(
        self, identity: Identity, *, limit: int | None = None, offset: int = 0
    ) -> list[ConversationView]:
        limit = min(limit or self.page_size, self.page_size)
        if limit < 1 or offset < 0:
            raise ValidationFailed("limit must be positive and offset not negative")
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ConversationRow)
                .where(ConversationRow.user_id == identity.user_id)
                .order_by(ConversationRow.updated_at.desc(), ConversationRow.id)
                .limit(limit)
                .offset(offset)
            )
            return [conversation_view(row) for row in rows]

    async def _owned(
        self, session: AsyncSession, identity: Identity, conversation_id: str
    ) -> ConversationRow:
        row = await session.get(ConversationRow, conversation_id)
        if row is None or row.user_id != identity.user_id:
            raise NotFound(f"conversation {conversation_id} does not exist")
        return row

    async def get(self, identity: Identity, conversation_id: str) -> ConversationDetail:
        async with self._sessions() as session:
            row = await self._owned(session, identity, conversation_id)
            messages = await session.scalars(
                select(MessageRow)
                .where(MessageRow.conversation_id == conversation_id)
                .order_by(MessageRow.id)
                .limit(MAX_MESSAGES_PER_READ)
            )
            return ConversationDetail(
                conversation=conversation_view(row),
                messages=[message_view(m) for m in messages],
            )

    async def rename(
        self, identity: Identity, conversation_id: str, title: str
    ) -> ConversationView:
        title = title.strip()
        if "\x00" in title:
            raise ValidationFailed("title must not contain NUL characters", field="title")
        if not 1 <= len(title) <= MAX_TITLE_CHARS:
            raise ValidationFailed(f"title must be 1-{MAX_TITLE_CHARS} characters", field="title")
        async with self._sessions() as session:
            row = await self._owned(session, identity, conversation_id)
            row.title = title
            row.updated_at = utc_now()
            await session.commit()
            return conversation_view(row)

    async def delete(self, identity: Identity, conversation_id: str) -> None:
        async with self._sessions() as session:
            await self._owned(session, identity, conversation_id)
            await session.execute(
                delete(MessageRow).where(MessageRow.conversation_id == conversation_id)
            )
            await session.execute(
                delete(ConversationRow).where(ConversationRow.id == conversation_id)
            )
            await session.commit()

    async def create(self, identity: Identity, first_message: str) -> ConversationView:
        async with self._sessions() as session:
            row = ConversationRow(
                id=str(uuid.uuid4()), user_id=identity.user_id, title=title_from(first_message)
            )
            session.add(row)
            await session.commit()
            return conversation_view(row)

    async def recent_messages(
        self, identity: Identity, conversation_id: str, limit: int
    ) -> builtins.list[MessageView]:
        """The last `limit` messages, oldest first (the context sent to the model)."""
        async with self._sessions() as session:
            await self._owned(session, identity, conversation_id)
            rows = list(
                await session.scalars(
                    select(MessageRow)
                    .where(MessageRow.conversation_id == conversation_id)
                    .order_by(MessageRow.id.desc())
                    .limit(limit)
                )
            )
        return [message_view(row) for row in reversed(rows)]

    async def add_exchange(
        self,
        session: AsyncSession,
        identity: Identity,
        conversation_id: str,
        user_text: str,
        answer_text: str,
        model_id: str,
        usage: MessageUsage | None = None,
    ) -> None:
        """Store one exchange in the caller's transaction, not committed; `usage` (what the
        reply cost) is kept with the reply so a reopened conversation shows its cost line.
        The rows are flushed, so a failure (NotFound, a constraint) is raised here, before
        the caller commits."""
        if usage is not None and usage.cost_credits < 0:
            raise ValidationFailed("a reply's cost cannot be negative", field="usage")
        row = await self._owned(session, identity, conversation_id)
        session.add(MessageRow(conversation_id=conversation_id, role="user", content=user_text))
        if answer_text:
            session.add(
                MessageRow(
                    conversation_id=conversation_id,
                    role="assistant",
                    content=answer_text,
                    model_id=model_id,
                    **_usage_columns(usage),
                )
            )
        row.updated_at = utc_now()
        await session.flush()


def _usage_columns(usage: MessageUsage | None) -> dict[str, object]:
    if usage is None:
        return {}
    release_reason = usage.release_reason
    return {
        "request_id": usage.request_id,
        "cost_credits": usage.cost_credits,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "model_requested": usage.model_requested,
        "settlement": usage.settlement,
        "release_reason": None if release_reason is None else release_reason[:RELEASE_REASON_CHARS],
    }
