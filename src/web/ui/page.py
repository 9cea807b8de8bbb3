"""The Gradio page: its layout (header with balance, sign-in screen, chat, account and admin
tabs) and which action each control triggers. Behaviour lives in the `*Actions` classes; this
module only arranges components and wires events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from web.services import Services
from web.settings import MAX_PASSWORD_CHARS
from web.ui.account import HISTORY_COLUMNS, KEY_COLUMNS, AccountActions
from web.ui.admin import USER_COLUMNS, AdminActions, new_request_key
from web.ui.chat import TEMPERATURE_MAX, TEMPERATURE_MIN, ChatActions, model_choices
from web.ui.session import SessionEnded, UISession, identity
from web.ui.signin import INVITE_HELP, REGISTRATION_CLOSED_TEXT, SignInActions, stored_token
from web.ui.text import balance_html, notice_html

# Encrypted browser storage for the refresh token; the key name is stable across restarts.
BROWSER_STORAGE_KEY = "ledgerchat-session"
PAGE_TITLE = "ledgerchat"
# Replies streaming at once through the page; the engine's own queue limit applies behind it.
CHAT_CONCURRENCY_LIMIT = 64
# Other page actions running at once (Gradio's default would be one at a time for everyone),
# and events waiting in Gradio's queue before new ones are refused.
ACTION_CONCURRENCY_LIMIT = 16
QUEUE_MAX_EVENTS = 512


@dataclass(frozen=True)
class UILimits:
    """Limits the page shows in its controls; the services enforce them again."""

    default_max_tokens: int
    max_tokens_limit: int
    max_message_chars: int


def build_blocks(services: Services, limits: UILimits, *, storage_secret: str) -> gr.Blocks:
    chat = ChatActions(services, limits.max_tokens_limit)
    account = AccountActions(services)
    admin = AdminActions(services)
    signin = SignInActions(services)

    async def views(session: UISession) -> tuple[Any, ...]:
        """Show the sign-in screen or the app. Returns (signin, app, account bar, admin tab,
        user label, balance badge, sign-in notice, stored token)."""
        if session.signed_in:
            try:
                caller = await identity(session, services.accounts)
                balance = await services.billing.balance(caller)
            except SessionEnded:
                pass
            else:
                return (
                    gr.update(visible=False),
                    gr.update(visible=True),
                    gr.update(visible=True),
                    gr.update(visible=session.is_admin),
                    f"Signed in as **{caller.username}**" + (" (admin)" if caller.is_admin else ""),
                    balance_html(balance.available, balance.held),
                    notice_html("info", ""),
                    stored_token(session),
                )
        return (
            gr.update(visible=True),
            gr.update(visible=False),
            gr.update(visible=False),
            gr.update(visible=False),
            "",
            "",
            notice_html("warning", session.ended_reason) if session.ended_reason else "",
            "",
        )

    async def conversations_on_open(session: UISession) -> Any:
        return await chat.refresh_conversations(session, None)

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

        with gr.Row(elem_id="lc-header", equal_height=True):
            gr.Markdown("## ledgerchat", elem_id="lc-brand")
            with gr.Row(visible=False, elem_id="lc-account-bar") as account_bar:
                user_label = gr.Markdown("", elem_id="lc-user")
                balance_badge = gr.HTML("", elem_id="lc-balance")
                logout_button = gr.Button(
                    "Sign out",
                    elem_id="logout-button",
                    size="sm",
                    variant="secondary",
                    scale=0,
                    min_width=100,
                )

        # -- sign-in screen ---------------------------------------------------------------
        with gr.Column(visible=True, elem_id="lc-signin") as signin_view:
            signin_notice = gr.HTML("", elem_id="signin-notice")
            with gr.Tabs(elem_id="signin-tabs") as signin_tabs:
                with gr.Tab("Sign in", id="login", elem_id="login-tab"):
                    login_username = gr.Textbox(
                        label="Username or email", elem_id="login-username", max_length=320
                    )
                    login_password = gr.Textbox(
                        label="Password",
                        type="password",
                        elem_id="login-password",
                        max_length=MAX_PASSWORD_CHARS,
                    )
                    login_button = gr.Button("Sign in", variant="primary", elem_id="login-button")
                    login_notice = gr.HTML("", elem_id="login-notice")
                with gr.Tab("Create account", id="register", elem_id="register-tab"):
                    register_username = gr.Textbox(
                        label="Username",
                        elem_id="register-username",
                        max_length=50,
                        info="3-50 letters, digits, '_', '.' or '-'",
                    )
                    username_error = gr.HTML("", elem_id="register-username-error")
                    register_email = gr.Textbox(
                        label="Email", elem_id="register-email", max_length=320
                    )
                    email_error = gr.HTML("", elem_id="register-email-error")
                    register_password = gr.Textbox(
                        label="Password",
                        type="password",
                        elem_id="register-password",
                        max_length=MAX_PASSWORD_CHARS,
                    )
                    password_error = gr.HTML("", elem_id="register-password-error")
                    register_confirm = gr.Textbox(
                        label="Confirm password",
                        type="password",
                        elem_id="register-confirm",
                        max_length=MAX_PASSWORD_CHARS,
                    )
                    confirm_error = gr.HTML("", elem_id="register-confirm-error")
                    # The mode is read once at start-up, as the API reads it.
                    registration_mode = services.settings.auth.registration_mode
                    register_invite = gr.Textbox(
                        label="Invite code",
                        elem_id="register-invite",
                        max_length=100,
                        info=INVITE_HELP,
                        visible=registration_mode == "invite",
                    )
                    if registration_mode == "closed":
                        gr.HTML(
                            notice_html("info", REGISTRATION_CLOSED_TEXT),
                            elem_id="register-closed",
                        )
                    register_button = gr.Button(
                        "Create account",
                        variant="primary",
                        elem_id="register-button",
                        visible=registration_mode != "closed",
                    )
                    register_notice = gr.HTML("", elem_id="register-notice")

        # -- the app ----------------------------------------------------------------------
        # Nested `with` mirrors the page layout; merging them would hide it.
        with gr.Column(visible=False, elem_id="lc-app") as app_view:  # noqa: SIM117
            with gr.Tabs(elem_id="app-tabs"):
                with gr.Tab("Chat", id="chat", elem_id="chat-tab"):  # noqa: SIM117
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=1, min_width=220, elem_id="lc-sidebar"):
                            new_chat_button = gr.Button(
                                "+ New chat", elem_id="new-chat", variant="secondary"
                            )
                            conversation_list = gr.Radio(
                                choices=[], label="Conversations", elem_id="conversation-list"
                            )
                            with gr.Accordion(
                                "Rename or delete", open=False, elem_id="conversation-tools"
                            ):
                                rename_title = gr.Textbox(
                                    label="Title", max_length=200, elem_id="rename-title"
                                )
                                rename_button = gr.Button(
                                    "Rename", size="sm", elem_id="rename-button"
                                )
                                delete_button = gr.Button(
                                    "Delete conversation",
                                    size="sm",
                                    variant="stop",
                                    elem_id="delete-button",
                                )
                        with gr.Column(scale=4, min_width=320):
                            model_select = gr.Dropdown(
                                choices=[],
                                label="Model (price per reply)",
                                elem_id="model-select",
                                interactive=True,
                            )
                            chatbot = gr.Chatbot(
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
                            chat_notice = gr.HTML("", elem_id="chat-notice")
                            with gr.Row(equal_height=True):
                                message_box = gr.Textbox(
                                    placeholder="Write a message…",
                                    show_label=False,
                                    lines=2,
                                    max_lines=8,
                                    scale=6,
                                    elem_id="chat-input",
                                    max_length=limits.max_message_chars,
                                )
                                send_button = gr.Button(
                                    "Send",
                                    variant="primary",
                                    scale=1,
                                    min_width=80,
                                    elem_id="send-button",
                                )
                                stop_button = gr.Button(
                                    "Stop",
                                    variant="stop",
                                    scale=1,
                                    min_width=80,
                                    elem_id="stop-button",
                                )
                            with gr.Accordion("Sampling settings", open=False, elem_id="sampling"):
                                temperature = gr.Number(
                                    value=1.0,
                                    label="Temperature",
                                    info=f"{TEMPERATURE_MIN}–{TEMPERATURE_MAX}; 0 is greedy",
                                    elem_id="temperature",
                                )
                                max_tokens = gr.Number(
                                    value=limits.default_max_tokens,
                                    label="Max new tokens",
                                    info=f"1–{limits.max_tokens_limit}; the hold is priced "
                                    "for this many",
                                    precision=0,
                                    elem_id="max-tokens",
                                )
                with gr.Tab("Account", id="account", elem_id="account-tab") as account_tab:
                    account_notice = gr.HTML("", elem_id="account-notice")
                    balance_cards = gr.HTML("", elem_id="balance-cards")
                    gr.Markdown("### Transactions")
                    history_table = gr.Dataframe(
                        headers=HISTORY_COLUMNS,
                        interactive=False,
                        elem_id="history-table",
                        wrap=True,
                    )
                    with gr.Row():
                        history_prev = gr.Button("← Newer", size="sm", elem_id="history-prev")
                        history_page = gr.Textbox(
                            "Page 1",
                            show_label=False,
                            interactive=False,
                            elem_id="history-page",
                            container=False,
                        )
                        history_next = gr.Button("Older →", size="sm", elem_id="history-next")
                        csv_button = gr.Button("Export CSV", size="sm", elem_id="history-csv")
                    csv_file = gr.File(label="CSV export", visible=False, elem_id="csv-file")
                    gr.Markdown("### Usage per day (last 30 days)")
                    with gr.Row():
                        credits_plot = gr.BarPlot(
                            x="day",
                            y="credits",
                            color="model",
                            title="Credits per day",
                            elem_id="credits-plot",
                        )
                        tokens_plot = gr.BarPlot(
                            x="day",
                            y="tokens",
                            color="model",
                            title="Tokens per day",
                            elem_id="tokens-plot",
                        )
                    gr.Markdown("### API keys")
                    with gr.Row(equal_height=True):
                        key_name = gr.Textbox(
                            label="New key name",
                            value="default",
                            max_length=100,
                            elem_id="key-name",
                            scale=3,
                        )
                        create_key_button = gr.Button("Create key", elem_id="create-key", scale=1)
                    key_secret = gr.Textbox(
                        label="Your new key (shown once, copy it now)",
                        visible=False,
                        interactive=False,
                        buttons=["copy"],
                        elem_id="key-secret",
                    )
                    keys_table = gr.Dataframe(
                        headers=KEY_COLUMNS, interactive=False, elem_id="keys-table"
                    )
                    with gr.Row(equal_height=True):
                        revoke_choice = gr.Dropdown(
                            choices=[], label="Key to revoke", elem_id="revoke-choice", scale=3
                        )
                        revoke_button = gr.Button(
                            "Revoke", variant="stop", elem_id="revoke-key", scale=1
                        )
                with gr.Tab("Admin", id="admin", visible=False, elem_id="admin-tab") as admin_tab:
                    admin_notice = gr.HTML("", elem_id="admin-notice")
                    users_table = gr.Dataframe(
                        headers=USER_COLUMNS, interactive=False, elem_id="users-table"
                    )
                    refresh_users = gr.Button("Refresh users", size="sm", elem_id="refresh-users")
                    gr.Markdown("### Top up credits")
                    with gr.Row(equal_height=True):
                        topup_user = gr.Dropdown(choices=[], label="User", elem_id="topup-user")
                        topup_amount = gr.Number(
                            label="Credits", precision=0, minimum=1, elem_id="topup-amount"
                        )
                        topup_note = gr.Textbox(
                            label="Note", value="admin top-up", max_length=200, elem_id="topup-note"
                        )
                    topup_key = gr.State(new_request_key)
                    topup_button = gr.Button(
                        "Add credits", variant="primary", elem_id="topup-button"
                    )
                    with gr.Row(equal_height=True):
                        disable_button = gr.Button(
                            "Disable chosen user", variant="stop", elem_id="disable-user"
                        )
                        enable_button = gr.Button("Enable chosen user", elem_id="enable-user")
                    gr.Markdown("### Invite codes")
                    with gr.Row(equal_height=True):
                        invite_note = gr.Textbox(
                            label="Note", max_length=200, elem_id="invite-note", scale=2
                        )
                        invite_code = gr.Textbox(
                            label="Code (shown once)", interactive=False, elem_id="invite-code"
                        )
                    invite_button = gr.Button("Create invite", elem_id="invite-button")
                    gr.Markdown("### Ledger audit")
                    audit_button = gr.Button("Run audit", elem_id="audit-button")
                    audit_report = gr.HTML("", elem_id="audit-report")

        view_outputs = [
            signin_view,
            app_view,
            account_bar,
            admin_tab,
            user_label,
            balance_badge,
            signin_notice,
            stored_refresh_token,
        ]
        account_outputs = [
            balance_badge,
            balance_cards,
            history_table,
            history_page,
            credits_plot,
            tokens_plot,
            keys_table,
            revoke_choice,
            account_notice,
        ]

        def load_models() -> Any:
            return gr.update(choices=model_choices(chat.models()), value=chat.default_model_id())

        # -- page load: resume from browser storage, then show the right screen -----------
        blocks.load(
            signin.resume,
            [session, stored_refresh_token],
            [stored_refresh_token],
            show_progress="hidden",
        ).then(views, [session], view_outputs, show_progress="hidden").then(
            load_models, None, [model_select], show_progress="hidden"
        ).then(conversations_on_open, [session], [conversation_list], show_progress="hidden")

        # -- sign-in -----------------------------------------------------------------------
        login_event = gr.on(
            [login_button.click, login_password.submit],
            signin.login,
            [session, login_username, login_password],
            [login_notice, stored_refresh_token, login_password],
        )
        login_event.then(views, [session], view_outputs, show_progress="hidden").then(
            conversations_on_open, [session], [conversation_list], show_progress="hidden"
        )
        register_button.click(
            signin.register,
            [
                register_username,
                register_email,
                register_password,
                register_confirm,
                register_invite,
            ],
            [
                username_error,
                email_error,
                password_error,
                confirm_error,
                register_notice,
                login_username,
            ],
        ).then(
            lambda notice: (
                gr.Tabs(selected="login") if "lc-notice-success" in notice else gr.skip()
            ),
            [register_notice],
            [signin_tabs],
        ).then(
            lambda notice: notice if "lc-notice-success" in notice else gr.skip(),
            [register_notice],
            [login_notice],
        )
        logout_button.click(signin.logout, [session], [stored_refresh_token]).then(
            views, [session], view_outputs, show_progress="hidden"
        ).then(
            lambda: ([], None, gr.update(choices=[], value=None)),
            None,
            [chatbot, conversation_id, conversation_list],
        )

        # -- chat --------------------------------------------------------------------------
        send_event = gr.on(
            [send_button.click, message_box.submit],
            chat.send,
            [session, message_box, model_select, temperature, max_tokens, conversation_id, chatbot],
            [chatbot, message_box, chat_notice, balance_badge, conversation_id],
            concurrency_limit=CHAT_CONCURRENCY_LIMIT,
            show_progress="minimal",
            show_progress_on=[chatbot],
        )
        send_event.then(
            chat.refresh_conversations,
            [session, conversation_id],
            [conversation_list],
            show_progress="hidden",
        ).then(views, [session], view_outputs, show_progress="hidden")
        stop_button.click(chat.request_stop, [session], [chat_notice], queue=False)
        model_select.change(chat.check_model, [model_select], [model_select, chat_notice])
        new_chat_button.click(
            lambda: ([], None, gr.update(value=None), "", notice_html("info", "")),
            None,
            [chatbot, conversation_id, conversation_list, rename_title, chat_notice],
        )
        conversation_list.input(
            chat.open_conversation,
            [session, conversation_list],
            [chatbot, conversation_id, rename_title, chat_notice],
        ).then(views, [session], view_outputs, show_progress="hidden")
        renamed = rename_button.click(
            chat.rename,
            [session, conversation_id, rename_title],
            [conversation_list, chat_notice],
        )
        deleted = delete_button.click(
            chat.delete,
            [session, conversation_id],
            [conversation_list, chatbot, conversation_id, rename_title, chat_notice],
        )

        # -- account -----------------------------------------------------------------------
        account_tab.select(account.overview, [session], account_outputs).then(
            views, [session], view_outputs, show_progress="hidden"
        )

        async def newer_page(state: UISession, page_label: str) -> tuple[Any, ...]:
            return await account.turn_page(state, page_label, -1)

        async def older_page(state: UISession, page_label: str) -> tuple[Any, ...]:
            return await account.turn_page(state, page_label, +1)

        newer = history_prev.click(
            newer_page,
            [session, history_page],
            [history_table, history_page, account_notice],
        )
        older = history_next.click(
            older_page,
            [session, history_page],
            [history_table, history_page, account_notice],
        )
        exported = csv_button.click(account.export_csv, [session], [csv_file, account_notice])
        key_created = create_key_button.click(
            account.create_key,
            [session, key_name],
            [key_secret, keys_table, revoke_choice, account_notice],
        )
        key_revoked = revoke_button.click(
            account.revoke_key,
            [session, revoke_choice],
            [keys_table, revoke_choice, account_notice],
        )

        # -- admin -------------------------------------------------------------------------
        users_listed = gr.on(
            [admin_tab.select, refresh_users.click],
            admin.users,
            [session],
            [users_table, topup_user, admin_notice],
        )
        topped_up = topup_button.click(
            admin.top_up,
            [session, topup_user, topup_amount, topup_note, topup_key],
            [users_table, admin_notice, topup_key],
        )
        disabled = disable_button.click(
            admin.disable, [session, topup_user], [users_table, admin_notice]
        )
        enabled = enable_button.click(
            admin.enable, [session, topup_user], [users_table, admin_notice]
        )
        invited = invite_button.click(
            admin.create_invite, [session, invite_note], [invite_code, admin_notice]
        )
        audited = audit_button.click(admin.audit, [session], [audit_report, admin_notice])
        # Any action may have refreshed (rotated) the tokens or ended the session: keep the
        # browser's stored token current and show the sign-in screen when it ended.
        for action in (
            renamed,
            deleted,
            newer,
            older,
            exported,
            key_created,
            key_revoked,
            users_listed,
            topped_up,
            disabled,
            enabled,
            invited,
            audited,
        ):
            action.then(views, [session], view_outputs, show_progress="hidden")
    blocks.queue(max_size=QUEUE_MAX_EVENTS, default_concurrency_limit=ACTION_CONCURRENCY_LIMIT)
    built: gr.Blocks = blocks
    return built
