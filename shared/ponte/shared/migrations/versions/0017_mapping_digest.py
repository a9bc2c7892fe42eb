"""The mapping's digest: a ``mapping_digest`` text column on every entity table.

Each row records the digest of the source mapping that wrote it
(``ponte.shared.mapping.Mapping.digest``). ``ponte reprocess`` re-applies the current
mapping to events already received: their versions are the stored ones, so without this
column a rewound event would be "not newer" and change nothing. With it, a reprocessed
event of an *equal* version rewrites the row when the digest differs
(``ponte.shared.versions.applies``). Rows written before this migration have NULL, which
differs from every digest: the first reprocess rewrites them (a change event only where
the content changes).

The entity tables are written out (the shipped model's, as they were when this was
written), so the migration does not change when the model does; a deployment's own
entities get the column from ``ponte migrate``'s model half (``crm_schema``).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ENTITY_TABLES = (
    "codes",
    "salespeople",
    "companies",
    "contacts",
    "suppliers",
    "brands",
    "company_brands",
    "products",
    "quotes",
    "quote_items",
    "orders",
    "order_items",
    "invoices",
    "invoice_items",
    "receivables",
    "refunds",
    "refund_lines",
)
"""Every entity table of the shipped model (refunds and their lines from 0016)."""


def upgrade() -> None:
    for table in ENTITY_TABLES:
        op.add_column(table, sa.Column("mapping_digest", sa.String(), nullable=True))


def downgrade() -> None:
    for table in reversed(ENTITY_TABLES):
        op.drop_column(table, "mapping_digest")
