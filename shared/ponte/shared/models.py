"""Tables that more than one service reads: sources, the request history, ingest receipts.

These SQLModel classes are the schema of record; Alembic migrations
(``ponte/shared/migrations``) create them and ``tests/shared/test_migrations.py`` checks
that the migrations and these classes agree. Services read and write them through asyncpg
in their repositories, because the hot path wants one round trip and no ORM work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel


def _utc_column(*, nullable: bool = False, index: bool = False) -> Any:
    return sa.Column(sa.DateTime(timezone=True), nullable=nullable, index=index)


# A system that sends webhooks (an ERP, a Shopify shop, a WooCommerce shop). Loaded from
# the sources YAML at start; the ops API edits the row afterwards.
class Source(SQLModel, table=True):
    __tablename__ = "sources"

    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=32)
    active: bool = True
    display_name: str = ""
    erp_name: str | None = None
    erp_version: str | None = None
    secrets: list[str] = Field(default_factory=list, sa_column=sa.Column(pg.JSONB, nullable=False))
    allowed_cidrs: list[str] = Field(
        default_factory=list, sa_column=sa.Column(pg.JSONB, nullable=False)
    )
    trusted_proxies: list[str] | None = Field(default=None, sa_column=sa.Column(pg.JSONB))
    tables: list[str] = Field(default_factory=list, sa_column=sa.Column(pg.JSONB, nullable=False))
    config_digest: str | None = None
    """Digest of the YAML entry last applied: the file wins only when it changes."""
    created_at: datetime = Field(sa_column=_utc_column())
    updated_at: datetime = Field(sa_column=_utc_column())


# Every webhook request received, accepted or rejected (seed 001's "Histórico").
class WebhookRequest(SQLModel, table=True):
    __tablename__ = "webhook_requests"
    __table_args__ = (sa.Index("ix_webhook_requests_source_time", "source_id", "received_at"),)

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True))
    received_at: datetime = Field(sa_column=_utc_column(index=True))
    source_id: str = Field(max_length=200)
    tables: list[str] = Field(
        default_factory=list, sa_column=sa.Column(pg.ARRAY(sa.Text), nullable=False)
    )
    event_id: str | None = None
    source_event_id: str | None = None
    outcome: str = Field(max_length=16)
    """accepted, duplicate, ping or rejected."""
    status_code: int
    reason: str | None = None
    response_body: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(pg.JSONB, nullable=False)
    )
    latency_ms: float
    size_bytes: int
    client_ip: str | None = None
    content_type: str | None = None
    body: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary))
    body_sha256: str | None = None


# One row per delivery ingest has seen, so a re-delivery is answered "duplicate" without
# a second event. `pending` rows are claims whose broker write is still in flight.
class IngestReceipt(SQLModel, table=True):
    __tablename__ = "ingest_receipts"

    source_id: str = Field(primary_key=True, max_length=64)
    dedup_key: str = Field(primary_key=True, max_length=300)
    event_id: str
    state: str = Field(max_length=16)
    claimed_at: datetime = Field(sa_column=_utc_column(index=True))
    accepted_at: datetime | None = Field(default=None, sa_column=_utc_column(nullable=True))
