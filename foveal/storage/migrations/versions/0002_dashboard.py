"""Review dashboard: users, sign-in sessions, per-line thresholds, review actions, queue index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Adds `users` (argon2 password hashes, role reviewer | admin), `user_sessions` (SHA-256 of the
cookie token), `line_thresholds`; `reviews.action` (what the reviewer did; existing rows get
`confirm` or `relabel` from their decision) and the `comment` decision; replaces the queue index
on inspections (verdict, confidence) by (verdict, confidence, id) so keyset paging is one index
range scan. Like 0001 it spells everything out and never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False)


def upgrade() -> None:
    op.create_table(
        "users",
        _id(),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('reviewer', 'admin')", name=op.f("ck_users_role")),
        sa.CheckConstraint("username ~ '^[A-Za-z0-9_.@-]{1,64}$'", name=op.f("ck_users_username_format")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "user_sessions",
        _id(),
        sa.Column("token_sha256", sa.Text(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("token_sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_user_sessions_token_sha256_hex")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_user_sessions_token_sha256")),
    )
    op.create_index(op.f("ix_user_sessions_user_id"), "user_sessions", ["user_id"])
    op.create_table(
        "line_thresholds",
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("review_below", sa.Double(), nullable=False),
        sa.Column("updated_by", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("review_below >= 0 AND review_below <= 1",
                           name=op.f("ck_line_thresholds_review_below_unit")),
        sa.PrimaryKeyConstraint("line", name=op.f("pk_line_thresholds")),
    )
    op.add_column("reviews", sa.Column("action", sa.Text(), nullable=True))
    op.execute("UPDATE reviews SET action = CASE decision WHEN 'confirm' THEN 'confirm' ELSE 'relabel' END")
    op.alter_column("reviews", "action", nullable=False)
    op.create_check_constraint(
        op.f("ck_reviews_action"), "reviews",
        "action IN ('confirm', 'reject', 'relabel', 'box', 'comment')")
    op.drop_constraint(op.f("ck_reviews_decision"), "reviews", type_="check")
    op.create_check_constraint(op.f("ck_reviews_decision"), "reviews",
                               "decision IN ('confirm', 'correct', 'comment')")
    op.drop_index(op.f("ix_inspections_verdict_confidence"), table_name="inspections")
    op.create_index(op.f("ix_inspections_verdict_confidence_id"), "inspections",
                    ["verdict", "confidence", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_inspections_verdict_confidence_id"), table_name="inspections")
    op.create_index(op.f("ix_inspections_verdict_confidence"), "inspections", ["verdict", "confidence"])
    # Comments have no place in the old schema; they go with the column that tells them apart.
    op.execute("DELETE FROM reviews WHERE decision = 'comment'")
    op.drop_constraint(op.f("ck_reviews_decision"), "reviews", type_="check")
    op.create_check_constraint(op.f("ck_reviews_decision"), "reviews", "decision IN ('confirm', 'correct')")
    op.drop_constraint(op.f("ck_reviews_action"), "reviews", type_="check")
    op.drop_column("reviews", "action")
    op.drop_table("line_thresholds")
    op.drop_table("user_sessions")
    op.drop_table("users")
