"""Usernames and emails unique regardless of case; login attempts name the account they hit.

The unique constraints of 0001 are case-sensitive, so concurrent registrations of "Bob" and
"bob" could both succeed. This adds unique indexes on lower(username) and lower(email). A
database that already holds such case duplicates is NOT changed: the upgrade stops with an
error naming them, and an operator decides which accounts to rename or remove (this migration
never deletes or renames anyone). Then it adds login_attempts.user_id, so the lockout counts
per account whether it was named by username or by email, and attributes the stored attempts.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _case_duplicates(column: str) -> list[str]:
    """One line per lower(column) value held by several users: the spellings and their ids."""
    rows = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT lower({column}), {column}, id FROM users WHERE lower({column}) IN "
                f"(SELECT lower({column}) FROM users GROUP BY lower({column}) "
                f"HAVING count(*) > 1) ORDER BY lower({column}), id"
            )
        )
        .all()
    )
    groups: dict[str, list[str]] = {}
    for key, value, user_id in rows:
        groups.setdefault(key, []).append(f"{value!r} (user {user_id})")
    return [f"{column} {', '.join(spellings)}" for spellings in groups.values()]


def upgrade() -> None:
    duplicates = _case_duplicates("username") + _case_duplicates("email")
    if duplicates:
        raise RuntimeError(
            "cannot make usernames and emails unique regardless of case: these users differ "
            "only in case: "
            + "; ".join(duplicates)
            + ". Rename or remove all but one of each, then run the migration again."
        )
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)

    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_login_attempts_user_id_users"),
            "users",
            ["user_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index(
            "ix_login_attempts_user_id_created", ["user_id", "created_at"], unique=False
        )
    # Attempts stored before this revision count against the account they named.
    op.execute(
        "UPDATE login_attempts SET user_id = (SELECT min(users.id) FROM users "
        "WHERE lower(users.username) = login_attempts.username "
        "OR lower(users.email) = login_attempts.username)"
    )


def downgrade() -> None:
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_login_attempts_user_id_created")
        batch_op.drop_constraint(batch_op.f("fk_login_attempts_user_id_users"), type_="foreignkey")
        batch_op.drop_column("user_id")
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_index("uq_users_username_lower", table_name="users")
