"""Child-set versions: the newest parent version that replaced each parent's child set.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "child_set_versions",
        sa.Column("child_entity", sa.String(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("version_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version_event_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("child_entity", "parent_id"),
    )


def downgrade() -> None:
    op.drop_table("child_set_versions")
