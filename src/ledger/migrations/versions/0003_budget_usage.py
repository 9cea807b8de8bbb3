"""Add the budget usage table: what holds placed under budgets hold or took.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_budget_usage",
        sa.Column("hold_id", sa.String(128), nullable=False),
        sa.Column("budget_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("placed_at_us", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("is_open", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("hold_id", "budget_id", name="pk_ledger_budget_usage"),
    )
    op.create_index(
        "ix_ledger_budget_usage_window",
        "ledger_budget_usage",
        ["account_id", "budget_id", "placed_at_us"],
    )


def downgrade() -> None:
    op.drop_table("ledger_budget_usage")
