"""Shop order lines keep their own SKU, variant and discount; refunds and their lines.

A shop product's variants share one ``products`` row (the product), so an order line
names what was sold itself: ``order_items.sku``, ``variant_id``, ``variant_title`` and
the line's ``discount``. A refund is a child of its order (``refunds``), its lines
children of the refund (``refund_lines``), each line pointing at the order line it
returns. Written out as the shipped model (``crm_model.yaml``) declares them, so
``tests/shared/test_crm_schema.py`` finds nothing left for ``ponte migrate`` to do.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _bookkeeping() -> list[sa.Column[object]]:
    """Every entity table's own columns (``crm_model._table``)."""
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("source_table", sa.String(), nullable=False),
        sa.Column("source_key", sa.String(), nullable=False),
        sa.Column("version_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version_event_id", sa.String(), nullable=True),
        sa.Column("version_seq", sa.BigInteger(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("extra", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    op.add_column("order_items", sa.Column("sku", sa.String(), nullable=True))
    op.add_column("order_items", sa.Column("variant_id", sa.String(), nullable=True))
    op.add_column("order_items", sa.Column("variant_title", sa.String(), nullable=True))
    op.add_column("order_items", sa.Column("discount", sa.Numeric(18, 4), nullable=True))
    op.create_table(
        "refunds",
        *_bookkeeping(),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("code", sa.String(), nullable=True),
        sa.Column("amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("currency", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_id", "source_key", name="uq_refunds_source_key"),
    )
    op.create_index(op.f("ix_refunds_order_id"), "refunds", ["order_id"], unique=False)
    op.create_table(
        "refund_lines",
        *_bookkeeping(),
        sa.Column("refund_id", sa.Integer(), nullable=True),
        sa.Column("order_item_id", sa.Integer(), nullable=True),
        sa.Column("quantity", sa.Numeric(precision=18, scale=6), nullable=True),
        sa.Column("amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.ForeignKeyConstraint(["refund_id"], ["refunds.id"]),
        sa.ForeignKeyConstraint(["order_item_id"], ["order_items.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_id", "source_key", name="uq_refund_lines_source_key"),
    )
    op.create_index(op.f("ix_refund_lines_refund_id"), "refund_lines", ["refund_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_refund_lines_refund_id"), table_name="refund_lines")
    op.drop_table("refund_lines")
    op.drop_index(op.f("ix_refunds_order_id"), table_name="refunds")
    op.drop_table("refunds")
    for column in ("discount", "variant_title", "variant_id", "sku"):
        op.drop_column("order_items", column)
