"""Associations between delivered records, per CRM target, until (and after) they are made.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "associations",
        sa.Column("target_id", sa.String(), nullable=False),
        sa.Column("from_entity", sa.String(), nullable=False),
        sa.Column("from_row_id", sa.Integer(), nullable=False),
        sa.Column("column_name", sa.String(), nullable=False),
        sa.Column("to_entity", sa.String(), nullable=False),
        sa.Column("to_row_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("from_crm_id", sa.String(), nullable=True),
        sa.Column("to_crm_id", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("target_id", "from_entity", "from_row_id", "column_name"),
    )
    op.create_index("ix_associations_to", "associations", ["target_id", "to_entity", "to_row_id"])
    # Associations find the other record's CRM id by its row id.
    op.create_index("ix_deliveries_row", "deliveries", ["target_id", "entity", "row_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_row", table_name="deliveries")
    op.drop_index("ix_associations_to", table_name="associations")
    op.drop_table("associations")
