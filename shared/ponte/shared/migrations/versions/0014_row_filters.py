"""Row filters: ``skipped_rows`` counts the rows a mapping's skip rule left out.

One row per (source, source table, rule): how often, first and last seen, and an event
that was skipped, so a skip is visible next to the unmapped fields rather than silent.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skipped_rows",
        sa.Column("source_id", sa.String(), nullable=False),
        sa.Column("source_table", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("example_event_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("source_id", "source_table", "rule"),
    )


def downgrade() -> None:
    op.drop_table("skipped_rows")
