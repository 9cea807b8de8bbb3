"""The Account tab's layout and wiring: balance cards, the history (replies and top-ups, or all
ledger events) in pages with its CSV export, prices, usage per day, and API keys. Each notice
sits under the controls that caused it. What the controls do lives in
`web.ui.account.AccountActions`; this module arranges the components and connects them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from web.services import Services
from web.ui.account import AccountActions
from web.ui.account_text import (
    EVENT_COLUMNS,
    HISTORY_COLUMNS,
    HISTORY_VIEWS,
    KEY_COLUMNS,
    SUMMARY_VIEW,
)
from web.ui.alerts import AlertActions
from web.ui.frame import PageFrame
from web.ui.session import UISession


class AccountTab:
    """The Account tab, built into the enclosing `gr.Tabs` when constructed."""

    def __init__(self, services: Services) -> None:
        self._account = AccountActions(services)
        self._alerts = AlertActions(services)
        with gr.Tab("Account", id="account", elem_id="account-tab") as self.tab:
            self.balance_cards = gr.HTML("", elem_id="balance-cards")
            self._build_history()
            gr.Markdown("### Prices")
            self.prices = gr.HTML("", elem_id="prices")
            self._build_usage()
            self._build_keys()

    def _build_history(self) -> None:
        gr.Markdown("### History")
        self.history_view = gr.Radio(
            list(HISTORY_VIEWS),
            value=SUMMARY_VIEW,
            show_label=False,
            container=False,
            elem_id="history-view",
        )
        self.history_table = gr.Dataframe(
            headers=HISTORY_COLUMNS,
            interactive=False,
            elem_id="history-table",
            wrap=True,
            # Fixed shares, so the Amount column is never pushed behind a sideways scroll.
            column_widths=["28%", "50%", "22%"],
        )
        self.events_table = gr.Dataframe(
            headers=EVENT_COLUMNS,
            interactive=False,
            elem_id="events-table",
            wrap=True,
            visible=False,
        )
        with gr.Row(elem_id="history-controls"):
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
        self.history_notice = gr.HTML("", elem_id="history-notice")
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
            self.key_budget = gr.Number(
                label="Monthly budget of the new key (credits; empty: none)",
                value=None,
                minimum=0,
                precision=0,
                elem_id="key-budget",
                scale=2,
            )
            self.create_key_button = gr.Button("Create key", elem_id="create-key", scale=1)
        self.key_create_notice = gr.HTML("", elem_id="key-create-notice")
        self.key_secret = gr.Textbox(
            label="Your new key (shown once, copy it now)",
            visible=False,
            interactive=False,
            buttons=["copy"],
            elem_id="key-secret",
        )
        # Which key's secret the box shows: revoking that key clears the box.
        self.shown_key_id = gr.State(None)
        self.keys_table = gr.Dataframe(
            headers=KEY_COLUMNS, interactive=False, elem_id="keys-table", wrap=True
        )
        with gr.Row(equal_height=True):
            self.revoke_choice = gr.Dropdown(
                choices=[], label="Key to revoke", elem_id="revoke-choice", scale=3
            )
            self.revoke_button = gr.Button("Revoke", variant="stop", elem_id="revoke-key", scale=1)
        self.key_revoke_notice = gr.HTML("", elem_id="key-revoke-notice")
        gr.Markdown("### Spending cap")
        with gr.Row(equal_height=True):
            self.cap_credits = gr.Number(
                label="My monthly spending cap (credits; empty: none)",
                value=None,
                minimum=0,
                precision=0,
                elem_id="cap-credits",
                scale=3,
            )
            self.cap_button = gr.Button("Set cap", elem_id="set-cap", scale=1)
        self.cap_notice = gr.HTML("", elem_id="cap-notice")
        gr.Markdown("### Alerts")
        with gr.Row(equal_height=True):
            self.alert_low_balance = gr.Number(
                label="Alert when my balance falls to (credits; empty: off)",
                value=None,
                precision=0,
                elem_id="alert-low-balance",
                scale=2,
            )
            self.alert_budget_percent = gr.Number(
                label="Alert when this % of a budget is used (empty: off)",
                value=None,
                precision=0,
                elem_id="alert-budget-percent",
                scale=2,
            )
            self.alert_button = gr.Button("Save alerts", elem_id="save-alerts", scale=1)
        self.alert_notice = gr.HTML("", elem_id="alerts-notice")

    def wire(self, frame: PageFrame) -> list[Any]:
        """Connect the tab's controls. Returns the events after which the page refreshes
        `views`."""
        session = frame.session
        overview_outputs = [
            frame.balance_badge,
            self.balance_cards,
            self.history_table,
            self.events_table,
            self.history_page,
            self.prices,
            self.credits_plot,
            self.tokens_plot,
            self.keys_table,
            self.revoke_choice,
            self.history_notice,
        ]
        frame.refresh_views(
            self.tab.select(self._account.overview, [session, self.history_view], overview_outputs)
        )
        account = self._account

        def turner(step: int) -> Any:
            async def turn(state: UISession, page_label: str, view: str) -> tuple[Any, ...]:
                return await account.turn_page(state, page_label, view, step)

            return turn

        page_inputs = [session, self.history_page, self.history_view]
        page_outputs = [
            self.history_table,
            self.events_table,
            self.history_page,
            self.history_notice,
        ]
        newer = self.history_prev.click(turner(-1), page_inputs, page_outputs)
        older = self.history_next.click(turner(+1), page_inputs, page_outputs)
        switched = self.history_view.change(turner(0), page_inputs, page_outputs)
        exported = self.csv_button.click(
            account.export_csv, [session], [self.csv_file, self.history_notice]
        )
        key_created = self.create_key_button.click(
            account.create_key,
            [session, self.key_name, self.key_budget],
            [
                self.key_secret,
                self.shown_key_id,
                self.keys_table,
                self.revoke_choice,
                self.key_create_notice,
            ],
        ).then(lambda: "", None, self.key_revoke_notice)
        key_revoked = self.revoke_button.click(
            account.revoke_key,
            [session, self.revoke_choice, self.shown_key_id],
            [
                self.key_secret,
                self.shown_key_id,
                self.keys_table,
                self.revoke_choice,
                self.key_revoke_notice,
            ],
        ).then(lambda: "", None, self.key_create_notice)
        self.cap_button.click(account.set_cap, [session, self.cap_credits], [self.cap_notice])
        self.tab.select(
            self._alerts.thresholds,
            [session],
            [self.alert_low_balance, self.alert_budget_percent],
            show_progress="hidden",
        )
        alerts_saved = self.alert_button.click(
            self._alerts.save,
            [session, self.alert_low_balance, self.alert_budget_percent],
            [self.alert_notice],
        )
        return [newer, older, switched, exported, key_created, key_revoked, alerts_saved]
