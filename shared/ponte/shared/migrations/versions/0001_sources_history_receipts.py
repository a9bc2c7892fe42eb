"""Sources, the webhook request history and ingest receipts.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("display_name", sa.String, nullable=False),
        sa.Column("erp_name", sa.String, nullable=True),
        sa.Column("erp_version", sa.String, nullable=True),
        sa.Column("secrets", pg.JSONB, nullable=False),
        sa.Column("allowed_cidrs", pg.JSONB, nullable=False),
        sa.Column("trusted_proxies", pg.JSONB, nullable=True),
        sa.Column("tables", pg.JSONB, nullable=False),
        sa.Column("config_digest", sa.String, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "webhook_requests",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_id", sa.String(200), nullable=False),
        sa.Column("tables", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("event_id", sa.String, nullable=True),
        sa.Column("source_event_id", sa.String, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("reason", sa.String, nullable=True),
        sa.Column("response_body", pg.JSONB, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("client_ip", sa.String, nullable=True),
        sa.Column("content_type", sa.String, nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=True),
        sa.Column("body_sha256", sa.String, nullable=True),
    )
    op.create_index("ix_webhook_requests_received_at", "webhook_requests", ["received_at"])
    op.create_index(
        "ix_webhook_requests_source_time", "webhook_requests", ["source_id", "received_at"]
    )
    op.create_table(
        "ingest_receipts",
        sa.Column("source_id", sa.String(64), primary_key=True),
        sa.Column("dedup_key", sa.String(300), primary_key=True),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_ingest_receipts_claimed_at", "ingest_receipts", ["claimed_at"])


def downgrade() -> None:
    op.drop_table("ingest_receipts")
    op.drop_table("webhook_requests")
    op.drop_table("sources")
