"""What each stored reply cost: request id, credits, tokens, requested model, settlement.

A reopened conversation shows the same cost line under each reply as the live page did. The
columns are nullable: user messages have none, and replies stored before this revision keep
reading as before (shown without a cost line).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("request_id", sa.String(length=36)),
    ("cost_credits", sa.Integer()),
    ("prompt_tokens", sa.Integer()),
    ("completion_tokens", sa.Integer()),
    ("model_requested", sa.String(length=100)),
    ("settlement", sa.String(length=24)),
    ("release_reason", sa.String(length=64)),
)


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        for name, column_type in _COLUMNS:
            batch_op.add_column(sa.Column(name, column_type, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        for name, _ in reversed(_COLUMNS):
            batch_op.drop_column(name)
