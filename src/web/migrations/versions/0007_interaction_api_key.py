"""Which API key made each answered reply: `model_interactions.api_key_id`, for usage per key.

Nullable: a reply made from a signed-in session (the page, or the API with an access token)
has no key, and replies stored before this revision read as made without one. No foreign key:
keys are revoked, never deleted, and an interaction must outlive any change to `api_keys`
(SQLite would also need the table rebuilt to add one); the usage report left-joins the keys.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_model_interactions_api_key_id", ["api_key_id"])


def downgrade() -> None:
    with op.batch_alter_table("model_interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_model_interactions_api_key_id")
        batch_op.drop_column("api_key_id")
