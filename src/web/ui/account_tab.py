"""The Account tab's layout and wiring: balance cards, the paged transaction history with its
CSV export, usage per day, and API keys. What the controls do lives in
`web.ui.account.AccountActions`; this module arranges the components and connects them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from web.services import Services
from web.ui.account import HISTORY_COLUMNS, KEY_COLUMNS, AccountActions
from web.ui.frame import PageFrame
from web.ui.session import UISession


class AccountTab:
    """The Account tab, built into the enclosing `gr.Tabs` when constructed."""

    def __init__(self, services: Services) -> None:
        self._account = AccountActions(services)
        with gr.Tab("Account", id="account", elem_id="account-tab") as self.tab:
            self.notice = gr.HTML("", elem_id="account-notice")
            self.balance_cards = gr.HTML("", elem_id="balance-cards")
            self._build_history()
            self._build_usage()
            self._build_keys()

    def _build_history(self) -> None:
        gr.Markdown("### Transactions")
        self.history_table = gr.Dataframe(
            headers=HISTORY_COLUMNS, interactive=False, elem_id="history-table", wrap=True
        )
        with gr.Row():
            self.history_prev = gr.Button("← Newer", size="sm", elem_id="history-prev")
            self.history_page = gr.Textbox(
                "Page 1",
                show_label=False,
                interactive=False,
                elem_id="history-page",
                container=False,
            )
            self.history_next = gr.Button("Older →", size="sm", elem_id="history-next")
            self.csv_button = gr.Button("Export CSV", size="sm", elem_id="history-csv")
        self.csv_file = gr.File(label="CSV export", visible=False, elem_id="csv-file")

    def _build_usage(self) -> None:
        gr.Markdown("### Usage per day (last 30 days)")
        with gr.Row():
            self.credits_plot = gr.BarPlot(
                x="day", y="credits", color="model", title="Credits per day", elem_id="credits-plot"
            )
            self.tokens_plot = gr.BarPlot(
                x="day", y="tokens", color="model", title="Tokens per day", elem_id="tokens-plot"
            )

    def _build_keys(self) -> None:
        gr.Markdown("### API keys")
        with gr.Row(equal_height=True):
            self.key_name = gr.Textbox(
                label="New key name", value="default", max_length=100, elem_id="key-name", scale=3
            )
            self.create_key_button = gr.Button("Create key", elem_id="create-key", scale=1)
        self.key_secret = gr.Textbox(
            label="Your new key (shown once, copy it now)",
            visible=False,
            interactive=False,
            buttons=["copy"],
            elem_id="key-secret",
        )
        self.keys_table = gr.Dataframe(headers=KEY_COLUMNS, interactive=False, elem_id="keys-table")
        with gr.Row(equal_height=True):
            self.revoke_choice = gr.Dropdown(
                choices=[], label="Key to revoke", elem_id="revoke-choice", scale=3
            )
            self.revoke_button = gr.Button("Revoke", variant="stop", elem_id="revoke-key", scale=1)

    def wire(self, frame: PageFrame) -> list[Any]:
        """Connect the tab's controls. Returns the events after which the page refreshes
        `views`."""
        session = frame.session
        overview_outputs = [
            frame.balance_badge,
            self.balance_cards,
            self.history_table,
            self.history_page,
            self.credits_plot,
            self.tokens_plot,
            self.keys_table,
            self.revoke_choice,
            self.notice,
        ]
        frame.refresh_views(self.tab.select(self._account.overview, [session], overview_outputs))
        account = self._account

        async def newer_page(state: UISession, page_label: str) -> tuple[Any, ...]:
            return await account.turn_page(state, page_label, -1)

        async def older_page(state: UISession, page_label: str) -> tuple[Any, ...]:
            return await account.turn_page(state, page_label, +1)

        page_outputs = [self.history_table, self.history_page, self.notice]
        newer = self.history_prev.click(newer_page, [session, self.history_page], page_outputs)
        older = self.history_next.click(older_page, [session, self.history_page], page_outputs)
        exported = self.csv_button.click(
            account.export_csv, [session], [self.csv_file, self.notice]
        )
        key_created = self.create_key_button.click(
            account.create_key,
            [session, self.key_name],
            [self.key_secret, self.keys_table, self.revoke_choice, self.notice],
        )
        key_revoked = self.revoke_button.click(
            account.revoke_key,
            [session, self.revoke_choice],
            [self.keys_table, self.revoke_choice, self.notice],
        )
        return [newer, older, exported, key_created, key_revoked]
