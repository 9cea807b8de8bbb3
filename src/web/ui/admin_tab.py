"""The Admin tab's layout and wiring (shown to admins only): the user list, top-ups, disabling
and enabling users, invite codes, the models with the operator's detail and the ledger audit.
Each notice sits under the button that caused it. What the controls do lives in
`web.ui.admin.AdminActions`; this module arranges the components and connects them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from web.services import Services
from web.ui.admin import USER_COLUMNS, AdminActions, new_request_key
from web.ui.admin_billing import AdminBilling
from web.ui.frame import PageFrame


class AdminTab:
    """The Admin tab, built (hidden) into the enclosing `gr.Tabs` when constructed; `views`
    shows it to admins."""

    def __init__(self, services: Services) -> None:
        self._admin = AdminActions(services)
        with gr.Tab("Admin", id="admin", visible=False, elem_id="admin-tab") as self.tab:
            gr.Markdown("### Users")
            self.users_table = gr.Dataframe(
                headers=USER_COLUMNS, interactive=False, elem_id="users-table"
            )
            self.refresh_users = gr.Button("Refresh users", size="sm", elem_id="refresh-users")
            self.users_notice = gr.HTML("", elem_id="users-notice")
            self._build_users()
            self._build_invites()
            self._billing = AdminBilling(services)
            self._billing.build()
            gr.Markdown("### Models")
            self.models = gr.HTML("", elem_id="admin-models")
            gr.Markdown("### Ledger audit")
            self.audit_button = gr.Button("Run audit", elem_id="audit-button")
            self.audit_report = gr.HTML("", elem_id="audit-report")

    def _build_users(self) -> None:
        gr.Markdown("### Top up credits")
        with gr.Row(equal_height=True):
            self.topup_user = gr.Dropdown(choices=[], label="User", elem_id="topup-user")
            # Checked by the handler (whole number, 1 or more), which says what is wrong next
            # to the button; a component-level minimum would fail the event without a word.
            self.topup_amount = gr.Number(label="Credits", elem_id="topup-amount")
            self.topup_note = gr.Textbox(
                label="Note", value="admin top-up", max_length=200, elem_id="topup-note"
            )
        self.topup_key = gr.State(new_request_key)
        self.topup_button = gr.Button("Add credits", variant="primary", elem_id="topup-button")
        self.topup_notice = gr.HTML("", elem_id="topup-notice")
        with gr.Row(equal_height=True):
            self.disable_button = gr.Button(
                "Disable chosen user", variant="stop", elem_id="disable-user"
            )
            self.enable_button = gr.Button("Enable chosen user", elem_id="enable-user")
        self.user_action_notice = gr.HTML("", elem_id="user-action-notice")

    def _build_invites(self) -> None:
        gr.Markdown("### Invite codes")
        with gr.Row(equal_height=True):
            self.invite_note = gr.Textbox(
                label="Note", max_length=200, elem_id="invite-note", scale=2
            )
            self.invite_code = gr.Textbox(
                label="Code (shown once)", interactive=False, elem_id="invite-code"
            )
        self.invite_button = gr.Button("Create invite", elem_id="invite-button")
        self.invite_notice = gr.HTML("", elem_id="invite-notice")

    def wire(self, frame: PageFrame) -> list[Any]:
        """Connect the tab's controls. Returns the events after which the page refreshes
        `views`."""
        session = frame.session
        admin = self._admin
        users_listed = gr.on(
            [self.tab.select, self.refresh_users.click],
            admin.users,
            [session],
            [self.users_table, self.topup_user, self.users_notice],
        )
        self.tab.select(admin.models, [session], [self.models])
        topped_up = self.topup_button.click(
            admin.top_up,
            [session, self.topup_user, self.topup_amount, self.topup_note, self.topup_key],
            [self.users_table, self.topup_notice, self.topup_key],
        )
        disabled = self.disable_button.click(
            admin.disable, [session, self.topup_user], [self.users_table, self.user_action_notice]
        )
        enabled = self.enable_button.click(
            admin.enable, [session, self.topup_user], [self.users_table, self.user_action_notice]
        )
        invited = self.invite_button.click(
            admin.create_invite,
            [session, self.invite_note],
            [self.invite_code, self.invite_notice],
        )
        audited = self.audit_button.click(admin.audit, [session], [self.audit_report])
        money = self._billing.wire(session)
        return [users_listed, topped_up, disabled, enabled, invited, audited, *money]
