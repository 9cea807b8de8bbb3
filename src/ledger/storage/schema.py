"""The ledger's tables (SQLAlchemy Core). Migrations in `ledger/migrations` create them.

- `ledger_accounts`: one row per account with its head (sequence and hash of the last event);
  the writer locks these rows and compares heads to detect writes by other processes.
- `ledger_events`: the immutable log; unique (account_id, sequence) and
  (account_id, idempotency_key) are the concurrency and idempotency backstops.
- `ledger_commands`: refused commands, so a retried key returns the same refusal.
- `ledger_snapshots`: state every N events per account (balances, active holds, head hash).
- `ledger_hold_expiry`: unresolved holds by expiry time, so the sweeper finds expired holds
  without scanning the log; maintained in the same transaction as the events.
- `ledger_checkpoints`: signed account heads (see `ledger.checkpoints`); never updated.
- `ledger_budget_usage`: one row per (hold, budget) of holds placed under budgets: what the
  hold still holds, or what its capture took; a release deletes it. Written in the same
  transaction as the events, read under the account's lock when a hold names budgets.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

VERSION_TABLE = "ledger_alembic_version"

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
Position = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "ledger_accounts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("owner_id", String(256), nullable=False),
    Column("is_default", Boolean, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("head_sequence", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Index("ix_ledger_accounts_owner", "owner_id"),
    Index(
        "uq_ledger_accounts_default_owner",
        "owner_id",
        unique=True,
        sqlite_where=text("is_default"),
        postgresql_where=text("is_default"),
    ),
)

events = Table(
    "ledger_events",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=True),
    Column("account_id", String(64), ForeignKey("ledger_accounts.account_id"), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("released_amount", BigInteger, nullable=False),
    Column("hold_id", String(128)),
    Column("refers_to", String(128)),
    Column("expires_at_us", BigInteger),
    Column("purpose", String(256)),
    Column("reference", String(256)),
    Column("reason", String(256)),
    Column("source", String(256)),
    Column("note", String(256)),
    Column("posted_after", BigInteger, nullable=False),
    Column("held_after", BigInteger, nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("metadata_json", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("account_id", "sequence", name="uq_ledger_events_sequence"),
    UniqueConstraint("account_id", "idempotency_key", name="uq_ledger_events_key"),
    Index(
        "ix_ledger_events_refers_to",
        "account_id",
        "refers_to",
        sqlite_where=text("refers_to IS NOT NULL"),
        postgresql_where=text("refers_to IS NOT NULL"),
    ),
)

commands = Table(
    "ledger_commands",
    metadata,
    Column("account_id", String(64), nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("error_code", String(64), nullable=False),
    Column("error_details_json", Text, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("account_id", "idempotency_key", name="pk_ledger_commands"),
)

snapshots = Table(
    "ledger_snapshots",
    metadata,
    Column("account_id", String(64), ForeignKey("ledger_accounts.account_id"), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("posted", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False),
    Column("holds_json", Text, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("taken_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("account_id", "sequence", name="pk_ledger_snapshots"),
)

hold_expiry = Table(
    "ledger_hold_expiry",
    metadata,
    Column("hold_id", String(128), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Index("ix_ledger_hold_expiry_expires", "expires_at_us"),
)

# Signed account heads: the service signs (account_id, sequence, head_hash, signed_at_us) so a
# receipt can be checked offline against a head nobody can rewrite without the signing key.
checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("account_id", String(64), ForeignKey("ledger_accounts.account_id"), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("signed_at_us", BigInteger, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    PrimaryKeyConstraint("account_id", "sequence", name="pk_ledger_checkpoints"),
)

budget_usage = Table(
    "ledger_budget_usage",
    metadata,
    Column("hold_id", String(128), nullable=False),
    Column("budget_id", String(128), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("placed_at_us", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("is_open", Boolean, nullable=False),
    PrimaryKeyConstraint("hold_id", "budget_id", name="pk_ledger_budget_usage"),
    Index("ix_ledger_budget_usage_window", "account_id", "budget_id", "placed_at_us"),
)
