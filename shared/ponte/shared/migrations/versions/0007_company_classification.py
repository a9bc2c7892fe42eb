"""Companies' ABC class and portfolio (derived by the classification job).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("companies", sa.Column("abc_class", sa.String(), nullable=True))
    op.add_column("companies", sa.Column("portfolio", sa.String(), nullable=True))
    op.add_column("companies", sa.Column("abc_revenue", sa.Numeric(18, 4), nullable=True))
    op.add_column(
        "companies", sa.Column("classified_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    for column in ("classified_at", "abc_revenue", "portfolio", "abc_class"):
        op.drop_column("companies", column)
