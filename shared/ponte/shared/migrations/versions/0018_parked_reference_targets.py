"""Parked references that name their target another way, and say why they wait: the
target's source (a reference across sources) and field (a reference by another unique
field, e.g. a CNPJ or an e-mail, instead of the ERP's key), and a reason a person reads
(``ponte.transform.repository.parking``).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("parked_references", sa.Column("target_source", sa.String(), nullable=True))
    op.add_column("parked_references", sa.Column("target_field", sa.String(), nullable=True))
    op.add_column("parked_references", sa.Column("reason", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("parked_references", "reason")
    op.drop_column("parked_references", "target_field")
    op.drop_column("parked_references", "target_source")
