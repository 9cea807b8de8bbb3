"""Alert thresholds per user (low balance, budget use) and the last alert notice.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from web.tables import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_settings",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("low_balance_credits", sa.Integer(), nullable=True),
        sa.Column("budget_use_percent", sa.Integer(), nullable=True),
        sa.Column("notice", sa.Text(), nullable=True),
        sa.Column("notice_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_alert_settings_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name="pk_alert_settings"),
    )


def downgrade() -> None:
    op.drop_table("alert_settings")
