"""Create the ledger tables: accounts, events, refused commands, snapshots, hold expiry.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("owner_id", sa.String(256), nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("head_sequence", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_ledger_accounts_owner", "ledger_accounts", ["owner_id"])
    op.create_index(
        "uq_ledger_accounts_default_owner",
        "ledger_accounts",
        ["owner_id"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )
    op.create_table(
        "ledger_events",
        sa.Column("position", POSITION, primary_key=True, autoincrement=True),
        sa.Column(
            "account_id",
            sa.String(64),
            sa.ForeignKey("ledger_accounts.account_id"),
            nullable=False,
        ),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("released_amount", sa.BigInteger, nullable=False),
        sa.Column("hold_id", sa.String(128)),
        sa.Column("refers_to", sa.String(128)),
        sa.Column("expires_at_us", sa.BigInteger),
        sa.Column("purpose", sa.String(256)),
        sa.Column("reference", sa.String(256)),
        sa.Column("reason", sa.String(256)),
        sa.Column("source", sa.String(256)),
        sa.Column("note", sa.String(256)),
        sa.Column("posted_after", sa.BigInteger, nullable=False),
        sa.Column("held_after", sa.BigInteger, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.Column("metadata_json", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("account_id", "sequence", name="uq_ledger_events_sequence"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_ledger_events_key"),
    )
    op.create_index(
        "ix_ledger_events_refers_to",
        "ledger_events",
        ["account_id", "refers_to"],
        sqlite_where=sa.text("refers_to IS NOT NULL"),
        postgresql_where=sa.text("refers_to IS NOT NULL"),
    )
    op.create_table(
        "ledger_commands",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=False),
        sa.Column("error_details_json", sa.Text, nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "idempotency_key", name="pk_ledger_commands"),
    )
    op.create_table(
        "ledger_snapshots",
        sa.Column(
            "account_id",
            sa.String(64),
            sa.ForeignKey("ledger_accounts.account_id"),
            nullable=False,
        ),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("posted", sa.BigInteger, nullable=False),
        sa.Column("held", sa.BigInteger, nullable=False),
        sa.Column("holds_json", sa.Text, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("taken_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "sequence", name="pk_ledger_snapshots"),
    )
    op.create_table(
        "ledger_hold_expiry",
        sa.Column("hold_id", sa.String(128), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_ledger_hold_expiry_expires", "ledger_hold_expiry", ["expires_at_us"])


def downgrade() -> None:
    op.drop_table("ledger_hold_expiry")
    op.drop_table("ledger_snapshots")
    op.drop_table("ledger_commands")
    op.drop_table("ledger_events")
    op.drop_table("ledger_accounts")
