"""Ponte's own bookkeeping tables beside the CRM model: parked references, child-set
versions, the outbox, rejections, unmapped fields, deliveries and what waits for them.

The CRM model itself (companies, contacts, orders... and a deployment's own entities) is
data, not classes here: ``ponte.shared.crm_model`` reads it from ``crm_model.yaml`` and the
deployment's extension, and ``ponte migrate`` brings PostgreSQL to it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

_AWARE = sa.DateTime(timezone=True)


# --- the transform's own bookkeeping ------------------------------------------------------


# A reference to a row that has not arrived yet (the seeds' "cônjuge sem ID de
# integração"): the referencing row is stored with the column NULL and waits here.
class ParkedReference(SQLModel, table=True):
    __tablename__ = "parked_references"
    __table_args__ = (
        sa.UniqueConstraint("entity", "row_id", "column_name", name="uq_parked_reference"),
        sa.Index("ix_parked_target", "target_entity", "source_id", "target_key"),
    )
    id: int | None = Field(default=None, primary_key=True)
    source_id: str
    entity: str
    row_id: int
    column_name: str
    field: str
    target_entity: str
    target_key: str
    """The target's ERP key, or its ``target_field`` value."""
    event_id: str
    parked_at: datetime = Field(sa_type=_AWARE)
    target_source: str | None = None
    """The target's source when it is not the row's own (migration 0018)."""
    target_field: str | None = None
    """The target's column matched instead of its key (a CNPJ, an e-mail)."""
    reason: str | None = None
    """Why it waits, in words (``ambiguous``: several rows have that value)."""


# Per parent row and child table, the newest parent version that replaced the whole set
# of children (a version carrying the child table, or a delete). A child sent on its own
# with an older version is stale: the set it would join has been replaced since.
class ChildSetVersion(SQLModel, table=True):
    __tablename__ = "child_set_versions"
    child_entity: str = Field(primary_key=True)
    parent_id: int = Field(primary_key=True)
    version_at: datetime | None = Field(default=None, sa_type=_AWARE)
    version_event_id: str
    version_seq: int | None = Field(default=None, sa_type=sa.BigInteger)  # migration 0015


# Messages to publish after the transaction that produced them commits (transactional
# outbox): change events for the deliver service and dead letters.
class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True))
    topic: str
    key: str
    value: bytes = Field(sa_type=sa.LargeBinary, sa_column_kwargs={"nullable": False})
    """The Kafka message value exactly as it will be sent (JSON, encoded once)."""
    headers: dict[str, str] = Field(
        default_factory=dict, sa_type=pg.JSONB, sa_column_kwargs={"nullable": False}
    )
    created_at: datetime = Field(sa_type=_AWARE)


# Record events the transform could not store, with the field and the reason.
class TransformRejection(SQLModel, table=True):
    __tablename__ = "transform_rejections"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)
    source_id: str = Field(index=True)
    source_table: str
    record_key: str
    field: str | None = None
    reason: str
    rejected_at: datetime = Field(sa_type=_AWARE)
    payload: dict[str, Any] = Field(sa_type=pg.JSONB, sa_column_kwargs={"nullable": False})
    raw: dict[str, Any] | None = Field(default=None, sa_type=pg.JSONB)
    """For a message that is not a readable event: its bytes (base64, cut at 64 KiB),
    size, digest and topic/partition/offset (``ponte.transform.identity.raw_pointer``)."""


# Tables and fields sources send that their mapping does not place.
class UnmappedField(SQLModel, table=True):
    __tablename__ = "unmapped_fields"
    source_id: str = Field(primary_key=True)
    source_table: str = Field(primary_key=True)
    field: str = Field(primary_key=True)
    """``*`` when the whole table is unknown to the mapping."""
    occurrences: int
    first_seen: datetime = Field(sa_type=_AWARE)
    last_seen: datetime = Field(sa_type=_AWARE)
    example_event_id: str


