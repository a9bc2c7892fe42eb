"""Changes waiting for a record they refer to, and the natural key last delivered.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "waiting_deliveries",
        sa.Column("target_id", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("source_id", sa.String(), nullable=False),
        sa.Column("source_key", sa.String(), nullable=False),
        sa.Column("version_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version_event_id", sa.String(), nullable=True),
        sa.Column("change", pg.JSONB(), nullable=False),
        sa.Column("waits_for_entity", sa.String(), nullable=False),
        sa.Column("waits_for_row_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("target_id", "entity", "source_id", "source_key"),
    )
    op.create_index(
        "ix_waiting_deliveries_for",
        "waiting_deliveries",
        ["target_id", "waits_for_entity", "waits_for_row_id"],
    )
    op.add_column("deliveries", sa.Column("crm_key", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("deliveries", "crm_key")
    op.drop_index("ix_waiting_deliveries_for", table_name="waiting_deliveries")
    op.drop_table("waiting_deliveries")
