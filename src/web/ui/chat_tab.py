"""The Chat tab's layout and wiring: the conversation sidebar, the model picker, the chatbot,
the composer with Send and Stop, and the sampling panel. What the controls do lives in
`web.ui.chat.ChatActions` (replies) and `web.ui.conversations.ConversationActions` (the
sidebar); this module arranges the components and connects them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from web.services import Services
from web.ui.chat import TEMPERATURE_MAX, TEMPERATURE_MIN, ChatActions, model_choices
from web.ui.conversations import ConversationActions
from web.ui.frame import PageFrame, UILimits
from web.ui.session import UISession
from web.ui.text import notice_html

# Replies streaming at once through the page; the engine's own queue limit applies behind it.
CHAT_CONCURRENCY_LIMIT = 64


class ChatTab:
    """The Chat tab, built into the enclosing `gr.Tabs` when constructed."""

    def __init__(self, services: Services, limits: UILimits, conversation_id: Any) -> None:
        """`conversation_id` is the `gr.State` of the open conversation; it is made outside
        the tabs because a component inside `gr.Tabs` that is not a `gr.Tab` shows as one."""
        self._chat = ChatActions(services, limits.max_tokens_limit)
        self._conversations = ConversationActions(services)
        self.conversation_id = conversation_id
        with gr.Tab("Chat", id="chat", elem_id="chat-tab"):  # noqa: SIM117
            # Nested `with` mirrors the page layout; merging them would hide it.
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=220, elem_id="lc-sidebar"):
                    self._build_sidebar()
                with gr.Column(scale=4, min_width=320):
                    self._build_conversation(limits)

    def _build_sidebar(self) -> None:
        self.new_chat_button = gr.Button("+ New chat", elem_id="new-chat", variant="secondary")
        self.conversation_list = gr.Radio(
            choices=[], label="Conversations", elem_id="conversation-list"
        )
        with gr.Accordion("Rename or delete", open=False, elem_id="conversation-tools"):
            self.rename_title = gr.Textbox(label="Title", max_length=200, elem_id="rename-title")
            self.rename_button = gr.Button("Rename", size="sm", elem_id="rename-button")
            self.delete_button = gr.Button(
                "Delete conversation", size="sm", variant="stop", elem_id="delete-button"
            )

    def _build_conversation(self, limits: UILimits) -> None:
        self.model_select = gr.Dropdown(
            choices=[],
            label="Model (price per reply)",
            elem_id="model-select",
            interactive=True,
        )
        self.chatbot = gr.Chatbot(
            elem_id="chatbot",
            height="60vh",
            render_markdown=True,
            sanitize_html=True,
            allow_tags=False,
            latex_delimiters=[],
            buttons=["copy"],
            feedback_options=None,
            show_label=False,
            placeholder="Ask anything. Each reply is paid from your credits.",
        )
        self.notice = gr.HTML("", elem_id="chat-notice")
        with gr.Row(equal_height=True):
            self.message_box = gr.Textbox(
                placeholder="Write a message…",
                show_label=False,
                lines=2,
                max_lines=8,
                scale=6,
                elem_id="chat-input",
                max_length=limits.max_message_chars,
            )
            self.send_button = gr.Button(
                "Send", variant="primary", scale=1, min_width=80, elem_id="send-button"
            )
            self.stop_button = gr.Button(
                "Stop", variant="stop", scale=1, min_width=80, elem_id="stop-button"
            )
        with gr.Accordion("Sampling settings", open=False, elem_id="sampling"):
            self.temperature = gr.Number(
                value=1.0,
                label="Temperature",
                info=f"{TEMPERATURE_MIN}–{TEMPERATURE_MAX}; 0 is greedy",
                elem_id="temperature",
            )
            self.max_tokens = gr.Number(
                value=limits.default_max_tokens,
                label="Max new tokens",
                info=f"1–{limits.max_tokens_limit}; the hold is priced for this many",
                precision=0,
                elem_id="max-tokens",
            )

    def load_models(self) -> Any:
        """Fill the model picker (every catalog model with its price) and pick the default."""
        return gr.update(
            choices=model_choices(self._chat.models()), value=self._chat.default_model_id()
        )

    async def list_conversations(self, session: UISession) -> Any:
        return await self._conversations.refresh_conversations(session, None)

    def chain_open(self, event: Any, frame: PageFrame, *, with_models: bool) -> Any:
        """Chain what the tab shows once someone is signed in: the models (on page load) and
        their conversations."""
        if with_models:
            event = event.then(self.load_models, None, [self.model_select], show_progress="hidden")
        return event.then(
            self.list_conversations,
            [frame.session],
            [self.conversation_list],
            show_progress="hidden",
        )

    def chain_clear(self, event: Any) -> Any:
        """Chain clearing the chat, e.g. after Sign out."""
        return event.then(
            lambda: ([], None, gr.update(choices=[], value=None)),
            None,
            [self.chatbot, self.conversation_id, self.conversation_list],
        )

    def wire(self, frame: PageFrame) -> list[Any]:
        """Connect the tab's controls. Returns the events after which the page refreshes
        `views`."""
        session = frame.session
        send_event = gr.on(
            [self.send_button.click, self.message_box.submit],
            self._chat.send,
            [
                session,
                self.message_box,
                self.model_select,
                self.temperature,
                self.max_tokens,
                self.conversation_id,
                self.chatbot,
            ],
            [
                self.chatbot,
                self.message_box,
                self.notice,
                frame.balance_badge,
                self.conversation_id,
            ],
            concurrency_limit=CHAT_CONCURRENCY_LIMIT,
            show_progress="minimal",
            show_progress_on=[self.chatbot],
        )
        frame.refresh_views(
            send_event.then(
                self._conversations.refresh_conversations,
                [session, self.conversation_id],
                [self.conversation_list],
                show_progress="hidden",
            )
        )
        self.stop_button.click(self._chat.request_stop, [session], [self.notice], queue=False)
        self.model_select.change(
            self._chat.check_model, [self.model_select], [self.model_select, self.notice]
        )
        self.new_chat_button.click(
            lambda: ([], None, gr.update(value=None), "", notice_html("info", "")),
            None,
            [
                self.chatbot,
                self.conversation_id,
                self.conversation_list,
                self.rename_title,
                self.notice,
            ],
        )
        frame.refresh_views(
            self.conversation_list.input(
                self._conversations.open_conversation,
                [session, self.conversation_list],
                [self.chatbot, self.conversation_id, self.rename_title, self.notice],
            )
        )
        renamed = self.rename_button.click(
            self._conversations.rename,
            [session, self.conversation_id, self.rename_title],
            [self.conversation_list, self.notice],
        )
        deleted = self.delete_button.click(
            self._conversations.delete,
            [session, self.conversation_id],
            [
                self.conversation_list,
                self.chatbot,
                self.conversation_id,
                self.rename_title,
                self.notice,
            ],
        )
        return [renamed, deleted]
