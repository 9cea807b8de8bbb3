"""The Admin tab's money tools: refund a reply (request id, credits, reason) and the usage
table per UTC day, user (or API key) and model with its CSV download. Both go through the same admin
service as the API, so the admin check, the ledger's refund rule and the CSV escaping hold
here too. `build` places the components; `wire` connects them."""

from __future__ import annotations

import uuid
from typing import Any

import gradio as gr

from ledger.errors import LedgerError
from web.domain.admin.refunds import MAX_REASON_CHARS, RefundRequest
from web.domain.admin.usage import USAGE_CSV_COLUMNS, AdminUsageReport, usage_csv
from web.domain.admin.usage_keys import (
    KEY_USAGE_CSV_COLUMNS,
    KeyUsageReport,
    key_usage_csv,
    key_usage_table,
)
from web.errors import ServiceError
from web.services import Services
from web.ui.export_files import private_folder, schedule_sweep, sweep
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import credits_label, notice_html

BY_USER = "user"
BY_KEY = "key"


def _new_key() -> str:
    return uuid.uuid4().hex


def refund_problems(request_id: Any, credits: Any, reason: Any) -> list[str]:
    """What is wrong with the refund form, in words (empty: fine)."""
    problems = []
    if not str(request_id or "").strip():
        problems.append("give the reply's request id")
    if credits not in (None, "") and (
        not isinstance(credits, int | float) or credits != int(credits) or credits < 1
    ):
        problems.append("credits must be a whole number of 1 or more (empty: all)")
    text = str(reason or "").strip()
    if not text or len(text) > MAX_REASON_CHARS:
        problems.append(f"give a reason (1-{MAX_REASON_CHARS} characters)")
    return problems


class AdminBilling:
    def __init__(self, services: Services) -> None:
        self._services = services

    def build(self) -> None:
        gr.Markdown("### Refund a reply")
        with gr.Row(equal_height=True):
            self.refund_request = gr.Textbox(label="Request id", elem_id="refund-request")
            self.refund_credits = gr.Number(label="Credits (empty: all)", elem_id="refund-credits")
            self.refund_reason = gr.Textbox(
                label="Reason", max_length=MAX_REASON_CHARS, elem_id="refund-reason"
            )
        self.refund_key = gr.State(_new_key)
        self.refund_button = gr.Button("Refund", variant="stop", elem_id="refund-button")
        self.refund_notice = gr.HTML("", elem_id="refund-notice")
        gr.Markdown("### Usage per day, user or API key, and model")
        with gr.Row(equal_height=True):
            self.usage_user = gr.Textbox(label="User (empty: all)", elem_id="usage-user")
            self.usage_by = gr.Radio(
                choices=[("user", BY_USER), ("API key", BY_KEY)],
                value=BY_USER,
                label="One line per",
                elem_id="usage-by",
            )
            self.usage_button = gr.Button("Show usage", elem_id="usage-button")
            self.usage_csv_button = gr.Button("Download CSV", elem_id="usage-csv-button")
        self.usage_table = gr.Dataframe(
            headers=list(USAGE_CSV_COLUMNS), interactive=False, elem_id="usage-table"
        )
        self.usage_file = gr.File(label="Usage CSV", visible=False, elem_id="usage-file")
        self.usage_notice = gr.HTML("", elem_id="usage-notice")

    def wire(self, session: Any) -> list[Any]:
        refunded = self.refund_button.click(
            self.refund,
            [
                session,
                self.refund_request,
                self.refund_credits,
                self.refund_reason,
                self.refund_key,
            ],
            [self.refund_notice, self.refund_key],
        )
        shown = self.usage_button.click(
            self.usage,
            [session, self.usage_user, self.usage_by],
            [self.usage_table, self.usage_notice],
        )
        exported = self.usage_csv_button.click(
            self.usage_file_for,
            [session, self.usage_user, self.usage_by],
            [self.usage_file, self.usage_notice],
        )
        return [refunded, shown, exported]

    async def refund(
        self, session: UISession, request_id: Any, credits: Any, reason: Any, key: str
    ) -> tuple[str, str]:
        """Refund; the form's key makes a double click refund once. Returns (notice, key)."""
        problems = refund_problems(request_id, credits, reason)
        if problems:
            return notice_html("error", "; ".join(problems).capitalize() + "."), key
        data = RefundRequest(
            request_id=str(request_id).strip(),
            reason=str(reason).strip(),
            credits=None if credits in (None, "") else int(credits),
        )
        try:
            caller = await identity(session, self._services.accounts)
            result = await self._services.admin.refund(caller, data, idempotency_key=key)
        except SessionEnded as ended:
            return notice_html("error", ended.message), key
        except (ServiceError, LedgerError) as error:
            return notice_html("error", error.message), key
        return (
            notice_html(
                "success",
                f"Refunded {credits_label(result.credits)} to {result.username} "
                f"({result.refunded_total} of {result.captured} refunded in all).",
            ),
            _new_key(),
        )

    async def _report(
        self, session: UISession, user: Any, by: Any
    ) -> AdminUsageReport | KeyUsageReport:
        caller = await identity(session, self._services.accounts)
        name = str(user or "").strip() or None
        if by == BY_KEY:
            return await self._services.admin.key_usage(caller, username=name)
        return await self._services.admin.usage(caller, username=name)

    async def usage(self, session: UISession, user: Any, by: Any = BY_USER) -> tuple[Any, str]:
        """The usage table per user or per API key. Returns (table, notice)."""
        try:
            report = await self._report(session, user, by)
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message)
        if isinstance(report, KeyUsageReport):
            table = gr.Dataframe(value=key_usage_table(report), headers=list(KEY_USAGE_CSV_COLUMNS))
        else:
            rows = [[getattr(row, c) for c in USAGE_CSV_COLUMNS] for row in report.rows]
            rows.append(
                [
                    "total",
                    "",
                    "",
                    report.total_requests,
                    report.total_prompt_tokens,
                    report.total_completion_tokens,
                    report.total_credits,
                ]
            )
            table = gr.Dataframe(value=rows, headers=list(USAGE_CSV_COLUMNS))
        return table, notice_html("success", f"Usage {report.since} to {report.until} (UTC).")

    async def usage_file_for(
        self, session: UISession, user: Any, by: Any = BY_USER
    ) -> tuple[Any, str]:
        try:
            report = await self._report(session, user, by)
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message)
        ttl_s = self._services.settings.server.csv_export_ttl_s
        sweep(ttl_s)
        schedule_sweep(ttl_s)
        if isinstance(report, KeyUsageReport):
            path = private_folder() / f"usage-keys-{uuid.uuid4().hex[:8]}.csv"
            path.write_text(key_usage_csv(report), encoding="utf-8")
        else:
            path = private_folder() / f"usage-{uuid.uuid4().hex[:8]}.csv"
            path.write_text(usage_csv(report), encoding="utf-8")
        return gr.update(value=str(path), visible=True), notice_html(
            "success", "Usage CSV ready: download it below."
        )
