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
    charset: str = Field(
        default="warn", sa_column=sa.Column(sa.String(16), nullable=False, server_default="warn")
    )
    """warn or strict: a single-byte charset declared on a body that is really UTF-8."""
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
    warnings: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    """What was accepted but looked wrong, e.g. a body declared ISO-8859-1 that is valid
    UTF-8 with multi-byte sequences (likely mojibake)."""


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


# What the ops page shows and edits about a source beyond its ingest settings (seed 001's
# "Informações Gerais"). Kept apart from ``sources`` so the YAML file, which rewrites
# ``sources`` when it changes, never resets a consultant's text.
class SourceOps(SQLModel, table=True):
    __tablename__ = "source_ops"

    source_id: str = Field(primary_key=True, max_length=64)
    business_rule: str = ""
    """Seed 001's "Regra de negócio da integração", free text."""
    max_silence_hours: float = 24.0
    """Seed 001's "Tempo máximo sem sucesso na integração"."""
    deployment_status: str = Field(default="in_progress", max_length=16)
    """Seed 001's "Situação da implantação": in_progress or completed."""
    updated_at: datetime = Field(sa_column=_utc_column())


# Who changed what through the ops API, and when; secrets appear as fingerprints only.
class OpsAudit(SQLModel, table=True):
    __tablename__ = "ops_audit"

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True))
    at: datetime = Field(sa_column=_utc_column(index=True))
    actor: str = Field(max_length=100)
    source_id: str | None = Field(default=None, max_length=64, index=True)
    field: str = Field(max_length=64)
    old_value: Any = Field(default=None, sa_column=sa.Column(pg.JSONB))
    new_value: Any = Field(default=None, sa_column=sa.Column(pg.JSONB))


# One pull run of one source: when, how it ended, what it pulled, where the cursor was.
class PullRun(SQLModel, table=True):
    __tablename__ = "pull_runs"
    __table_args__ = (sa.Index("ix_pull_runs_source_started", "source_id", "started_at"),)

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True))
    source_id: str = Field(max_length=64)
    trigger: str = Field(max_length=16)
    """schedule or manual ("Executar agora", ``ponte pull``)."""
    status: str = Field(max_length=16)
    """running, ok, failed or skipped_locked."""
    started_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True)
    )
    duration_ms: float | None = None
    pages: int = 0
    rows_pulled: int = 0
    rows_rejected: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    error: str | None = None
    rejected: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=sa.Column(pg.JSONB, nullable=False)
    )


# The cursor a source's pulls have reached: moved only by a run whose rows Kafka acked.
class PullCursor(SQLModel, table=True):
    __tablename__ = "pull_cursors"

    source_id: str = Field(primary_key=True, max_length=64)
    cursor: str | None = None
    run_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


# Rows a mapping's skip rule left out (ponte.shared.mapping.SkipRule), per source, table and
# rule: written by the transform with each batch, listed by its read API, counted by ops.
class SkippedRows(SQLModel, table=True):
    __tablename__ = "skipped_rows"

    source_id: str = Field(primary_key=True)
    source_table: str = Field(primary_key=True)
    rule: str = Field(primary_key=True)
    """The rule as text (``tipo in [I, X]``), as the metric's ``rule`` label."""
    reason: str | None = None
    """The rule's ``reason``, as last seen (the mapping may have been edited)."""
    occurrences: int
    first_seen: datetime = Field(sa_column=_utc_column())
    last_seen: datetime = Field(sa_column=_utc_column())
    example_event_id: str
