"""Budget limits: per API key (a period and a lifetime limit) and per user (a self-set cap and
an admin's cap). What each budget has used lives in the ledger (`ledger_budget_usage`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from web.tables import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_limits",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("set_by_user_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budget_limits"),
        sa.UniqueConstraint(
            "subject", "subject_id", "kind", name="uq_budget_limits_subject_subject_id_kind"
        ),
    )


def downgrade() -> None:
    op.drop_table("budget_limits")
