"""The Gradio page: composes the header, the sign-in screen and the Chat, Account and Admin
tabs (each in its own `*_tab` module with its layout and wiring), resumes the session on page
load, and sets the queue's limits. Behaviour lives in the `*Actions` classes; the page only
arranges the pieces and orders the events between them.
"""

from __future__ import annotations

import gradio as gr

from web.services import Services
from web.ui.account_tab import AccountTab
from web.ui.admin_tab import AdminTab
from web.ui.chat_tab import ChatTab
from web.ui.frame import PageFrame, UILimits, build_header, views_update
from web.ui.session import UISession
from web.ui.signin_tab import SignInScreen

# Encrypted browser storage for the refresh token; the key name is stable across restarts.
BROWSER_STORAGE_KEY = "ledgerchat-session"
PAGE_TITLE = "ledgerchat"
# Other page actions running at once (Gradio's default would be one at a time for everyone),
# and events waiting in Gradio's queue before new ones are refused.
ACTION_CONCURRENCY_LIMIT = 16
QUEUE_MAX_EVENTS = 512

__all__ = ["UILimits", "build_blocks"]


def build_blocks(services: Services, limits: UILimits, *, storage_secret: str) -> gr.Blocks:
    with gr.Blocks(
        title=PAGE_TITLE,
        fill_width=True,
        analytics_enabled=False,
        # Gradio's cached copies of served files (the CSV exports): checked every 10 minutes,
        # deleted after an hour.
        delete_cache=(600, 3600),
    ) as blocks:
        session = gr.State(UISession())
        stored_refresh_token = gr.BrowserState(
            "", storage_key=BROWSER_STORAGE_KEY, secret=storage_secret
        )
        conversation_id = gr.State(None)
        header = build_header()
        signin = SignInScreen(services)
        with gr.Column(visible=False, elem_id="lc-app") as app_view, gr.Tabs(elem_id="app-tabs"):
            chat = ChatTab(services, limits, conversation_id)
            account = AccountTab(services)
            admin = AdminTab(services)
        frame = PageFrame(
            session=session,
            stored_refresh_token=stored_refresh_token,
            header=header,
            views=views_update(services),
            view_outputs=[
                signin.view,
                app_view,
                header.account_bar,
                admin.tab,
                header.user_label,
                header.balance_badge,
                signin.notice,
                stored_refresh_token,
                chat.alert_notice,
                chat.alert_ids,
            ],
        )
        # Page load: resume from browser storage, then show the right screen.
        loaded = frame.refresh_views(signin.wire_resume(blocks, frame))
        chat.chain_open(loaded, frame, with_models=True)
        chat.chain_open(signin.wire(frame), frame, with_models=False)
        chat.chain_clear(signin.wire_logout(frame))
        for action in [*chat.wire(frame), *account.wire(frame), *admin.wire(frame)]:
            frame.refresh_views(action)
    blocks.queue(max_size=QUEUE_MAX_EVENTS, default_concurrency_limit=ACTION_CONCURRENCY_LIMIT)
    built: gr.Blocks = blocks
    return built
