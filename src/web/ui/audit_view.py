"""The ledger audit as the admin page shows it: a summary line, one row per check (passed, or
how many violations, highlighted), the violations themselves, the totals and the accounts.
`report` is `ledger.audit.AuditReport.to_dict()`; every value is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The audit's checks and the violation kinds each one reports (ledger.audit flags them).
AUDIT_CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Every event row decodes", ("malformed_row", "unknown_account", "invalid_event")),
    ("Sequence numbers have no gaps", ("sequence_gap",)),
    ("Hash chain intact", ("chain_broken", "hash_mismatch")),
    ("Stored balances equal the replay", ("balance_mismatch",)),
    ("Available never negative", ("negative_available",)),
    ("Idempotency keys used once", ("duplicate_idempotency_key", "conflicting_idempotency_key")),
    ("No capture after a hold expired", ("capture_after_expiry",)),
    ("Refunds within what was taken", ("refund_target_invalid", "refund_exceeds_taken")),
    ("Snapshots equal the replay", ("snapshot_mismatch", "snapshot_beyond_log")),
    ("Account heads equal the replay", ("head_mismatch",)),
    ("Hold-expiry index equals the replay", ("hold_index_mismatch",)),
    ("Expired holds released by the sweeper", ("expired_hold_unreleased",)),
    ("Checkpoints: signatures valid, heads on the chain", ("checkpoint",)),
)
OTHER_CHECK = "Other findings"
TOTAL_NAMES = (
    ("issued", "Issued"),
    ("captured", "Captured"),
    ("charged", "Charged"),
    ("refunded", "Refunded"),
    ("released", "Released"),
    ("outstanding_holds", "Outstanding holds"),
    ("posted", "Posted"),
    ("available", "Available"),
)
MAX_ACCOUNT_ROWS = 100


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def check_of(kind: str) -> str:
    for name, kinds in AUDIT_CHECKS:
        if kind in kinds:
            return name
    return OTHER_CHECK


def _table(css: str, headers: Sequence[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    return (
        f'<div class="lc-table-wrap"><table class="lc-audit-table {css}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _row(cells: Sequence[object], css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<tr{attribute}>" + "".join(f"<td>{_e(cell)}</td>" for cell in cells) + "</tr>"


def audit_html(report: Mapping[str, Any]) -> str:
    violations: list[Mapping[str, Any]] = list(report.get("violations") or [])
    counts: dict[str, int] = {}
    for violation in violations:
        check = check_of(str(violation.get("kind", "")))
        counts[check] = counts.get(check, 0) + 1
    # `checked_at` is ISO 8601 in UTC: shown to the second.
    moment = str(report.get("checked_at") or "")[:19].replace("T", " ")
    checked = (
        f"{report.get('accounts_checked', 0):,} accounts and "
        f"{report.get('events_checked', 0):,} events checked"
        + (f" at {moment} UTC" if moment else "")
    )
    if violations:
        summary = (
            f'<div class="lc-notice lc-notice-error">{len(violations):,} violation(s) found; '
            f"{_e(checked)}.</div>"
        )
    else:
        summary = (
            f'<div class="lc-notice lc-notice-success">Audit clean: no violations; '
            f"{_e(checked)}.</div>"
        )
    names = [name for name, _ in AUDIT_CHECKS] + ([OTHER_CHECK] if OTHER_CHECK in counts else [])
    check_rows = [
        _row([name, f"{counts[name]} violation(s)"], "lc-audit-fail")
        if name in counts
        else _row([name, "passed"], "lc-audit-ok")
        for name in names
    ]
    parts = [summary, "<h4>Checks</h4>", _table("lc-audit-checks", ["Check", "Result"], check_rows)]
    if violations:
        rows = [
            _row(
                [
                    check_of(str(v.get("kind", ""))),
                    v.get("kind"),
                    v.get("account_id"),
                    v.get("sequence"),
                    v.get("detail"),
                ],
                "lc-violation",
            )
            for v in violations
        ]
        parts += [
            "<h4>Violations</h4>",
            _table("lc-violations", ["Check", "Kind", "Account", "Event", "Detail"], rows),
        ]
    totals: Mapping[str, Any] = report.get("totals") or {}
    parts += [
        "<h4>Totals</h4>",
        _table(
            "lc-audit-totals",
            [label for _, label in TOTAL_NAMES],
            [_row([f"{totals.get(key, 0):,}" for key, _ in TOTAL_NAMES])],
        ),
    ]
    accounts: list[Mapping[str, Any]] = sorted(
        report.get("accounts") or [], key=lambda a: -int(a.get("violations", 0))
    )
    account_rows = [
        _row(
            [
                a.get("account_id"),
                a.get("owner_id"),
                a.get("events"),
                a.get("posted"),
                a.get("held"),
                a.get("available"),
                a.get("violations"),
            ],
            "lc-violation" if a.get("violations") else "",
        )
        for a in accounts[:MAX_ACCOUNT_ROWS]
    ]
    more = len(accounts) - MAX_ACCOUNT_ROWS
    parts += [
        "<h4>Accounts</h4>",
        _table(
            "lc-audit-accounts",
            ["Account", "Owner", "Events", "Posted", "Held", "Available", "Violations"],
            account_rows,
        ),
    ]
    if more > 0:
        parts.append(f"<p>… and {more:,} more accounts (those with violations come first).</p>")
    return f'<div class="lc-audit">{"".join(parts)}</div>'
