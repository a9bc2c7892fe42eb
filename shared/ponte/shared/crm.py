"""The CRM model: what Ponte keeps in PostgreSQL, in third normal form.

Every entity row carries the same bookkeeping (``CrmRow``):
- provenance: ``source_id``, ``source_table`` and ``source_key`` (the ERP's own key; a
  child's key is its parent's key plus its own, e.g. ``PED-1001/1``), unique per source;
- version: ``version_at`` (the event's occurred_at, or the shop's updated_at), then
  ``version_seq`` (the source's sequence field, else the raw topic offset), then
  ``version_event_id`` break ties, so a repeated or older event changes nothing;
- ``deleted_at``: a tombstone, which also beats older upserts that arrive later;
- ``extra``: fields the source sent that the mapping does not place (also reported in
  ``unmapped_fields``, so they are neither lost nor silent).

References between entities are real foreign keys. Codes from the ERP's "tabela de
tabelas" live in ``codes`` (with a parent for hierarchies such as region > state > city).
The ``ENTITIES`` registry maps the names mapping files use to these tables.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

_AWARE = sa.DateTime(timezone=True)
_MONEY = sa.Numeric(18, 4)
_QUANTITY = sa.Numeric(18, 6)


def natural_key(table: str) -> tuple[sa.UniqueConstraint]:
    return (sa.UniqueConstraint("source_id", "source_key", name=f"uq_{table}_source_key"),)


class CrmRow(SQLModel):
    """Bookkeeping shared by every entity table (not a table itself)."""

    id: int | None = Field(default=None, primary_key=True)
    source_id: str = Field(max_length=64)
    source_table: str
    source_key: str
    version_at: datetime | None = Field(default=None, sa_type=_AWARE)
    version_event_id: str | None = None
    version_seq: int | None = Field(default=None, sa_type=sa.BigInteger)
    """The version's sequence (``ponte.shared.versions.Version``; migration 0015)."""
    deleted_at: datetime | None = Field(default=None, sa_type=_AWARE)
    extra: dict[str, Any] = Field(
        default_factory=dict, sa_type=pg.JSONB, sa_column_kwargs={"nullable": False}
    )
    updated_at: datetime | None = Field(default=None, sa_type=_AWARE)


# Code lists ("tabela de tabelas"): one row per (list, code), e.g. (SIT_PEDIDO, AP).
class Code(CrmRow, table=True):
    __tablename__ = "codes"
    __table_args__ = natural_key("codes")
    list_name: str | None = None
    code: str | None = None
    description: str | None = None
    parent_id: int | None = Field(default=None, foreign_key="codes.id")


class Salesperson(CrmRow, table=True):
    __tablename__ = "salespeople"
    __table_args__ = natural_key("salespeople")
    code: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    active: bool | None = None


class Company(CrmRow, table=True):
    __tablename__ = "companies"
    __table_args__ = natural_key("companies")
    code: str | None = None
    document: str | None = Field(default=None, index=True)
    legal_name: str | None = None
    trade_name: str | None = None
    email: str | None = None
    phone: str | None = None
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    segment_id: int | None = Field(default=None, foreign_key="codes.id")
    salesperson_id: int | None = Field(default=None, foreign_key="salespeople.id", index=True)
    active: bool | None = None
    # Derived (DERIVED_COLUMNS): written by the classification job, never by a mapping.
    abc_class: str | None = None
    portfolio: str | None = None
    abc_revenue: Decimal | None = Field(default=None, sa_type=_MONEY)
    classified_at: datetime | None = Field(default=None, sa_type=_AWARE)


class Contact(CrmRow, table=True):
    __tablename__ = "contacts"
    __table_args__ = natural_key("contacts")
    code: str | None = None
    name: str | None = None
    document: str | None = Field(default=None, index=True)
    email: str | None = Field(default=None, index=True)
    phone: str | None = None
    role: str | None = None
    birth_date: date | None = None
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    spouse_id: int | None = Field(default=None, foreign_key="contacts.id")


class Supplier(CrmRow, table=True):
    __tablename__ = "suppliers"
    __table_args__ = natural_key("suppliers")
    code: str | None = None
    document: str | None = None
    legal_name: str | None = None
    trade_name: str | None = None
    email: str | None = None
    phone: str | None = None


class Brand(CrmRow, table=True):
    __tablename__ = "brands"
    __table_args__ = natural_key("brands")
    code: str | None = None
    name: str | None = None


# A company's commercial status with one brand ("Empresa marca").
class CompanyBrand(CrmRow, table=True):
    __tablename__ = "company_brands"
    __table_args__ = natural_key("company_brands")
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    brand_id: int | None = Field(default=None, foreign_key="brands.id")
    status_id: int | None = Field(default=None, foreign_key="codes.id")
    since: date | None = None


class Product(CrmRow, table=True):
    __tablename__ = "products"
    __table_args__ = natural_key("products")
    code: str | None = None
    sku: str | None = None
    name: str | None = None
    unit: str | None = None
    price: Decimal | None = Field(default=None, sa_type=_MONEY)
    active: bool | None = None


class Quote(CrmRow, table=True):
    __tablename__ = "quotes"
    __table_args__ = natural_key("quotes")
    code: str | None = None
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    contact_id: int | None = Field(default=None, foreign_key="contacts.id")
    salesperson_id: int | None = Field(default=None, foreign_key="salespeople.id")
    status_id: int | None = Field(default=None, foreign_key="codes.id")
    issued_at: datetime | None = Field(default=None, sa_type=_AWARE)
    valid_until: date | None = None
    total: Decimal | None = Field(default=None, sa_type=_MONEY)


