"""Status updates sent back to the origin (shop or ERP) after a CRM stage change.

One row per CRM webhook event (HubSpot's eventId, per target): the dedup key when HubSpot
re-sends a batch, and the record of what Ponte did with the event (applied, ignored,
stale, failed) and why. The index serves "never back in time": the newest applied event
per origin record.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "status_updates",
        sa.Column("target_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("crm_id", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entity", sa.String(), nullable=True),
        sa.Column("source_id", sa.String(), nullable=True),
        sa.Column("source_key", sa.String(), nullable=True),
        sa.Column("origin_kind", sa.String(), nullable=True),
        sa.Column("origin_status", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("target_id", "event_id"),
    )
    op.create_index(
        "ix_status_updates_origin_record",
        "status_updates",
        ["source_id", "entity", "source_key", "occurred_at"],
        postgresql_where=sa.text("state = 'applied'"),
    )


def downgrade() -> None:
    op.drop_index("ix_status_updates_origin_record", table_name="status_updates")
    op.drop_table("status_updates")
