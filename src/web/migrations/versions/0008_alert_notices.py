"""Alert notices for the page: one row per user, kind (`low_balance`, `budget_use`) and subject
(the budget), renewed by each crossing, shown until dismissed or no longer true.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from web.tables import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_notices",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("dismissed_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_alert_notices_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alert_notices"),
        sa.UniqueConstraint(
            "user_id", "kind", "subject", name="uq_alert_notices_user_id_kind_subject"
        ),
    )
    op.create_index("ix_alert_notices_user_id", "alert_notices", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_alert_notices_user_id", table_name="alert_notices")
    op.drop_table("alert_notices")
