"""The sign-in screen's layout and wiring: the "Sign in" and "Create account" tabs shown while
nobody is signed in. What the buttons do lives in `web.ui.signin.SignInActions`; this module
arranges the fields and connects them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from web.services import Services
from web.settings import MAX_PASSWORD_CHARS
from web.ui.frame import PageFrame
from web.ui.signin import INVITE_HELP, REGISTRATION_CLOSED_TEXT, SignInActions
from web.ui.text import notice_html


class SignInScreen:
    """The sign-in screen, built into the enclosing Blocks when constructed."""

    def __init__(self, services: Services) -> None:
        self._signin = SignInActions(services)
        with gr.Column(visible=True, elem_id="lc-signin") as self.view:
            self.notice = gr.HTML("", elem_id="signin-notice")
            with gr.Tabs(elem_id="signin-tabs") as self.tabs:
                with gr.Tab("Sign in", id="login", elem_id="login-tab"):
                    self._build_login()
                with gr.Tab("Create account", id="register", elem_id="register-tab"):
                    # The mode is read once at start-up, as the API reads it.
                    self._build_register(services.settings.auth.registration_mode)

    def _build_login(self) -> None:
        self.login_username = gr.Textbox(
            label="Username or email", elem_id="login-username", max_length=320
        )
        self.login_password = gr.Textbox(
            label="Password",
            type="password",
            elem_id="login-password",
            max_length=MAX_PASSWORD_CHARS,
        )
        self.login_button = gr.Button("Sign in", variant="primary", elem_id="login-button")
        self.login_notice = gr.HTML("", elem_id="login-notice")

    def _build_register(self, registration_mode: str) -> None:
        self.register_username = gr.Textbox(
            label="Username",
            elem_id="register-username",
            max_length=50,
            info="3-50 letters, digits, '_', '.' or '-'",
        )
        self.username_error = gr.HTML("", elem_id="register-username-error")
        self.register_email = gr.Textbox(label="Email", elem_id="register-email", max_length=320)
        self.email_error = gr.HTML("", elem_id="register-email-error")
        self.register_password = gr.Textbox(
            label="Password",
            type="password",
            elem_id="register-password",
            max_length=MAX_PASSWORD_CHARS,
        )
        self.password_error = gr.HTML("", elem_id="register-password-error")
        self.register_confirm = gr.Textbox(
            label="Confirm password",
            type="password",
            elem_id="register-confirm",
            max_length=MAX_PASSWORD_CHARS,
        )
        self.confirm_error = gr.HTML("", elem_id="register-confirm-error")
        self.register_invite = gr.Textbox(
            label="Invite code",
            elem_id="register-invite",
            max_length=100,
            info=INVITE_HELP,
            visible=registration_mode == "invite",
        )
        if registration_mode == "closed":
            gr.HTML(notice_html("info", REGISTRATION_CLOSED_TEXT), elem_id="register-closed")
        self.register_button = gr.Button(
            "Create account",
            variant="primary",
            elem_id="register-button",
            visible=registration_mode != "closed",
        )
        self.register_notice = gr.HTML("", elem_id="register-notice")

    def wire_resume(self, blocks: Any, frame: PageFrame) -> Any:
        """The page-load event: resume the session from the browser-stored refresh token."""
        return blocks.load(
            self._signin.resume,
            [frame.session, frame.stored_refresh_token],
            [frame.stored_refresh_token],
            show_progress="hidden",
        )

    def wire(self, frame: PageFrame) -> Any:
        """Connect sign-in, registration and Sign out. Returns the sign-in event, which the
        page chains the app's first refresh after."""
        login_event = gr.on(
            [self.login_button.click, self.login_password.submit],
            self._signin.login,
            [frame.session, self.login_username, self.login_password],
            [self.login_notice, frame.stored_refresh_token, self.login_password],
        )
        signed_in = frame.refresh_views(login_event)
        self.register_button.click(
            self._signin.register,
            [
                self.register_username,
                self.register_email,
                self.register_password,
                self.register_confirm,
                self.register_invite,
            ],
            [
                self.username_error,
                self.email_error,
                self.password_error,
                self.confirm_error,
                self.register_notice,
                self.login_username,
            ],
        ).then(
            lambda notice: (
                gr.Tabs(selected="login") if "lc-notice-success" in notice else gr.skip()
            ),
            [self.register_notice],
            [self.tabs],
        ).then(
            lambda notice: notice if "lc-notice-success" in notice else gr.skip(),
            [self.register_notice],
            [self.login_notice],
        )
        return signed_in

    def wire_logout(self, frame: PageFrame) -> Any:
        """Sign out from the header's button. Returns the event, once the sign-in screen shows."""
        logged_out = frame.header.logout_button.click(
            self._signin.logout, [frame.session], [frame.stored_refresh_token]
        )
        return frame.refresh_views(logged_out)
