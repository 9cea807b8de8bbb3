"""The Chat tab's layout and wiring: the conversation drawer (a `gr.Sidebar`: open beside the
chat on wide screens, a collapsed drawer on phones), the model picker with New chat, the chat
log, the composer with Send and Stop, the price line and the sampling panel. What the controls
do lives in `web.ui.chat.ChatActions` (replies) and `web.ui.conversations.ConversationActions`
(the drawer); this module arranges the components and connects them.

The tab fills the screen's height (see `web.ui.styles`): the chat log takes what the header,
the toolbar and the composer leave, so the message box and Send/Stop stay in view whatever the
log or a notice holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from web.services import Services
from web.ui.alerts import AlertActions
from web.ui.chat import TEMPERATURE_MAX, TEMPERATURE_MIN, ChatActions
from web.ui.conversations import ConversationActions
from web.ui.frame import PageFrame, UILimits
from web.ui.session import UISession
from web.ui.text import notice_html

# Replies streaming at once through the page; the engine's own queue limit applies behind it.
CHAT_CONCURRENCY_LIMIT = 64
# Below this width (CSS pixels) the conversation list starts as a closed drawer; Gradio's
# Sidebar turns into a full-width overlay at 768 px and below.
WIDE_SCREEN_MIN_PX = 769
# How often the page refreshes its "model loading, N%" notice while a model loads.
LOADING_REFRESH_S = 2.0
# The browser's width, written into a hidden Number by a js-only step (a gr.State cannot be
# written from the browser).
_VIEWPORT_WIDTH_JS = "() => window.innerWidth"
# Gradio measures how far an open drawer pushes the page on load and on window resizes; a resize
# while another tab shows measures the hidden drawer as 0 px wide, and back on this tab the drawer
# would cover the chat. A resize event once the tab is laid out again measures it afresh.
_REMEASURE_DRAWER_JS = (
    "() => { requestAnimationFrame(() => requestAnimationFrame("
    "() => window.dispatchEvent(new Event('resize')))); }"
)


def _is_wide(viewport_width: Any) -> bool:
    return isinstance(viewport_width, int | float) and viewport_width >= WIDE_SCREEN_MIN_PX


def _close_drawer_if_narrow(viewport_width: Any) -> Any:
    """On a phone the drawer covers the chat: close it once a conversation is picked."""
    return gr.skip() if _is_wide(viewport_width) else gr.Sidebar(open=False)


def _buttons(streaming: bool) -> tuple[Any, Any]:
    """(Send, Stop) while a reply streams or not: only one of them can be pressed."""
    return gr.update(interactive=not streaming), gr.update(interactive=streaming)


class ChatTab:
    """The Chat tab, built into the enclosing `gr.Tabs` when constructed."""

    def __init__(self, services: Services, limits: UILimits, conversation_id: Any) -> None:
        """`conversation_id` is the `gr.State` of the open conversation; it is made outside
        the tabs because a component inside `gr.Tabs` that is not a `gr.Tab` shows as one."""
        self._chat = ChatActions(services, limits.max_tokens_limit)
        self._conversations = ConversationActions(services)
        self._alerts = AlertActions(services)
        self.conversation_id = conversation_id
        with gr.Tab("Chat", id="chat", elem_id="chat-tab") as self.tab:
            with gr.Sidebar(
                open=False, width=280, label="Conversations", elem_id="lc-sidebar"
            ) as self.sidebar:
                self._build_sidebar()
            with gr.Column(elem_id="lc-chat-main"):
                self._build_conversation(limits)

    def _build_sidebar(self) -> None:
        self.conversation_list = gr.Radio(
            choices=[], label="Conversations", elem_id="conversation-list"
        )
        with gr.Accordion("Rename or delete", open=False, elem_id="conversation-tools"):
            self.rename_title = gr.Textbox(label="Title", max_length=200, elem_id="rename-title")
            self.rename_button = gr.Button("Rename", size="sm", elem_id="rename-button")
            self.delete_button = gr.Button(
                "Delete conversation…", size="sm", variant="secondary", elem_id="delete-button"
            )
            with gr.Row(visible=False, elem_id="delete-confirm-row") as self.delete_confirm_row:
                self.delete_confirm = gr.Button(
                    "Confirm delete", size="sm", variant="stop", elem_id="delete-confirm"
                )
                self.delete_cancel = gr.Button("Cancel", size="sm", elem_id="delete-cancel")
        self.tools_notice = gr.HTML("", elem_id="conversation-notice")

    def _build_conversation(self, limits: UILimits) -> None:
        self.viewport_width = gr.Number(value=0, visible=False, elem_id="lc-viewport-width")
        # Alert notices (low balance, budget use) right under the header and its balance; the
        # bar hides itself while it holds none (web.ui.styles).
        with gr.Row(equal_height=True, elem_id="lc-alert-bar"):
            self.alert_notice = gr.HTML("", elem_id="lc-alert-notice")
            self.alert_dismiss = gr.Button(
                "Dismiss", size="sm", scale=0, min_width=90, elem_id="lc-alert-dismiss"
            )
        self.alert_ids = gr.State([])
        with gr.Row(equal_height=True, elem_id="lc-chat-toolbar"):
            self.model_select = gr.Dropdown(
                choices=[],
                show_label=False,
                container=False,
                elem_id="model-select",
                interactive=True,
                scale=4,
                min_width=120,
            )
            self.new_chat_button = gr.Button(
                "New chat", elem_id="new-chat", variant="secondary", scale=0, min_width=96
            )
        self.chatbot = gr.Chatbot(
            elem_id="chatbot",
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
        # "model loading, N%" while the chosen model is prepared and loaded, refreshed by the
        # timer, which stops itself once the model is loaded.
        self.loading_notice = gr.HTML("", elem_id="model-loading")
        self.loading_timer = gr.Timer(LOADING_REFRESH_S, active=True)
        with gr.Row(equal_height=True, elem_id="lc-composer"):
            self.message_box = gr.Textbox(
                placeholder="Write a message…",
                show_label=False,
                container=False,
                lines=1,
                max_lines=5,
                scale=6,
                min_width=120,
                elem_id="chat-input",
                max_length=limits.max_message_chars,
            )
            self.send_button = gr.Button(
                "Send", variant="primary", scale=0, min_width=72, elem_id="send-button"
            )
            self.stop_button = gr.Button(
                "Stop",
                variant="stop",
                scale=0,
                min_width=72,
                interactive=False,
                elem_id="stop-button",
            )
        self.price_line = gr.Markdown("", elem_id="model-price")
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

    async def load_models(self, session: UISession) -> tuple[Any, str]:
        """Fill the model picker (every catalog model; admins see why one is unavailable),
        pick the default and show its price."""
        choices, default = self._chat.model_picker(operator_detail=session.is_admin)
        return gr.update(choices=choices, value=default), self._chat.price_line(default)

    async def list_conversations(self, session: UISession) -> Any:
        return await self._conversations.refresh_conversations(session, None)

    def chain_open(self, event: Any, frame: PageFrame, *, with_models: bool) -> Any:
        """Chain what the tab shows once someone is signed in: the models with their prices,
        their conversations, and the drawer open beside the chat on a wide screen. (The
        models are reloaded at sign-in too: an admin's list says why a model is missing.)"""
        del with_models  # every sign-in reloads them; kept for the page's call signature
        event = event.then(
            self.load_models,
            [frame.session],
            [self.model_select, self.price_line],
            show_progress="hidden",
        )
        event = event.then(None, None, [self.viewport_width], js=_VIEWPORT_WIDTH_JS)
        event = event.then(
            # It starts closed; only a wide screen opens it (so a phone user's own tap on the
            # toggle is never undone by this step).
            lambda width: gr.Sidebar(open=True) if _is_wide(width) else gr.skip(),
            [self.viewport_width],
            [self.sidebar],
            show_progress="hidden",
        )
        return event.then(
            self.list_conversations,
            [frame.session],
            [self.conversation_list],
            show_progress="hidden",
        )

    def chain_clear(self, event: Any) -> Any:
        """Chain clearing the chat, e.g. after Sign out."""
        return event.then(
            lambda: ([], None, gr.update(choices=[], value=None), *_buttons(streaming=False)),
            None,
            [
                self.chatbot,
                self.conversation_id,
                self.conversation_list,
                self.send_button,
                self.stop_button,
            ],
        )

    async def _send(self, *inputs: Any) -> AsyncIterator[tuple[Any, ...]]:
        """`ChatActions.send` with Send disabled and Stop enabled while the reply streams.
        Each update is held back until the next one arrives, so the last (the cost line, or a
        refusal) goes out together with the buttons' return to normal."""
        previous: tuple[Any, ...] | None = None
        async for outputs in self._chat.send(*inputs):
            if previous is not None:
                yield (*previous, *_buttons(streaming=True))
            previous = outputs
        if previous is not None:
            yield (*previous, *_buttons(streaming=False))

    def _new_chat(self) -> tuple[Any, ...]:
        """Show an empty chat with no conversation open: the next message starts a new stored
        conversation, with none of the old one's context."""
        return [], None, gr.update(value=None), "", notice_html("info", "")

    def wire(self, frame: PageFrame) -> list[Any]:
        """Connect the tab's controls. Returns the events after which the page refreshes
        `views`."""
        session = frame.session
        send_event = gr.on(
            [self.send_button.click, self.message_box.submit],
            self._send,
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
                self.send_button,
                self.stop_button,
            ],
            concurrency_limit=CHAT_CONCURRENCY_LIMIT,
            # A second Enter while a reply streams is ignored, as the disabled Send button is.
            trigger_mode="once",
            show_progress="minimal",
            show_progress_on=[self.chatbot],
        )
        # Whatever ended the reply (finish, error, Stop), the buttons go back to normal.
        after_send = send_event.then(
            lambda: _buttons(streaming=False),
            None,
            [self.send_button, self.stop_button],
            show_progress="hidden",
        )
        loading_inputs = [self.model_select, self.loading_notice]
        loading_outputs = [self.loading_notice, self.loading_timer, self.notice]
        self.loading_timer.tick(
            self._chat.loading_notice,
            loading_inputs,
            loading_outputs,
            show_progress="hidden",
            queue=False,
        )
        # A chat (or a pick) may start a model's load: look again, which restarts the timer.
        after_send.then(
            self._chat.loading_notice, loading_inputs, loading_outputs, show_progress="hidden"
        )
        frame.refresh_views(
            after_send.then(
                self._conversations.refresh_conversations,
                [session, self.conversation_id],
                [self.conversation_list],
                show_progress="hidden",
            )
        )
        self.stop_button.click(self._chat.request_stop, [session], None, queue=False)
        self.alert_dismiss.click(
            self._alerts.dismiss,
            [session, self.alert_ids],
            [self.alert_notice, self.alert_ids],
            show_progress="hidden",
        )
        self.model_select.change(
            self._chat.check_model,
            [self.model_select],
            [self.model_select, self.notice, self.price_line],
        ).then(self._chat.loading_notice, loading_inputs, loading_outputs, show_progress="hidden")
        new_chat_outputs = [
            self.chatbot,
            self.conversation_id,
            self.conversation_list,
            self.rename_title,
            self.notice,
        ]
        self.new_chat_button.click(self._new_chat, None, new_chat_outputs)
        self.tab.select(None, None, None, js=_REMEASURE_DRAWER_JS)
        # The Chatbot's own trash button is hidden (web.ui.styles); should it be pressed
        # anyway, it starts a new chat rather than only blanking the screen.
        self.chatbot.clear(self._new_chat, None, new_chat_outputs)
        opened = self.conversation_list.input(
            self._conversations.open_conversation,
            [session, self.conversation_list],
            [self.chatbot, self.conversation_id, self.rename_title, self.notice],
        )
        opened.then(
            _close_drawer_if_narrow, [self.viewport_width], [self.sidebar], show_progress="hidden"
        )
        frame.refresh_views(opened)
        renamed = self.rename_button.click(
            self._conversations.rename,
            [session, self.conversation_id, self.rename_title],
            [self.conversation_list, self.tools_notice],
        )
        self.delete_button.click(
            self._conversations.ask_delete,
            [self.conversation_id],
            [self.delete_confirm_row, self.tools_notice],
        )
        self.delete_cancel.click(
            lambda: (gr.update(visible=False), ""),
            None,
            [self.delete_confirm_row, self.tools_notice],
        )
        deleted = self.delete_confirm.click(
            self._conversations.delete,
            [session, self.conversation_id],
            [
                self.conversation_list,
                self.chatbot,
                self.conversation_id,
                self.rename_title,
                self.tools_notice,
                self.delete_confirm_row,
            ],
        )
        return [renamed, deleted]
