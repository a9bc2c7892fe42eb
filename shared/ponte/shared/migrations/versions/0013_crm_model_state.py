"""The CRM model each ``ponte migrate`` applied (``ponte.shared.crm_schema``): its digest,
its description (which entity tables Ponte made, so one removed from the model is
noticed), and the files it came from.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_model_state",
        sa.Column("digest", sa.String(), primary_key=True),
        sa.Column("model", pg.JSONB(), nullable=False),
        sa.Column("files", pg.JSONB(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("crm_model_state")
