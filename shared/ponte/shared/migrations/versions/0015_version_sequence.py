"""The version's sequence: a ``version_seq`` bigint beside ``version_at`` and
``version_event_id`` wherever a version is stored.

Two versions with the same ``version_at`` used to be ordered by their event ids as text
("evt-9" beat "evt-10"). They are now ordered by a sequence first: the source's own
monotonic field when its mapping names one (``version: {field: ...}``), else the raw
topic offset of the event (``ponte.transform.normalize.Version``). Rows written before
this migration have NULL here, which sorts before every sequence (the comparisons use
``COALESCE(version_seq, -1)``), so the first event after the upgrade with the same
``version_at`` wins, as it arrived later.

The entity tables are written out (the shipped model's, as they were when this was
written), so the migration does not change when the model does.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
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
)
"""Every entity table (``CrmRow``)."""

VERSIONED_BOOKKEEPING = ("child_set_versions", "deliveries", "waiting_deliveries")
"""The other tables that store a version: the transform's child sets, and the version
each target has been delivered (or waits with)."""


def upgrade() -> None:
    for table in (*ENTITY_TABLES, *VERSIONED_BOOKKEEPING):
        op.add_column(table, sa.Column("version_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for table in (*VERSIONED_BOOKKEEPING, *ENTITY_TABLES):
        op.drop_column(table, "version_seq")