# Where each row stands with each CRM target: the CRM's own id (for later updates and
# deletes) and the last version delivered, or why it failed.
class Delivery(SQLModel, table=True):
    __tablename__ = "deliveries"
    __table_args__ = (sa.Index("ix_deliveries_row", "target_id", "entity", "row_id"),)
    target_id: str = Field(primary_key=True)
    entity: str = Field(primary_key=True)
    source_id: str = Field(primary_key=True)
    source_key: str = Field(primary_key=True)
    row_id: int | None = None
    crm_id: str | None = None
    state: str
    """delivered, failed, or waiting (for a record it refers to: ``waiting_deliveries``)."""
    version_at: datetime | None = Field(default=None, sa_type=_AWARE)
    version_event_id: str | None = None
    version_seq: int | None = Field(default=None, sa_type=sa.BigInteger)  # migration 0015
    attempts: int = 0
    last_error: str | None = None
    updated_at: datetime = Field(sa_type=_AWARE)
    crm_key: str | None = None
    """The natural-key value last delivered (a REST ``natural_key``, Ploomes'
    ``lookup_field``): an update by ``crm_id`` first checks that the CRM's record still has
    it, or the change's own (``ponte.deliver.connectors.base.check_same_record``)."""


# A change that waits until a record it refers to has a CRM id in the same target
# (``ponte.deliver.references``; migration 0010). ``deliveries`` says ``waiting`` for it.
class WaitingDelivery(SQLModel, table=True):
    __tablename__ = "waiting_deliveries"
    __table_args__ = (
        sa.Index("ix_waiting_deliveries_for", "target_id", "waits_for_entity", "waits_for_row_id"),
    )
    target_id: str = Field(primary_key=True)
    entity: str = Field(primary_key=True)
    source_id: str = Field(primary_key=True)
    source_key: str = Field(primary_key=True)
    version_at: datetime | None = Field(default=None, sa_type=_AWARE)
    version_event_id: str | None = None
    version_seq: int | None = Field(default=None, sa_type=sa.BigInteger)  # migration 0015
    change: dict[str, Any] = Field(sa_type=pg.JSONB, sa_column_kwargs={"nullable": False})
    """The change event as deliver read it, to send once the reference resolves."""
    waits_for_entity: str
    waits_for_row_id: int
    reason: str
    since: datetime = Field(sa_type=_AWARE)
    claimed_at: datetime | None = Field(default=None, sa_type=_AWARE)
    """Set while a deliver process sends it; a claim older than a few minutes is stale
    (that process died) and the change is taken again."""


# One declared link of one delivered record with one target (``ponte.deliver.associations``;
# migration 0004).
class Association(SQLModel, table=True):
    __tablename__ = "associations"
    __table_args__ = (sa.Index("ix_associations_to", "target_id", "to_entity", "to_row_id"),)
    target_id: str = Field(primary_key=True)
    from_entity: str = Field(primary_key=True)
    from_row_id: int = Field(primary_key=True)
    column_name: str = Field(primary_key=True)
    to_entity: str
    to_row_id: int
    state: str
    """waiting, associated or failed."""
    from_crm_id: str | None = None
    """The pair of CRM ids last sent (associated with, or refused)."""
    to_crm_id: str | None = None
    attempts: int = 0
    status: int | None = None
    last_error: str | None = None
    updated_at: datetime = Field(sa_type=sa.DateTime(timezone=True))


# What became of one CRM webhook event sent back to its origin
# (``ponte.deliver.status_back.outcomes``; migration 0006): the dedup key when the CRM
# re-sends, and the record of what was done.
class StatusBackEvent(SQLModel, table=True):
    __tablename__ = "status_updates"
    __table_args__ = (
        sa.Index(
            "ix_status_updates_origin_record",
            "source_id",
            "entity",
            "source_key",
            "occurred_at",
            postgresql_where=sa.text("state = 'applied'"),
        ),
    )
    target_id: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    crm_id: str
    stage: str | None = None
    occurred_at: datetime = Field(sa_type=_AWARE)
    entity: str | None = None
    source_id: str | None = None
    source_key: str | None = None
    origin_kind: str | None = None
    origin_status: str | None = None
    state: str
    """applied, ignored, stale or failed."""
    reason: str | None = None
    http_status: int | None = None
    attempts: int = 0
    recorded_at: datetime = Field(sa_type=_AWARE)


# The CRM model each ``ponte migrate`` applied (``ponte.shared.crm_schema``; migration 0013).
class CrmModelState(SQLModel, table=True):
    __tablename__ = "crm_model_state"
    digest: str = Field(primary_key=True)
    model: dict[str, Any] = Field(sa_type=pg.JSONB, sa_column_kwargs={"nullable": False})
    files: list[str] = Field(sa_type=pg.JSONB, sa_column_kwargs={"nullable": False})
    applied_at: datetime = Field(sa_type=_AWARE)
