"""Scheduled pulls: one row per run, and each source's saved cursor.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pull_runs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("rows_pulled", sa.Integer(), nullable=False),
        sa.Column("rows_rejected", sa.Integer(), nullable=False),
        sa.Column("cursor_before", sa.String(), nullable=True),
        sa.Column("cursor_after", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("rejected", pg.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_pull_runs_source_started", "pull_runs", ["source_id", "started_at"])
    op.create_table(
        "pull_cursors",
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("cursor", sa.String(), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source_id"),
    )


def downgrade() -> None:
    op.drop_table("pull_cursors")
    op.drop_index("ix_pull_runs_source_started", table_name="pull_runs")
    op.drop_table("pull_runs")