class QuoteItem(CrmRow, table=True):
    __tablename__ = "quote_items"
    __table_args__ = natural_key("quote_items")
    quote_id: int | None = Field(default=None, foreign_key="quotes.id", index=True)
    line_number: int | None = None
    product_id: int | None = Field(default=None, foreign_key="products.id")
    description: str | None = None
    quantity: Decimal | None = Field(default=None, sa_type=_QUANTITY)
    unit_price: Decimal | None = Field(default=None, sa_type=_MONEY)
    total: Decimal | None = Field(default=None, sa_type=_MONEY)


class Order(CrmRow, table=True):
    __tablename__ = "orders"
    __table_args__ = natural_key("orders")
    code: str | None = None
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", index=True)
    salesperson_id: int | None = Field(default=None, foreign_key="salespeople.id")
    status_id: int | None = Field(default=None, foreign_key="codes.id")
    issued_at: datetime | None = Field(default=None, sa_type=_AWARE)
    currency: str | None = None
    total: Decimal | None = Field(default=None, sa_type=_MONEY)
    cancelled_at: datetime | None = Field(default=None, sa_type=_AWARE)


class OrderItem(CrmRow, table=True):
    __tablename__ = "order_items"
    __table_args__ = natural_key("order_items")
    order_id: int | None = Field(default=None, foreign_key="orders.id", index=True)
    line_number: int | None = None
    product_id: int | None = Field(default=None, foreign_key="products.id")
    description: str | None = None
    quantity: Decimal | None = Field(default=None, sa_type=_QUANTITY)
    unit_price: Decimal | None = Field(default=None, sa_type=_MONEY)
    total: Decimal | None = Field(default=None, sa_type=_MONEY)


class Invoice(CrmRow, table=True):
    __tablename__ = "invoices"
    __table_args__ = natural_key("invoices")
    code: str | None = None
    series: str | None = None
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    order_id: int | None = Field(default=None, foreign_key="orders.id")
    status_id: int | None = Field(default=None, foreign_key="codes.id")
    issued_at: datetime | None = Field(default=None, sa_type=_AWARE)
    total: Decimal | None = Field(default=None, sa_type=_MONEY)


class InvoiceItem(CrmRow, table=True):
    __tablename__ = "invoice_items"
    __table_args__ = natural_key("invoice_items")
    invoice_id: int | None = Field(default=None, foreign_key="invoices.id", index=True)
    line_number: int | None = None
    product_id: int | None = Field(default=None, foreign_key="products.id")
    description: str | None = None
    quantity: Decimal | None = Field(default=None, sa_type=_QUANTITY)
    unit_price: Decimal | None = Field(default=None, sa_type=_MONEY)
    total: Decimal | None = Field(default=None, sa_type=_MONEY)


# Open receivables ("Fatura").
class Receivable(CrmRow, table=True):
    __tablename__ = "receivables"
    __table_args__ = natural_key("receivables")
    code: str | None = None
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    invoice_id: int | None = Field(default=None, foreign_key="invoices.id")
    status_id: int | None = Field(default=None, foreign_key="codes.id")
    issued_at: date | None = None
    due_at: date | None = None
    amount: Decimal | None = Field(default=None, sa_type=_MONEY)
    paid_amount: Decimal | None = Field(default=None, sa_type=_MONEY)
    paid_at: date | None = None


ENTITIES: dict[str, type[CrmRow]] = {
    "code": Code,
    "salesperson": Salesperson,
    "company": Company,
    "contact": Contact,
    "supplier": Supplier,
    "brand": Brand,
    "company_brand": CompanyBrand,
    "product": Product,
    "quote": Quote,
    "quote_item": QuoteItem,
    "order": Order,
    "order_item": OrderItem,
    "invoice": Invoice,
    "invoice_item": InvoiceItem,
    "receivable": Receivable,
}
"""Entity names, as mapping files and change events write them, to their tables."""


def references_of(entity: str) -> dict[str, str]:
    """The entity's reference columns (its foreign keys) -> the entity each points to.

    Their values are Ponte's own row ids (``companies.id``), meaningful in this database
    only: a CRM must never receive one as if it were its own id (a CRM record that happens
    to carry that number would be linked instead), so deliver sends the referenced record's
    CRM id in their place (``ponte.deliver.references``)."""
    by_table = {model.__tablename__: name for name, model in ENTITIES.items()}
    table = ENTITIES[entity].__table__  # type: ignore[attr-defined]
    found: dict[str, str] = {}
    for column in table.columns:
        for key in column.foreign_keys:
            if key.column.table.name in by_table:
                found[column.name] = by_table[key.column.table.name]
    return found


BOOKKEEPING_COLUMNS = frozenset(CrmRow.model_fields)
"""Columns every entity has; a mapping may not write them."""

DERIVED_COLUMNS: dict[str, frozenset[str]] = {
    "company": frozenset({"abc_class", "portfolio", "abc_revenue", "classified_at"}),
}
"""Columns Ponte computes (``ponte.transform.classification``); a mapping may not write
them, and a transform update leaves them as they are."""


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
    event_id: str
    parked_at: datetime = Field(sa_type=_AWARE)


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


CHILDREN: dict[str, tuple[tuple[str, str], ...]] = {
    "quote": (("quote_item", "quote_id"),),
    "order": (("order_item", "order_id"),),
    "invoice": (("invoice_item", "invoice_id"),),
}
"""Entities whose rows belong to a parent row: deleting the parent deletes them."""


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
