"""The ops API's own tables: per-source texts and limits, and the audit trail.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_ops",
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("business_rule", sa.String(), nullable=False),
        sa.Column("max_silence_hours", sa.Float(), nullable=False),
        sa.Column("deployment_status", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source_id"),
    )
    op.create_table(
        "ops_audit",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=True),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("old_value", pg.JSONB(), nullable=True),
        sa.Column("new_value", pg.JSONB(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ops_audit_at", "ops_audit", ["at"])
    op.create_index("ix_ops_audit_source_id", "ops_audit", ["source_id"])


def downgrade() -> None:
    op.drop_table("ops_audit")
    op.drop_table("source_ops")
