"""The chat page's conversation list: open a stored conversation, refresh the list after a
reply, rename and delete. Conversations belong to the conversations service; this module turns
its answers and errors into what the sidebar and the chatbot show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from web.domain.accounts.schemas import Identity
from web.domain.chat.schemas import MessageView
from web.errors import NotFound, ServiceError
from web.services import Services
from web.ui.chat import ChatHistory, ChatTurn
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import ReplyCost, escape_chat_markdown, notice_html, reply_footer

ReceiptLink = Callable[[str], str]
"""A request id -> a signed link to its receipt (for the conversation's owner)."""


def history_messages(
    messages: list[MessageView], receipt_link: ReceiptLink | None = None
) -> ChatHistory:
    """Stored messages as Chatbot messages, escaped like live ones; a reply whose cost was
    stored gets the same cost line it had when it streamed, with a fresh receipt link."""
    return [
        {"role": "assistant", "content": stored_reply(message, receipt_link)}
        if message.role == "assistant"
        else {"role": "user", "content": escape_chat_markdown(message.content)}
        for message in messages
    ]


def stored_reply(message: MessageView, receipt_link: ReceiptLink | None = None) -> str:
    usage = message.usage
    if usage is None:
        # Stored before costs were kept with replies: no cost line to show.
        return escape_chat_markdown(message.content)
    footer = reply_footer(
        ReplyCost(
            cost_credits=usage.cost_credits,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            model_requested=usage.model_requested,
            model_answered=message.model or usage.model_requested,
            settlement=usage.settlement,
            release_reason=usage.release_reason,
            request_id=usage.request_id,
            receipt_url=(
                None
                if receipt_link is None or usage.request_id is None
                else receipt_link(usage.request_id)
            ),
        )
    )
    return ChatTurn(history=[], reply_text=message.content, footer=footer).render()[-1]["content"]


class ConversationActions:
    """Handlers of the conversation sidebar, bound to the application services."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def _identity(self, session: UISession) -> Identity:
        return await identity(session, self._services.accounts)

    async def conversation_choices(self, caller: Identity) -> list[tuple[str, str]]:
        conversations = await self._services.conversations.list(caller)
        return [(conversation.title, conversation.id) for conversation in conversations]

    async def open_conversation(
        self, session: UISession, conversation_id: str | None
    ) -> tuple[Any, ...]:
        """Show a stored conversation. Yields (chatbot, conversation id, title, notice)."""
        if not conversation_id:
            return [], None, "", notice_html("info", "")
        try:
            caller = await self._identity(session)
            detail = await self._services.conversations.get(caller, conversation_id)
        except SessionEnded as ended:
            return gr.skip(), gr.skip(), gr.skip(), notice_html("error", ended.message)
        except NotFound:
            return [], None, "", notice_html("warning", "That conversation no longer exists.")
        links = self._services.receipts.links
        return (
            history_messages(detail.messages, lambda request: links.url(request, caller.user_id)),
            detail.conversation.id,
            detail.conversation.title,
            notice_html("info", ""),
        )

    async def refresh_conversations(self, session: UISession, conversation_id: str | None) -> Any:
        try:
            caller = await self._identity(session)
        except SessionEnded:
            return gr.skip()
        choices = await self.conversation_choices(caller)
        selected = conversation_id if any(cid == conversation_id for _, cid in choices) else None
        return gr.update(choices=choices, value=selected)

    async def rename(
        self, session: UISession, conversation_id: str | None, title: str
    ) -> tuple[Any, str]:
        """Rename the open conversation. Returns (conversation list, notice)."""
        if not conversation_id:
            return gr.skip(), notice_html("warning", "Open a conversation to rename it.")
        try:
            caller = await self._identity(session)
            await self._services.conversations.rename(caller, conversation_id, title.strip())
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message)
        choices = await self.conversation_choices(caller)
        return gr.update(choices=choices, value=conversation_id), notice_html("success", "Renamed.")

    def ask_delete(self, conversation_id: str | None) -> tuple[Any, str]:
        """First step of Delete: show Confirm/Cancel. Returns (confirm row, notice)."""
        if not conversation_id:
            return gr.update(visible=False), notice_html(
                "warning", "Open a conversation to delete it."
            )
        return gr.update(visible=True), notice_html(
            "warning", "Delete this conversation and its messages? This cannot be undone."
        )

    async def delete(self, session: UISession, conversation_id: str | None) -> tuple[Any, ...]:
        """Delete the open conversation (after Confirm delete). Returns (list, chatbot,
        conversation id, title, notice, confirm row)."""
        hide = gr.update(visible=False)
        if not conversation_id:
            warning = notice_html("warning", "Open a conversation to delete it.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), warning, hide
        try:
            caller = await self._identity(session)
            await self._services.conversations.delete(caller, conversation_id)
        except SessionEnded as ended:
            error = notice_html("error", ended.message)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), error, hide
        except ServiceError as failed:
            error = notice_html("error", failed.message)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), error, hide
        choices = await self.conversation_choices(caller)
        return (
            gr.update(choices=choices, value=None),
            [],
            None,
            "",
            notice_html("success", "Conversation deleted."),
            hide,
        )
